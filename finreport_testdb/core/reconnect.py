"""Keep applications' pooled connections working when their sessions on the worker database end.

A swap (a new clone under the same name) or a restore that had to end a session kills connections
an engine the app built at import time still pools. SQLAlchemy's pessimistic-disconnect hook
handles that without the app's help: "connect" stamps each new DBAPI connection with a generation,
and "checkout" raises `DisconnectionError` for one from an older generation, so the pool discards
it and opens a new one. The listeners are class-level (they reach pools created before them) and
installed at the first `bump()`, so a run that never ends a session installs nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import Pool

_KEY = "finreport_testdb_generation"
_generation = 0


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    connection_record.info[_KEY] = _generation


def _on_checkout(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
    # Connections opened before the listeners were installed carry no stamp: generation 0.
    if connection_record.info.get(_KEY, 0) < _generation:
        raise DisconnectionError("finreport-testdb ended the session this connection was on")


def bump() -> None:
    """Mark every pooled connection opened so far as stale (one generation per process: a
    connection to another database is renewed too, which costs a reconnect and nothing else)."""
    global _generation
    if not event.contains(Pool, "connect", _on_connect):
        event.listen(Pool, "connect", _on_connect)
        event.listen(Pool, "checkout", _on_checkout)
    _generation += 1
