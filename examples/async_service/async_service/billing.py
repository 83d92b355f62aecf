"""Invoicing and the double-entry ledger, as functions on a session the caller owns.

These never commit: the caller (a use case in `service.py`, or a test) decides the transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import (
    Account,
    Currency,
    Customer,
    Invoice,
    InvoiceLine,
    JournalEntry,
    JournalLine,
    VatRate,
)

RECEIVABLES, CASH, VAT_PAYABLE, SALES, BAD_DEBTS = "1100", "1000", "2100", "4000", "6000"

#: A line as callers describe it: (description, quantity, unit price).
Line = tuple[str, int, Decimal]
#: A journal line as callers describe it: (account code, debit, credit).
Posting = tuple[str, Decimal, Decimal]


class BillingError(Exception):
    """A request the business rules refuse (not a database failure)."""


async def round_money(session: AsyncSession, currency: str, amount: Decimal) -> Decimal:
    """`amount` rounded to the currency's minor units (JPY has none)."""
    units = await session.scalar(select(Currency.minor_units).where(Currency.code == currency))
    if units is None:
        raise BillingError(f"unknown currency {currency!r}")
    return amount.quantize(Decimal(1).scaleb(-units))


async def create_customer(
    session: AsyncSession, name: str, email: str, *, currency: str = "USD", country: str = "US"
) -> Customer:
    customer = Customer(name=name, email=email, currency=currency, country=country)
    session.add(customer)
    await session.flush()
    return customer


async def _totals(session: AsyncSession, invoice: Invoice, country: str) -> None:
    net = sum((line.quantity * line.unit_price for line in invoice.lines), Decimal(0))
    rate = await session.scalar(select(VatRate.rate).where(VatRate.country == country))
    invoice.total = await round_money(session, invoice.currency, net)
    invoice.vat = await round_money(session, invoice.currency, net * (rate or Decimal(0)))


async def draft_invoice(
    session: AsyncSession, customer: Customer, issued_on: dt.date, lines: Iterable[Line]
) -> Invoice:
    invoice = Invoice(customer_id=customer.id, currency=customer.currency, issued_on=issued_on)
    invoice.lines = [InvoiceLine(description=d, quantity=q, unit_price=p) for d, q, p in lines]
    await _totals(session, invoice, customer.country)
    session.add(invoice)
    await session.flush()
    return invoice


async def add_line(session: AsyncSession, invoice: Invoice, line: Line) -> None:
    if invoice.status != "draft":
        raise BillingError(f"invoice {invoice.number} is {invoice.status}: add lines to a draft")
    description, quantity, unit_price = line
    invoice.lines.append(
        InvoiceLine(description=description, quantity=quantity, unit_price=unit_price)
    )
    customer = await session.get_one(Customer, invoice.customer_id)
    await _totals(session, invoice, customer.country)
    await session.flush()


async def _account_ids(session: AsyncSession, codes: Iterable[str]) -> dict[str, int]:
    rows = await session.execute(
        select(Account.code, Account.id).where(Account.code.in_(set(codes)))
    )
    return {code: id_ for code, id_ in rows}


async def record_entry(
    session: AsyncSession,
    posted_on: dt.date,
    memo: str,
    postings: Sequence[Posting],
    *,
    invoice_id: int | None = None,
) -> JournalEntry:
    """A journal entry. Its balance is checked by the database at COMMIT (a deferred trigger)."""
    ids = await _account_ids(session, (code for code, _, _ in postings))
    missing = sorted({code for code, _, _ in postings} - ids.keys())
    if missing:
        raise BillingError(f"unknown account(s) {', '.join(missing)}")
    entry = JournalEntry(posted_on=posted_on, memo=memo, invoice_id=invoice_id)
    entry.lines = [JournalLine(account_id=ids[c], debit=d, credit=k) for c, d, k in postings]
    session.add(entry)
    await session.flush()
    return entry


def _nonzero(postings: Iterable[Posting]) -> list[Posting]:
    return [p for p in postings if p[1] or p[2]]


async def post_invoice(session: AsyncSession, invoice: Invoice, on: dt.date) -> JournalEntry:
    """draft → posted: number it and book receivable = sales + VAT."""
    if invoice.status != "draft":
        raise BillingError(f"invoice {invoice.id} is {invoice.status}, not a draft")
    if not invoice.lines:
        raise BillingError(f"invoice {invoice.id} has no lines")
    invoice.status = "posted"
    invoice.number = f"INV-{invoice.issued_on:%Y}-{invoice.id:05d}"
    invoice.posted_at = dt.datetime.now(dt.timezone.utc)
    zero = Decimal(0)
    postings = [
        (RECEIVABLES, invoice.total + invoice.vat, zero),
        (SALES, zero, invoice.total),
        (VAT_PAYABLE, zero, invoice.vat),
    ]
    return await record_entry(
        session, on, f"invoice {invoice.number}", _nonzero(postings), invoice_id=invoice.id
    )


async def void_invoice(session: AsyncSession, invoice: Invoice, on: dt.date) -> JournalEntry:
    """posted → void, with the reversing entry."""
    if invoice.status != "posted":
        raise BillingError(f"invoice {invoice.id} is {invoice.status}: only posted ones are voided")
    invoice.status = "void"
    zero = Decimal(0)
    postings = [
        (RECEIVABLES, zero, invoice.total + invoice.vat),
        (SALES, invoice.total, zero),
        (VAT_PAYABLE, invoice.vat, zero),
    ]
    return await record_entry(
        session, on, f"void {invoice.number}", _nonzero(postings), invoice_id=invoice.id
    )


async def record_payment(
    session: AsyncSession, invoice: Invoice, amount: Decimal, on: dt.date
) -> JournalEntry:
    if invoice.status != "posted":
        raise BillingError(f"invoice {invoice.id} is {invoice.status}: payments need a posted one")
    if amount <= 0:
        raise BillingError("a payment must be positive")
    zero = Decimal(0)
    return await record_entry(
        session,
        on,
        f"payment {invoice.number}",
        [(CASH, amount, zero), (RECEIVABLES, zero, amount)],
        invoice_id=invoice.id,
    )


async def account_balance(session: AsyncSession, code: str) -> Decimal:
    """Debits minus credits on the account."""
    balance = await session.scalar(
        select(func.coalesce(func.sum(JournalLine.debit - JournalLine.credit), 0))
        .join(Account, Account.id == JournalLine.account_id)
        .where(Account.code == code)
    )
    return Decimal(balance or 0)


async def trial_balance(session: AsyncSession) -> dict[str, Decimal]:
    rows = await session.execute(
        select(Account.code, func.coalesce(func.sum(JournalLine.debit - JournalLine.credit), 0))
        .outerjoin(JournalLine, JournalLine.account_id == Account.id)
        .group_by(Account.code)
        .order_by(Account.code)
    )
    return {code: Decimal(total) for code, total in rows}


async def outstanding(session: AsyncSession, invoice: Invoice) -> Decimal:
    """What the customer still owes on the invoice."""
    paid = await session.scalar(
        select(func.coalesce(func.sum(JournalLine.credit), 0))
        .join(JournalEntry, JournalEntry.id == JournalLine.entry_id)
        .join(Account, Account.id == JournalLine.account_id)
        .where(
            JournalEntry.invoice_id == invoice.id,
            Account.code == RECEIVABLES,
            JournalEntry.memo.startswith("payment"),
        )
    )
    return invoice.total + invoice.vat - Decimal(paid or 0)


async def statement(session: AsyncSession, customer_id: int) -> list[tuple[str, Decimal]]:
    """Posted invoices of a customer, oldest first: (number, gross)."""
    rows = await session.execute(
        select(Invoice.number, Invoice.total + Invoice.vat)
        .where(Invoice.customer_id == customer_id, Invoice.status == "posted")
        .order_by(Invoice.issued_on, Invoice.id)
    )
    return [(str(number), Decimal(gross)) for number, gross in rows]
