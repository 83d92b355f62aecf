"""Use cases (their own sessions) inside the test's rolled-back transaction."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from conftest import TODAY, InvoiceFactory
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from async_service import billing, service
from async_service.models import Invoice, JournalEntry

D = Decimal


@pytest.mark.parametrize("post", [True, False])
async def test_invoice_customer(async_db_session: AsyncSession, post: bool) -> None:
    customer_id = await service.register_customer("Buyer", "buyer@example.test")
    invoice_id = await service.invoice_customer(
        customer_id, TODAY, [("widget", 4, D("2.50"))], post=post
    )
    invoice = await async_db_session.get_one(Invoice, invoice_id)
    assert invoice.total == D("10.00")
    assert invoice.status == ("posted" if post else "draft")


@pytest.mark.parametrize("n", [1, 3, 5])
async def test_post_all_posts_every_draft(async_db_session: AsyncSession, n: int) -> None:
    customer_id = await service.register_customer("Bulk", "bulk@example.test")
    ids = [
        await service.invoice_customer(customer_id, TODAY, [("x", 1, D(i + 1))], post=False)
        for i in range(n)
    ]
    outcome = await service.post_all(ids, TODAY)
    assert outcome == dict.fromkeys(ids, "posted")
    entries = select(func.count()).select_from(JournalEntry)
    assert await async_db_session.scalar(entries) == n


async def test_post_all_reports_a_business_failure(async_db_session: AsyncSession) -> None:
    customer_id = await service.register_customer("Bulk", "bulk2@example.test")
    empty = await service.invoice_customer(customer_id, TODAY, [], post=False)
    good = await service.invoice_customer(customer_id, TODAY, [("x", 1, D(1))], post=False)
    outcome = await service.post_all([empty, good], TODAY)
    assert outcome[good] == "posted"
    assert outcome[empty].startswith("failed: ") and "no lines" in outcome[empty]


@pytest.mark.parametrize("day", [1, 15, 28])
async def test_invoice_numbers_follow_issue_year(async_db_session: AsyncSession, day: int) -> None:
    customer_id = await service.register_customer("Dated", f"dated{day}@example.test")
    invoice_id = await service.invoice_customer(
        customer_id, dt.date(2025, 2, day), [("x", 1, D(1))]
    )
    invoice = await async_db_session.get_one(Invoice, invoice_id)
    assert invoice.number == f"INV-2025-{invoice_id:05d}"


async def test_use_case_sees_the_tests_own_rows(
    async_db_session: AsyncSession, make_invoice: InvoiceFactory
) -> None:
    """The use case's session joins the test's transaction: rows the test made are visible."""
    draft = await make_invoice()
    await async_db_session.commit()
    outcome = await service.post_all([draft.id], TODAY)
    assert outcome == {draft.id: "posted"}
    assert await billing.statement(async_db_session, draft.customer_id) != []
