"""Keep applications' pooled connections working across resets of the worker database.

A `fresh` test resets the worker's database (drop + re-clone under the same name), which kills every
connection to it, including those pooled by an engine the app built at import time from
`DATABASE_URL`. Instead of asking apps to dispose their engines, two global `Pool` listeners use
SQLAlchemy's documented pessimistic-disconnect hook: "connect" stamps each new DBAPI connection
with the current reset generation, and "checkout" raises `DisconnectionError` for a connection from
an older generation, so the pool discards it and transparently opens a new one (to the new database
of the same name). One generation per process: a reset also renews connections to other databases,
which costs a reconnect and nothing else.
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
        raise DisconnectionError("finreport-testdb reset the database this connection was on")


def install() -> None:
    """Install the listeners once per process (idempotent). Class-level listeners reach pools
    created before and after, so the app's import-time engine is covered either way."""
    if not event.contains(Pool, "connect", _on_connect):
        event.listen(Pool, "connect", _on_connect)
        event.listen(Pool, "checkout", _on_checkout)


def generation() -> int:
    return _generation


def bump() -> int:
    """Mark every pooled connection opened so far as stale; call after a reset."""
    global _generation
    install()
    _generation += 1
    return _generation
