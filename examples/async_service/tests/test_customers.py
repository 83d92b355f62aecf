"""Customers: created on the test's session and through the use case."""

from __future__ import annotations

import pytest
from conftest import CustomerFactory
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from async_service import billing, service
from async_service.models import Customer

PROFILES = [
    ("USD", "US"),
    ("EUR", "DE"),
    ("GBP", "GB"),
    ("CHF", "CH"),
    ("JPY", "JP"),
    ("EUR", "US"),
    ("USD", "GB"),
]


@pytest.mark.parametrize(("currency", "country"), PROFILES)
async def test_create_customer(async_db_session: AsyncSession, currency: str, country: str) -> None:
    customer = await billing.create_customer(
        async_db_session,
        "Acme",
        f"acme-{currency}-{country}@example.test",
        currency=currency,
        country=country,
    )
    loaded = await async_db_session.get_one(Customer, customer.id)
    assert (loaded.currency, loaded.country) == (currency, country)
    assert loaded.created_at is not None


@pytest.mark.parametrize("n", range(5))
async def test_customer_ids_are_distinct(make_customer: CustomerFactory, n: int) -> None:
    customers = [await make_customer() for _ in range(n + 2)]
    assert len({c.id for c in customers}) == n + 2


async def test_country_defaults_to_us(async_db_session: AsyncSession) -> None:
    customer = Customer(name="Plain", email="plain@example.test", currency="USD")
    async_db_session.add(customer)
    await async_db_session.flush()
    await async_db_session.refresh(customer)
    assert customer.country == "US"


async def test_duplicate_email_is_refused(
    async_db_session: AsyncSession, make_customer: CustomerFactory
) -> None:
    await make_customer(email="same@example.test")
    with pytest.raises(IntegrityError, match="customers_email_key"):
        async with async_db_session.begin_nested():
            await make_customer(email="same@example.test")


@pytest.mark.parametrize("currency", ["XXX", "usd", "EU"])
async def test_unknown_currency_is_refused(async_db_session: AsyncSession, currency: str) -> None:
    with pytest.raises(IntegrityError, match="foreign key"):
        async with async_db_session.begin_nested():
            await billing.create_customer(
                async_db_session, "X", "x@example.test", currency=currency
            )


@pytest.mark.parametrize("email", ["a@example.test", "b@example.test", "c@example.test"])
async def test_register_customer_use_case(async_db_session: AsyncSession, email: str) -> None:
    customer_id = await service.register_customer(
        "Use Case Ltd", email, currency="EUR", country="DE"
    )
    customer = await async_db_session.get_one(Customer, customer_id)
    assert customer.email == email
    assert customer.currency == "EUR"


async def test_register_duplicate_raises_domain_error(async_db_session: AsyncSession) -> None:
    await service.register_customer("First", "dup@example.test")
    with pytest.raises(service.DuplicateEmail, match=r"dup@example\.test"):
        await service.register_customer("Second", "dup@example.test")


async def test_register_customers_are_rolled_back_1(async_db_session: AsyncSession) -> None:
    await service.register_customer("Left behind?", "left@example.test")
    count = select(func.count()).select_from(Customer)
    assert await async_db_session.scalar(count) == 1


async def test_register_customers_are_rolled_back_2(async_db_session: AsyncSession) -> None:
    assert await async_db_session.scalar(select(func.count()).select_from(Customer)) == 0
