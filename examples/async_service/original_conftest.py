"""The service's test set-up BEFORE finreport-testdb, kept for docs/migrating.md and the benchmark.

What real apps do without a template: every xdist worker derives its own database name from
DATABASE_URL, (re)creates that database and runs `create_all`; before every test an autouse fixture
TRUNCATEs every table and re-inserts the seed rows the migrations would have inserted (the app
cannot run without currencies, the chart of accounts and the VAT rates).

Run the same tests this way (the plugin off, this module as the conftest):

    DATABASE_URL=postgresql+asyncpg://user:pw@host/async_service_test \
        pytest -p no:testdb -p original_conftest -n 2

It provides the fixture names the tests use (`async_db_session`, `async_db_sessionmaker`) on the
app's own engine, with real commits, and registers the `testdb` marker as a no-op.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

# Before the app is imported: point DATABASE_URL at this worker's own database.
_SERVER_URL = make_url(os.environ.setdefault("ORIGINAL_DATABASE_URL", os.environ["DATABASE_URL"]))
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
WORKER_URL = _SERVER_URL.set(database=f"{_SERVER_URL.database}_{_WORKER}")
os.environ["DATABASE_URL"] = WORKER_URL.render_as_string(hide_password=False)

from async_service import db  # noqa: E402
from async_service.models import Base  # noqa: E402

SEED = [
    "INSERT INTO currencies (code, name, minor_units) VALUES ('USD', 'US dollar', 2), "
    "('EUR', 'Euro', 2), ('GBP', 'Pound sterling', 2), ('CHF', 'Swiss franc', 2), "
    "('JPY', 'Japanese yen', 0)",
    "INSERT INTO accounts (code, name, kind) VALUES ('1000', 'Cash', 'asset'), "
    "('1100', 'Accounts receivable', 'asset'), ('2100', 'VAT payable', 'liability'), "
    "('3000', 'Retained earnings', 'equity'), ('4000', 'Sales', 'revenue'), "
    "('6000', 'Bad debts', 'expense')",
    "INSERT INTO vat_rates (country, rate) VALUES ('US', 0), ('DE', 0.19), ('GB', 0.20), "
    "('CH', 0.081), ('JP', 0.10)",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "testdb(isolation): ignored by the original set-up")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def _worker_database() -> AsyncIterator[None]:
    """Drop and create this worker's database, then `create_all` (+ the seed rows)."""
    admin = create_async_engine(_SERVER_URL.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = admin.dialect.identifier_preparer.quote(str(WORKER_URL.database))
    async with admin.connect() as connection:
        await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await connection.execute(text(f"CREATE DATABASE {name}"))
    async with db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        for statement in SEED:
            await connection.execute(text(statement))
    yield
    await db.engine.dispose()
    async with admin.connect() as connection:
        await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    await admin.dispose()


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def _clean_tables(_worker_database: None) -> None:
    """TRUNCATE every table before each test, then put the seed rows back."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    async with db.engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        for statement in SEED:
            await connection.execute(text(statement))


@pytest.fixture
def async_db_sessionmaker() -> async_sessionmaker[AsyncSession]:
    return db.SessionLocal


@pytest_asyncio.fixture(loop_scope="session")
async def async_db_session() -> AsyncIterator[AsyncSession]:
    async with db.SessionLocal() as session:
        yield session
