"""Keep the app's pooled connections working when the tool ends their sessions (a swap, a restore).

SQLAlchemy's pessimistic-disconnect hook: "connect" stamps each DBAPI connection with a generation,
and "checkout" raises `DisconnectionError` for an older one, so the pool replaces it. The listeners
are class-level (they reach pools made before them), installed at the first `bump()` only.
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
    """Mark every pooled connection opened so far as stale (per process: one to another database
    is renewed too, which costs a reconnect and nothing else)."""
    global _generation
    if not event.contains(Pool, "connect", _on_connect):
        event.listen(Pool, "connect", _on_connect)
        event.listen(Pool, "checkout", _on_checkout)
    _generation += 1
