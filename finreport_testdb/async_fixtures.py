"""Async twins of the session fixtures, for apps on asyncpg or psycopg's async mode.

asyncpg connections belong to the event loop that opened them, and pytest-asyncio gives each test its
own loop by default. So the session-scoped `AsyncEngine` uses `NullPool`: every test opens its own
connection in its own loop, and no pooled connection ever crosses loops. This works with any
pytest-asyncio loop scope (function, module, session).
"""

from __future__ import annotations

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

from .clones import ClonedDatabase
from .urls import connection_failure, unless_session_ended


@pytest.fixture(scope="session")
def async_db_engine(test_database: ClonedDatabase) -> Iterator[AsyncEngine]:
    """A session-scoped `AsyncEngine` (NullPool: safe across pytest-asyncio's per-test loops).

    Uses the configured driver if it is async, else its async twin (psycopg → psycopg_async).
    """
    engine = create_async_engine(test_database.async_url, poolclass=NullPool)
    yield engine
    # NullPool holds no connections, so there is nothing to close in any loop.


@pytest_asyncio.fixture
async def async_db_connection(async_db_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """An async connection inside an outer transaction rolled back after the test."""
    try:
        connection = await async_db_engine.connect()
    except Exception as exc:  # any failure to connect: one line, no driver frames
        raise pytest.fail.Exception(
            connection_failure(async_db_engine.url, exc), pytrace=False
        ) from None
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
    """What this test's async sessions should bind to, under its isolation: the rolled-back
    `async_db_connection` under `rollback`, the `async_db_engine` (NullPool) on the reset worker
    database under `fresh`.

    A plain (sync) fixture on purpose: it picks the async fixture with `getfixturevalue` outside
    any running event loop, and an async fixture of yours can take it as a parameter
    (`async def client(async_db_bind): ...`). Declare it as a parameter rather than calling
    `request.getfixturevalue("async_db_bind")` inside a coroutine, where no fixture that needs the
    event loop can be set up.
    """
    if testdb_isolation == "fresh":
        engine: AsyncEngine = request.getfixturevalue("async_db_engine")
        return engine
    connection: AsyncConnection = request.getfixturevalue("async_db_connection")
    return connection


@pytest_asyncio.fixture
async def async_db_session(
    async_db_bind: AsyncConnection | AsyncEngine,
) -> AsyncIterator[AsyncSession]:
    """The async `db_session`: an `AsyncSession` on `async_db_bind`; under `rollback` its work
    (commits included) is rolled back, under `fresh` its commits are real.

    Created with `expire_on_commit=False`, as SQLAlchemy recommends for `AsyncSession` and async
    apps configure theirs: after a commit, reading an attribute must not need implicit IO, which
    asyncio cannot do (`MissingGreenlet`)."""
    session = AsyncSession(
        bind=async_db_bind, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        with unless_session_ended():
            await session.close()


@pytest.fixture
def async_db_sessionmaker(
    async_db_bind: AsyncConnection | AsyncEngine,
) -> async_sessionmaker[AsyncSession]:
    """An `async_sessionmaker` on `async_db_bind` (for FastAPI apps): joins the rolled-back
    transaction under `rollback`, commits for real under `fresh`; `expire_on_commit=False` like
    `async_db_session`. A plain fixture: creating the factory needs no event loop."""
    return async_sessionmaker(
        bind=async_db_bind, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
