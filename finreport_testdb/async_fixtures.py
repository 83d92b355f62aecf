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

from .manager import ClonedDatabase


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
    async with async_db_engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                await transaction.rollback()


@pytest_asyncio.fixture
async def async_db_session(async_db_connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    """The async `db_session`: an `AsyncSession` whose work (commits included) is rolled back.

    Created with `expire_on_commit=False`, as SQLAlchemy recommends for `AsyncSession` and async
    apps configure theirs: after a commit, reading an attribute must not need implicit IO, which
    asyncio cannot do (`MissingGreenlet`)."""
    session = AsyncSession(
        bind=async_db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        await session.close()


@pytest_asyncio.fixture
async def async_db_sessionmaker(
    async_db_connection: AsyncConnection,
) -> async_sessionmaker[AsyncSession]:
    """An `async_sessionmaker` bound to the test's rolled-back transaction (for FastAPI apps);
    `expire_on_commit=False` like `async_db_session`."""
    return async_sessionmaker(
        bind=async_db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
