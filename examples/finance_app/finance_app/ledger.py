"""Ledger operations on a Session the caller provides (sync) or an AsyncSession (async)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .models import Account, JournalEntry, JournalLine, Organisation, trial_balance

#: A minimal chart of accounts: code, name, type, normal balance.
DEFAULT_CHART = (
    ("1000", "Cash", "asset", "debit"),
    ("1100", "Accounts receivable", "asset", "debit"),
    ("4000", "Sales", "revenue", "credit"),
)


@dataclass(frozen=True)
class Posting:
    account: Account
    debit: Decimal = Decimal("0")
    credit: Decimal = Decimal("0")


def new_organisation(name: str, *, country_code: str = "US", currency: str = "USD") -> Organisation:
    organisation = Organisation(name=name, country_code=country_code, functional_currency=currency)
    organisation.accounts = [
        Account(code=code, name=label, account_type=kind, normal_balance=normal)
        for code, label, kind, normal in DEFAULT_CHART
    ]
    return organisation


def open_organisation(session: Session, name: str, **kwargs: str) -> Organisation:
    """An organisation with the default chart of accounts."""
    organisation = new_organisation(name, **kwargs)
    session.add(organisation)
    session.flush()
    return organisation


def account(session: Session, organisation_id: int, code: str) -> Account:
    return session.scalars(
        select(Account).where(Account.organisation_id == organisation_id, Account.code == code)
    ).one()


def _entry(
    organisation_id: int,
    number: int,
    on: dt.date,
    postings: Sequence[Posting],
    description: str | None,
    post: bool,
) -> JournalEntry:
    return JournalEntry(
        organisation_id=organisation_id,
        entry_number=number,
        entry_date=on,
        description=description,
        status="posted" if post else "draft",
        posted_at=func.now() if post else None,
        lines=[
            JournalLine(line_no=i, account_id=p.account.id, debit=p.debit, credit=p.credit)
            for i, p in enumerate(postings, start=1)
        ],
    )


def _next_number(organisation_id: int) -> Select[Any]:
    return select(func.coalesce(func.max(JournalEntry.entry_number), 0) + 1).where(
        JournalEntry.organisation_id == organisation_id
    )


def post_entry(
    session: Session,
    organisation_id: int,
    on: dt.date,
    postings: Sequence[Posting],
    *,
    description: str | None = None,
    post: bool = True,
) -> JournalEntry:
    """Add an entry (numbered per organisation). Whether it balances is checked at COMMIT."""
    number = session.scalar(_next_number(organisation_id))
    entry = _entry(organisation_id, number, on, postings, description, post)
    session.add(entry)
    session.flush()
    return entry


def balances(session: Session, organisation_id: int) -> dict[str, Decimal]:
    """Debit-positive balance per account code, from the `trial_balance` view (posted entries)."""
    rows = session.execute(
        select(
            trial_balance.c.account_code,
            trial_balance.c.debit_balance - trial_balance.c.credit_balance,
        ).where(trial_balance.c.organisation_id == organisation_id)
    )
    return {code: amount for code, amount in rows}


async def async_open_organisation(session: AsyncSession, name: str, **kwargs: str) -> Organisation:
    organisation = new_organisation(name, **kwargs)
    session.add(organisation)
    await session.flush()
    return organisation


async def async_account(session: AsyncSession, organisation_id: int, code: str) -> Account:
    result = await session.scalars(
        select(Account).where(Account.organisation_id == organisation_id, Account.code == code)
    )
    return result.one()


async def async_post_entry(
    session: AsyncSession,
    organisation_id: int,
    on: dt.date,
    postings: Sequence[Posting],
    *,
    description: str | None = None,
) -> JournalEntry:
    number = await session.scalar(_next_number(organisation_id))
    entry = _entry(organisation_id, number, on, postings, description, True)
    session.add(entry)
    await session.flush()
    return entry


async def async_balances(session: AsyncSession, organisation_id: int) -> dict[str, Decimal]:
    rows = await session.execute(
        select(
            trial_balance.c.account_code,
            trial_balance.c.debit_balance - trial_balance.c.credit_balance,
        ).where(trial_balance.c.organisation_id == organisation_id)
    )
    return {code: amount for code, amount in rows}
