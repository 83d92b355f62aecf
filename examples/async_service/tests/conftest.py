"""The async service's test fixtures: only the app's own factories.

There is no finreport-testdb wiring: the plugin exports DATABASE_URL (this worker's database)
before `async_service.db` builds its engine, every test commits for real through the app's own
sessions, and what it committed is undone after it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from async_service import billing
from async_service.models import Customer, Invoice

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
