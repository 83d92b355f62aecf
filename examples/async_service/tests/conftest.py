"""The async service's test fixtures.

The only finreport-testdb wiring is `_service_sessions`: the use cases open their sessions from
`db.SessionLocal`, and under rollback isolation they must join the test's transaction. Under
`fresh` isolation the plugin's sessionmaker is an engine on the reset worker database, so the same
line serves both (and the app's own `db.engine` works too: it is on that database already).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from async_service import billing, db
from async_service.models import Customer, Invoice


@pytest.fixture(autouse=True)
def _service_sessions(
    async_db_sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SessionLocal", async_db_sessionmaker)


# ----------------------------------------------------------------------- the app's own factories

TODAY = dt.date(2026, 3, 31)
CustomerFactory = Callable[..., Awaitable[Customer]]
InvoiceFactory = Callable[..., Awaitable[Invoice]]


@pytest.fixture
def make_customer(async_db_session: AsyncSession) -> CustomerFactory:
    counter = iter(range(1, 10_000))

    async def make(currency: str = "USD", country: str = "US", **kw: str) -> Customer:
        n = next(counter)
        name = kw.get("name", f"Customer {n}")
        email = kw.get("email", f"customer{n}@example.test")
        return await billing.create_customer(
            async_db_session, name, email, currency=currency, country=country
        )

    return make


@pytest.fixture
def make_invoice(async_db_session: AsyncSession, make_customer: CustomerFactory) -> InvoiceFactory:
    async def make(
        customer: Customer | None = None,
        lines: list[billing.Line] | None = None,
        issued_on: dt.date = TODAY,
    ) -> Invoice:
        customer = customer or await make_customer()
        lines = lines if lines is not None else [("consulting", 2, Decimal("100.00"))]
        return await billing.draft_invoice(async_db_session, customer, issued_on, lines)

    return make
