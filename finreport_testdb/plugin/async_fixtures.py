"""Async twins of the session fixtures, for apps on asyncpg or psycopg's async mode.

asyncpg connections belong to the event loop that opened them, so the fixtures that open
connections use one pooled `AsyncEngine` per event loop (`_testdb_loop_engine`), disposed inside
that loop when it shuts down: no connection outlives its loop; tests sharing a loop share its pool.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from ..core.clones import ClonedDatabase
from ..core.urls import async_variant, unless_session_ended
from .state import one_line

#: Each running loop's pooled engine, and the keeper that disposes it (the loop holds the async
#: generators it finalises weakly only).
_loop_engines: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[AsyncEngine, AsyncIterator[None]]
] = weakref.WeakKeyDictionary()


@pytest_asyncio.fixture
async def _testdb_loop_engine(test_database: ClonedDatabase) -> AsyncEngine:
    """The running loop's engine, disposed when its shutdown_asyncgens() closes the keeper."""
    loop = asyncio.get_running_loop()
    if loop not in _loop_engines:
        engine = create_async_engine(async_variant(test_database.url))

        async def dispose_at_shutdown() -> AsyncIterator[None]:
            try:
                yield
            finally:
                _loop_engines.pop(loop, None)
                await engine.dispose()

        keeper = dispose_at_shutdown()
        _loop_engines[loop] = (engine, keeper)
        await keeper.__anext__()
    return _loop_engines[loop][0]


@pytest.fixture(scope="session")
def async_db_engine(test_database: ClonedDatabase) -> Iterator[AsyncEngine]:
    """A session-scoped `AsyncEngine` for code that needs one engine across event loops (NullPool:
    a new connection each time), on the configured driver or its async twin."""
    engine = create_async_engine(test_database.async_url, poolclass=NullPool)
    yield engine  # NullPool holds no connections: nothing to close in any loop


@pytest_asyncio.fixture
async def async_db_connection(_testdb_loop_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """An async connection inside an outer transaction rolled back after the test."""
    with one_line(_testdb_loop_engine.url):
        connection = await _testdb_loop_engine.connect()
    try:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                with unless_session_ended():
                    await transaction.rollback()
    finally:
        await connection.close()


@pytest.fixture
def async_db_bind(
    request: pytest.FixtureRequest, testdb_isolation: str
) -> AsyncConnection | AsyncEngine:
    """The async `db_bind`: the running loop's pooled engine, or `async_db_connection` under
    `rollback`. A sync fixture, so it can pick an async one outside any running loop: take it as a
    parameter, not with `getfixturevalue` inside a coroutine."""
    bind: AsyncConnection | AsyncEngine = request.getfixturevalue(
        "async_db_connection" if testdb_isolation == "rollback" else "_testdb_loop_engine"
    )
    return bind


@pytest_asyncio.fixture
async def async_db_session(
    async_db_bind: AsyncConnection | AsyncEngine,
) -> AsyncIterator[AsyncSession]:
    """The async `db_session`, with `expire_on_commit=False` as SQLAlchemy recommends: reading an
    attribute after a commit must not need implicit IO (`MissingGreenlet`)."""
    session = AsyncSession(
        bind=async_db_bind, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        with one_line(async_db_bind.engine.url):
            await session.connection()  # now: a failure is one line, not driver frames
        yield session
    finally:
        with unless_session_ended():
            await session.close()


@pytest.fixture
def async_db_sessionmaker(
    async_db_bind: AsyncConnection | AsyncEngine,
) -> async_sessionmaker[AsyncSession]:
    """The async `db_sessionmaker` (for FastAPI apps), `expire_on_commit=False` like
    `async_db_session`."""
    return async_sessionmaker(
        bind=async_db_bind, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
