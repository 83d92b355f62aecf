"""Async twins of the session fixtures, for apps on asyncpg or psycopg's async mode.

asyncpg connections belong to the event loop that opened them, so the fixtures that open
connections use one pooled `AsyncEngine` per event loop (`_LoopEngines`), disposed inside that
loop when it shuts down: no connection outlives its loop, and tests sharing a loop share its pool.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy.engine import URL
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

_Loop = asyncio.AbstractEventLoop


class _LoopEngines:
    """One pooled engine per running event loop, for one database URL."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self._engines: weakref.WeakKeyDictionary[_Loop, AsyncEngine] = weakref.WeakKeyDictionary()
        #: The loop holds the async generators it finalises weakly only.
        self._keepers: weakref.WeakKeyDictionary[_Loop, AsyncIterator[None]] = (
            weakref.WeakKeyDictionary()
        )

    async def current(self) -> AsyncEngine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is None:
            engine = self._engines[loop] = create_async_engine(self.url)
            # The loop's shutdown_asyncgens() closes the keeper, which disposes the engine there.
            keeper = self._keepers[loop] = self._dispose_at_shutdown(engine, loop)
            await keeper.__anext__()
        return engine

    async def _dispose_at_shutdown(self, engine: AsyncEngine, loop: _Loop) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self._engines.pop(loop, None)
            await engine.dispose()


@pytest.fixture(scope="session")
def _testdb_loop_engines(test_database: ClonedDatabase) -> _LoopEngines:
    return _LoopEngines(async_variant(test_database.url))


@pytest_asyncio.fixture
async def _testdb_loop_engine(_testdb_loop_engines: _LoopEngines) -> AsyncEngine:
    """The pooled engine of the running loop (the test's, with the default fixture loop scope)."""
    return await _testdb_loop_engines.current()


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
