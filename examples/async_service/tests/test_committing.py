"""Behaviour that exists only when transactions really commit.

No marker: every test commits for real (the plugin undoes it after the test), so what the service
commits is visible to other connections, the deferred balance check fires at COMMIT, the xmin guard
sees top-level transactions, and the background audit writer has connections of its own. The app's
own engine (`db.engine`, built at import time from DATABASE_URL) reads the same database.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from conftest import TODAY
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from async_service import db, service
from async_service.audit import AuditWriter
from async_service.models import AuditEvent, Customer, Invoice, JournalEntry

D = Decimal
Z = D(0)


async def count(table: type, where: str = "true") -> int:
    """Through the app's own engine: what is committed, as the app sees it."""
    async with db.engine.connect() as connection:
        name = table.__tablename__  # type: ignore[attr-defined]
        return int(
            (
                await connection.execute(text(f"SELECT count(*) FROM {name} WHERE {where}"))
            ).scalar_one()
        )


async def customer() -> int:
    return await service.register_customer("Committer", "committer@example.test")


async def test_starts_from_the_template_state() -> None:
    assert await count(Customer) == 0
    async with db.engine.connect() as connection:
        currencies = await connection.scalar(text("SELECT count(*) FROM currencies"))
    assert currencies == 5


async def test_commits_are_visible_to_the_apps_own_engine() -> None:
    await customer()
    assert await count(Customer) == 1


async def test_a_commit_does_not_leak_into_the_next_test() -> None:
    await customer()  # the same email as the previous test: only works if that one was undone
    assert await count(Customer) == 1


async def test_failed_registration_rolls_back_and_keeps_the_first() -> None:
    await customer()
    with pytest.raises(service.DuplicateEmail):
        await customer()
    assert await count(Customer) == 1


async def test_unbalanced_entry_is_refused_at_commit() -> None:
    with pytest.raises(service.UnbalancedEntry, match="lopsided"):
        await service.manual_entry(TODAY, "lopsided", [("1000", D(10), Z), ("3000", Z, D(9))])
    assert await count(JournalEntry) == 0


async def test_balanced_entry_commits() -> None:
    entry_id = await service.manual_entry(
        TODAY, "capital", [("1000", D(10), Z), ("3000", Z, D(10))]
    )
    assert await count(JournalEntry, f"id = {entry_id}") == 1


async def test_posted_invoice_can_be_amended_by_the_posting_transaction() -> None:
    invoice_id = await service.invoice_customer(
        await customer(), TODAY, [("x", 1, D(5))], post=False
    )
    number = await service.post_with_reference(invoice_id, "PO-77", TODAY)
    assert number == f"INV-2026-{invoice_id:05d}/PO-77"


async def test_posted_invoice_cannot_be_amended_later() -> None:
    invoice_id = await service.invoice_customer(await customer(), TODAY, [("x", 1, D(5))])
    with pytest.raises(DBAPIError, match="is posted: it cannot be changed"):
        await service.amend_total(invoice_id, D(1))
    assert await count(Invoice, "total = 5") == 1


async def test_posted_invoice_can_be_voided_later() -> None:
    invoice_id = await service.invoice_customer(await customer(), TODAY, [("x", 1, D(5))])
    await service.void(invoice_id, TODAY)
    assert await count(Invoice, "status = 'void'") == 1
    assert await count(JournalEntry) == 2


async def test_voided_invoice_is_frozen() -> None:
    invoice_id = await service.invoice_customer(await customer(), TODAY, [("x", 1, D(5))])
    await service.void(invoice_id, TODAY)
    with pytest.raises(DBAPIError, match="is void: it cannot be changed"):
        await service.amend_total(invoice_id, D(1))


async def test_post_all_commits_the_good_ones_when_one_fails() -> None:
    customer_id = await customer()
    good = await service.invoice_customer(customer_id, TODAY, [("x", 1, D(1))], post=False)
    empty = await service.invoice_customer(customer_id, TODAY, [], post=False)
    outcome = await service.post_all([good, empty], TODAY)
    assert outcome[good] == "posted"
    assert await count(Invoice, "status = 'posted'") == 1


async def test_audit_writer_records_events_in_the_background() -> None:
    async with AuditWriter() as audit:
        customer_id = await service.register_customer("Audited", "a@example.test", audit=audit)
        await service.invoice_customer(customer_id, TODAY, [("x", 1, D(1))], audit=audit)
    assert (audit.written, audit.failed) == (2, 0)
    assert await count(AuditEvent) == 2


async def test_audit_writer_keeps_up_with_concurrent_requests() -> None:
    async with AuditWriter() as audit:
        ids = await asyncio.gather(
            *(
                service.register_customer(f"C{i}", f"c{i}@example.test", audit=audit)
                for i in range(8)
            )
        )
        await audit.drain()
        assert await count(AuditEvent, "kind = 'customer.registered'") == 8
    assert len(set(ids)) == 8
    assert audit.failed == 0


async def test_audit_events_are_written_after_the_request_returns() -> None:
    async with AuditWriter() as audit:
        customer_id = await service.register_customer("Later", "later@example.test", audit=audit)
        invoice_id = await service.invoice_customer(
            customer_id, TODAY, [("x", 2, D(3))], audit=audit
        )
        await service.void(invoice_id, TODAY, audit=audit)
        await audit.drain()
        async with db.SessionLocal() as session:
            kinds = (await session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id))).all()
    assert kinds == ["customer.registered", "invoice.posted", "invoice.void"]


async def test_sessions_on_the_apps_engine_see_each_others_commits() -> None:
    customer_id = await customer()
    async with AsyncSession(db.engine) as first, AsyncSession(db.engine) as second:
        await service.invoice_customer(customer_id, TODAY, [("x", 1, D(1))])
        seen_first = await first.scalar(select(func.count()).select_from(Invoice))
        seen_second = await second.scalar(select(func.count()).select_from(Invoice))
    assert seen_first == seen_second == 1


async def test_enum_value_added_in_an_autocommit_block_is_usable() -> None:
    async with db.engine.connect() as connection:
        labels = await connection.scalar(
            text(
                "SELECT array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum "
                "JOIN pg_type t ON t.oid = enumtypid WHERE typname = 'invoice_status'"
            )
        )
        index = await connection.scalar(
            text(
                "SELECT indisvalid FROM pg_index JOIN pg_class c ON c.oid = indexrelid "
                "WHERE relname = 'ix_invoices_customer_issued'"
            )
        )
    assert labels == ["draft", "posted", "void"]
    assert index is True
