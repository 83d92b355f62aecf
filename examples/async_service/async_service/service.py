"""Use cases: each opens its own sessions from `db.SessionLocal`, commits, and rolls back on error.

This is the layer a web handler calls. In the tests they commit for real, exactly as here; the
plugin undoes what each test committed after it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal

from sqlalchemy.exc import DBAPIError, IntegrityError

from . import billing, db
from .audit import AuditWriter
from .models import Customer, Invoice


class DuplicateEmail(Exception):
    pass


class UnbalancedEntry(Exception):
    pass


async def register_customer(
    name: str,
    email: str,
    *,
    currency: str = "USD",
    country: str = "US",
    audit: AuditWriter | None = None,
) -> int:
    async with db.SessionLocal() as session:
        try:
            customer = await billing.create_customer(
                session, name, email, currency=currency, country=country
            )
            await session.commit()
        except IntegrityError as exc:
            await session.rollback()
            raise DuplicateEmail(email) from exc
    if audit:
        audit.emit("customer.registered", customer.id, email=email)
    return customer.id


async def invoice_customer(
    customer_id: int,
    issued_on: dt.date,
    lines: Iterable[billing.Line],
    *,
    post: bool = True,
    audit: AuditWriter | None = None,
) -> int:
    """Draft (and by default post) an invoice in one transaction."""
    async with db.SessionLocal.begin() as session:
        customer = await session.get_one(Customer, customer_id)
        invoice = await billing.draft_invoice(session, customer, issued_on, lines)
        if post:
            await billing.post_invoice(session, invoice, issued_on)
    if audit:
        audit.emit(f"invoice.{invoice.status}", invoice.id, number=invoice.number)
    return invoice.id


async def post_with_reference(invoice_id: int, reference: str, on: dt.date) -> str:
    """Post, then append the customer's purchase-order reference to the number, in one transaction
    (the immutability trigger allows changes only in the transaction that posted)."""
    async with db.SessionLocal.begin() as session:
        invoice = await session.get_one(Invoice, invoice_id)
        await billing.post_invoice(session, invoice, on)
        await session.flush()
        invoice.number = f"{invoice.number}/{reference}"
    return str(invoice.number)


async def amend_total(invoice_id: int, total: Decimal) -> None:
    async with db.SessionLocal.begin() as session:
        invoice = await session.get_one(Invoice, invoice_id)
        invoice.total = total


async def void(invoice_id: int, on: dt.date, *, audit: AuditWriter | None = None) -> None:
    async with db.SessionLocal.begin() as session:
        invoice = await session.get_one(Invoice, invoice_id)
        await billing.void_invoice(session, invoice, on)
    if audit:
        audit.emit("invoice.void", invoice_id)


async def manual_entry(posted_on: dt.date, memo: str, postings: Sequence[billing.Posting]) -> int:
    """A hand-made journal entry; the database checks its balance at COMMIT."""
    async with db.SessionLocal() as session:
        entry = await billing.record_entry(session, posted_on, memo, postings)
        try:
            await session.commit()
        except DBAPIError as exc:
            await session.rollback()
            if "unbalanced" in str(exc.orig):
                raise UnbalancedEntry(memo) from exc
            raise
    return entry.id


async def post_all(invoice_ids: Iterable[int], on: dt.date) -> dict[int, str]:
    """Post each invoice in its own transaction; one failure does not stop the others."""
    outcome: dict[int, str] = {}
    for invoice_id in invoice_ids:
        async with db.SessionLocal() as session:
            try:
                invoice = await session.get_one(Invoice, invoice_id)
                await billing.post_invoice(session, invoice, on)
                await session.commit()
                outcome[invoice_id] = "posted"
            except (billing.BillingError, DBAPIError) as exc:
                await session.rollback()
                outcome[invoice_id] = f"failed: {exc}"
    return outcome
