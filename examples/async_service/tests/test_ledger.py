"""The double-entry ledger on the test's session.

The balance check is a DEFERRABLE INITIALLY DEFERRED constraint trigger: it fires at COMMIT. The
tests here stop before it (they never commit) or say `SET CONSTRAINTS ALL IMMEDIATE`; tests of what
COMMIT does are in test_committing.py.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import TODAY, CustomerFactory, InvoiceFactory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from async_service import billing

D = Decimal
Z = D(0)


async def immediate(session: AsyncSession) -> None:
    await session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))


COUNTRIES = [("USD", "US"), ("EUR", "DE"), ("GBP", "GB"), ("CHF", "CH"), ("JPY", "JP")]


@pytest.mark.parametrize(("currency", "country"), COUNTRIES)
async def test_posting_books_receivable_sales_and_vat(
    async_db_session: AsyncSession,
    make_customer: CustomerFactory,
    make_invoice: InvoiceFactory,
    currency: str,
    country: str,
) -> None:
    customer = await make_customer(currency=currency, country=country)
    invoice = await make_invoice(customer, [("work", 10, D("100"))])
    await billing.post_invoice(async_db_session, invoice, TODAY)
    assert await billing.account_balance(async_db_session, "1100") == invoice.total + invoice.vat
    assert await billing.account_balance(async_db_session, "4000") == -invoice.total
    assert await billing.account_balance(async_db_session, "2100") == -invoice.vat


@pytest.mark.parametrize(("currency", "country"), COUNTRIES)
async def test_posting_is_balanced_when_checked_now(
    async_db_session: AsyncSession,
    make_customer: CustomerFactory,
    make_invoice: InvoiceFactory,
    currency: str,
    country: str,
) -> None:
    await immediate(async_db_session)
    customer = await make_customer(currency=currency, country=country)
    invoice = await make_invoice(customer, [("a", 3, D("33.33")), ("b", 1, D("0.01"))])
    entry = await billing.post_invoice(async_db_session, invoice, TODAY)
    assert sum(line.debit - line.credit for line in entry.lines) == 0


@pytest.mark.parametrize("invoices", [1, 2, 4, 8])
async def test_trial_balance_sums_to_zero(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory, invoices: int
) -> None:
    for _ in range(invoices):
        await billing.post_invoice(async_db_session, await make_invoice(), TODAY)
    balances = await billing.trial_balance(async_db_session)
    assert sum(balances.values()) == 0
    assert balances["4000"] == -invoices * D("200.00")
    assert set(balances) == {"1000", "1100", "2100", "3000", "4000", "6000"}


async def test_trial_balance_of_an_empty_ledger(async_db_session: AsyncSession) -> None:
    assert set((await billing.trial_balance(async_db_session)).values()) == {Z}


@pytest.mark.parametrize(
    ("payments", "left"),
    [(["200.00"], "0.00"), (["50.00"], "150.00"), (["50.00", "50.00"], "100.00"), ([], "200.00")],
)
async def test_payments_reduce_outstanding(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory, payments: list[str], left: str
) -> None:
    invoice = await make_invoice()
    await billing.post_invoice(async_db_session, invoice, TODAY)
    for amount in payments:
        await billing.record_payment(async_db_session, invoice, D(amount), TODAY)
    assert await billing.outstanding(async_db_session, invoice) == D(left)
    assert await billing.account_balance(async_db_session, "1000") == sum(map(D, payments), Z)


@pytest.mark.parametrize("amount", ["0", "-1.00"])
async def test_payment_must_be_positive(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory, amount: str
) -> None:
    invoice = await make_invoice()
    await billing.post_invoice(async_db_session, invoice, TODAY)
    with pytest.raises(billing.BillingError, match="positive"):
        await billing.record_payment(async_db_session, invoice, D(amount), TODAY)


async def test_payment_on_a_draft_is_refused(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    with pytest.raises(billing.BillingError, match="payments need a posted one"):
        await billing.record_payment(async_db_session, await make_invoice(), D(1), TODAY)


BALANCED = [
    [("1000", D("10"), Z), ("3000", Z, D("10"))],
    [("6000", D("5"), Z), ("1100", Z, D("5"))],
    [("1000", D("7"), Z), ("1100", D("3"), Z), ("4000", Z, D("10"))],
    [("1000", D("0.01"), Z), ("3000", Z, D("0.01"))],
]


@pytest.mark.parametrize("postings", BALANCED)
async def test_balanced_manual_entry(
    async_db_session: AsyncSession, postings: list[billing.Posting]
) -> None:
    await immediate(async_db_session)
    entry = await billing.record_entry(async_db_session, TODAY, "manual", postings)
    assert len(entry.lines) == len(postings)


UNBALANCED = [
    [("1000", D("10"), Z), ("3000", Z, D("9"))],
    [("1000", D("10"), Z)],
    [("1000", D("1"), Z), ("1100", D("1"), Z)],
]


@pytest.mark.parametrize("postings", UNBALANCED)
async def test_unbalanced_entry_refused_when_checked_now(
    async_db_session: AsyncSession, postings: list[billing.Posting]
) -> None:
    await immediate(async_db_session)
    with pytest.raises(IntegrityError, match="is unbalanced by"):
        async with async_db_session.begin_nested():
            await billing.record_entry(async_db_session, TODAY, "bad", postings)


@pytest.mark.parametrize("postings", UNBALANCED)
async def test_unbalanced_entry_passes_until_commit(
    async_db_session: AsyncSession, postings: list[billing.Posting]
) -> None:
    """Deferred: nothing complains before COMMIT (the test ends before it: never committed)."""
    entry = await billing.record_entry(async_db_session, TODAY, "pending", postings)
    assert entry.id is not None


@pytest.mark.parametrize(("debit", "credit"), [(D(1), D(1)), (Z, Z), (D(-1), Z), (Z, D(-1))])
async def test_lines_are_one_sided(
    async_db_session: AsyncSession, debit: Decimal, credit: Decimal
) -> None:
    with pytest.raises(IntegrityError, match="one_sided"):
        async with async_db_session.begin_nested():
            await billing.record_entry(async_db_session, TODAY, "x", [("1000", debit, credit)])


async def test_unknown_account_is_refused(async_db_session: AsyncSession) -> None:
    with pytest.raises(billing.BillingError, match="unknown account"):
        await billing.record_entry(async_db_session, TODAY, "x", [("9999", D(1), Z)])


async def test_void_reverses_the_posting(
    async_db_session: AsyncSession, make_customer: CustomerFactory, make_invoice: InvoiceFactory
) -> None:
    customer = await make_customer(currency="EUR", country="DE")
    invoice = await make_invoice(customer)
    await billing.post_invoice(async_db_session, invoice, TODAY)
    await billing.void_invoice(async_db_session, invoice, TODAY)
    assert invoice.status == "void"
    assert set((await billing.trial_balance(async_db_session)).values()) == {Z}


async def test_void_a_draft_is_refused(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    with pytest.raises(billing.BillingError, match="only posted ones"):
        await billing.void_invoice(async_db_session, await make_invoice(), TODAY)


async def test_guard_refuses_amending_a_posted_total_later(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    invoice = await make_invoice()
    await billing.post_invoice(async_db_session, invoice, TODAY)
    await async_db_session.commit()
    with pytest.raises(DBAPIError, match="cannot be changed"):
        async with async_db_session.begin_nested():
            invoice.total = D("1.00")
            await async_db_session.flush()
