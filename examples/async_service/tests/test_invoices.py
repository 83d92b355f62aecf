"""Drafting and posting invoices on the test's session."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from conftest import TODAY, CustomerFactory, InvoiceFactory
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from async_service import billing
from async_service.models import Invoice, InvoiceLine, JournalEntry

D = Decimal

TOTALS = [
    ([("a", 1, D("10.00"))], "10.00"),
    ([("a", 3, D("10.00"))], "30.00"),
    ([("a", 1, D("0.10")), ("b", 1, D("0.20"))], "0.30"),
    ([("a", 7, D("1.99"))], "13.93"),
    ([("a", 1, D("0"))], "0.00"),
    ([("a", 100, D("12.34")), ("b", 2, D("0.01"))], "1234.02"),
    ([("a", 1, D("9999.99")), ("b", 1, D("0.01"))], "10000.00"),
    ([(f"line {i}", i, D("1.00")) for i in range(1, 11)], "55.00"),
    ([], "0.00"),
]


@pytest.mark.parametrize(("lines", "total"), TOTALS)
async def test_draft_total(
    make_invoice: InvoiceFactory, lines: list[billing.Line], total: str
) -> None:
    invoice = await make_invoice(lines=lines)
    assert invoice.status == "draft"
    assert invoice.number is None
    assert invoice.total == D(total)
    assert len(invoice.lines) == len(lines)


VAT_CASES = [
    ("USD", "US", "100.00", "0.00"),
    ("EUR", "DE", "100.00", "19.00"),
    ("GBP", "GB", "100.00", "20.00"),
    ("CHF", "CH", "100.00", "8.10"),
    ("JPY", "JP", "1000", "100"),
    ("EUR", "DE", "0.05", "0.01"),
    ("CHF", "CH", "12.34", "1.00"),
    ("JPY", "JP", "15", "2"),
]


@pytest.mark.parametrize(("currency", "country", "net", "vat"), VAT_CASES)
async def test_vat_by_country(
    make_customer: CustomerFactory,
    make_invoice: InvoiceFactory,
    currency: str,
    country: str,
    net: str,
    vat: str,
) -> None:
    customer = await make_customer(currency=currency, country=country)
    invoice = await make_invoice(customer, [("item", 1, D(net))])
    assert invoice.currency == currency
    assert invoice.vat == D(vat)


@pytest.mark.parametrize("extra", [1, 2, 5])
async def test_add_line_to_draft(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory, extra: int
) -> None:
    invoice = await make_invoice()
    for i in range(extra):
        await billing.add_line(async_db_session, invoice, (f"extra {i}", 1, D("5.00")))
    assert invoice.total == D("200.00") + extra * D("5.00")
    rows = await async_db_session.scalars(
        select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id)
    )
    assert len(rows.all()) == 1 + extra


@pytest.mark.parametrize(
    ("quantity", "price", "constraint"),
    [(0, "1.00", "quantity"), (-1, "1.00", "quantity"), (1, "-0.01", "unit_price")],
)
async def test_line_checks(
    async_db_session: AsyncSession,
    make_invoice: InvoiceFactory,
    quantity: int,
    price: str,
    constraint: str,
) -> None:
    with pytest.raises(IntegrityError, match=f"invoice_lines_{constraint}_check"):
        async with async_db_session.begin_nested():
            await make_invoice(lines=[("bad", quantity, D(price))])


@pytest.mark.parametrize("year", [2024, 2025, 2026])
async def test_post_numbers_the_invoice(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory, year: int
) -> None:
    invoice = await make_invoice(issued_on=dt.date(year, 1, 15))
    await billing.post_invoice(async_db_session, invoice, dt.date(year, 1, 15))
    assert invoice.status == "posted"
    assert invoice.number == f"INV-{year}-{invoice.id:05d}"
    assert invoice.posted_at is not None


async def test_post_twice_is_refused(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    invoice = await make_invoice()
    await billing.post_invoice(async_db_session, invoice, TODAY)
    with pytest.raises(billing.BillingError, match="not a draft"):
        await billing.post_invoice(async_db_session, invoice, TODAY)


async def test_post_empty_invoice_is_refused(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    invoice = await make_invoice(lines=[])
    with pytest.raises(billing.BillingError, match="no lines"):
        await billing.post_invoice(async_db_session, invoice, TODAY)


async def test_add_line_to_posted_is_refused(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    invoice = await make_invoice()
    await billing.post_invoice(async_db_session, invoice, TODAY)
    with pytest.raises(billing.BillingError, match="add lines to a draft"):
        await billing.add_line(async_db_session, invoice, ("late", 1, D("1.00")))


@pytest.mark.parametrize("count", [1, 3, 6])
async def test_statement_lists_posted_oldest_first(
    async_db_session: AsyncSession,
    make_customer: CustomerFactory,
    make_invoice: InvoiceFactory,
    count: int,
) -> None:
    customer = await make_customer()
    invoices = []
    for day in reversed(range(1, count + 1)):
        invoice = await make_invoice(customer, issued_on=dt.date(2026, 2, day))
        await billing.post_invoice(async_db_session, invoice, invoice.issued_on)
        invoices.append(invoice)
    await make_invoice(customer)  # a draft: not on the statement
    lines = await billing.statement(async_db_session, customer.id)
    assert [n for n, _ in lines] == [i.number for i in reversed(invoices)]
    assert all(gross == D("200.00") for _, gross in lines)


async def test_statement_of_another_customer_is_empty(
    async_db_session: AsyncSession, make_customer: CustomerFactory, make_invoice: InvoiceFactory
) -> None:
    invoice = await make_invoice()
    await billing.post_invoice(async_db_session, invoice, TODAY)
    other = await make_customer()
    assert await billing.statement(async_db_session, other.id) == []


async def test_delete_draft_cascades_lines(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    invoice = await make_invoice(lines=[("a", 1, D(1)), ("b", 1, D(2))])
    await async_db_session.delete(invoice)
    await async_db_session.flush()
    remaining = await async_db_session.scalars(
        select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id)
    )
    assert remaining.all() == []


async def test_posted_invoice_cannot_be_deleted_later(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    """Posted in one (sub)transaction, deleted in the next: the xmin guard refuses."""
    invoice = await make_invoice()
    await billing.post_invoice(async_db_session, invoice, TODAY)
    await async_db_session.commit()
    with pytest.raises(DBAPIError, match="is posted: it cannot be changed"):
        async with async_db_session.begin_nested():
            await async_db_session.execute(
                Invoice.__table__.delete().where(Invoice.id == invoice.id)
            )


async def test_posting_creates_one_journal_entry(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    invoice = await make_invoice()
    entry = await billing.post_invoice(async_db_session, invoice, TODAY)
    entries = await async_db_session.scalars(
        select(JournalEntry).where(JournalEntry.invoice_id == invoice.id)
    )
    assert [e.id for e in entries] == [entry.id]
    assert entry.memo == f"invoice {invoice.number}"
