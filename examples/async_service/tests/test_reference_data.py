"""The seed rows the migrations insert: the app cannot run without them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from async_service import billing
from async_service.models import Account, Currency, VatRate

CURRENCIES = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "JPY": 0}
ACCOUNTS = {
    "1000": "asset",
    "1100": "asset",
    "2100": "liability",
    "3000": "equity",
    "4000": "revenue",
    "6000": "expense",
}
VAT = {"US": "0", "DE": "0.19", "GB": "0.20", "CH": "0.081", "JP": "0.10"}


@pytest.mark.parametrize(("code", "minor_units"), CURRENCIES.items())
async def test_currency_is_seeded(
    async_db_session: AsyncSession, code: str, minor_units: int
) -> None:
    currency = await async_db_session.get(Currency, code)
    assert currency is not None
    assert currency.minor_units == minor_units


@pytest.mark.parametrize(("code", "kind"), ACCOUNTS.items())
async def test_account_is_seeded(async_db_session: AsyncSession, code: str, kind: str) -> None:
    account = await async_db_session.scalar(select(Account).where(Account.code == code))
    assert account is not None
    assert account.kind == kind


@pytest.mark.parametrize(("country", "rate"), VAT.items())
async def test_vat_rate_is_seeded(async_db_session: AsyncSession, country: str, rate: str) -> None:
    assert await async_db_session.get(VatRate, country) is not None
    assert (await async_db_session.get_one(VatRate, country)).rate == Decimal(rate)


async def test_exactly_the_seeded_rows(async_db_session: AsyncSession) -> None:
    assert await async_db_session.scalar(select(func.count()).select_from(Currency)) == 5
    assert await async_db_session.scalar(select(func.count()).select_from(Account)) == 6
    assert await async_db_session.scalar(select(func.count()).select_from(VatRate)) == 5


@pytest.mark.parametrize(
    ("currency", "amount", "rounded"),
    [
        ("USD", "10.005", "10.00"),
        ("USD", "10.015", "10.02"),
        ("EUR", "0.125", "0.12"),
        ("GBP", "99.999", "100.00"),
        ("CHF", "1.2345", "1.23"),
        ("JPY", "1234.5", "1234"),
        ("JPY", "1235.5", "1236"),
        ("JPY", "0.4", "0"),
    ],
)
async def test_round_money_uses_minor_units(
    async_db_session: AsyncSession, currency: str, amount: str, rounded: str
) -> None:
    assert await billing.round_money(async_db_session, currency, Decimal(amount)) == Decimal(
        rounded
    )


async def test_round_money_unknown_currency(async_db_session: AsyncSession) -> None:
    with pytest.raises(billing.BillingError, match="unknown currency 'XXX'"):
        await billing.round_money(async_db_session, "XXX", Decimal(1))


async def test_seed_rows_survive_a_test_that_deletes_them_1(async_db_session: AsyncSession) -> None:
    await async_db_session.execute(VatRate.__table__.delete())
    await async_db_session.commit()  # the code under test commits
    assert await async_db_session.scalar(select(func.count()).select_from(VatRate)) == 0


async def test_seed_rows_survive_a_test_that_deletes_them_2(async_db_session: AsyncSession) -> None:
    assert await async_db_session.scalar(select(func.count()).select_from(VatRate)) == 5
