"""The app factory, FastAPI style: services open their own sessions from a session factory.

In production the factory comes from the database URL. Tests hand in the plugin's
`db_sessionmaker` instead, so every session the app opens joins the test's transaction and is rolled
back with it, even though the app commits.
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from . import ledger


class LedgerApp:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def open_organisation(self, name: str, *, currency: str = "USD") -> int:
        with self.session_factory.begin() as session:  # commits at the end of the block
            return ledger.open_organisation(session, name, currency=currency).id

    def record_sale(self, organisation_id: int, amount: Decimal, on: dt.date) -> int:
        with self.session_factory.begin() as session:
            cash = ledger.account(session, organisation_id, "1000")
            sales = ledger.account(session, organisation_id, "4000")
            entry = ledger.post_entry(
                session,
                organisation_id,
                on,
                [ledger.Posting(cash, debit=amount), ledger.Posting(sales, credit=amount)],
                description="cash sale",
            )
            return entry.id

    def balances(self, organisation_id: int) -> dict[str, Decimal]:
        with self.session_factory() as session:
            return ledger.balances(session, organisation_id)

    def close(self) -> None:
        """Close the pooled connections of an engine this app created from a URL."""
        bind = self.session_factory.kw.get("bind")
        if isinstance(bind, Engine):
            bind.dispose()


def create_app(
    database_url: str | None = None, *, session_factory: sessionmaker[Session] | None = None
) -> LedgerApp:
    """Build the app from a URL (default: $FINANCE_APP_DATABASE_URL) or a ready session factory."""
    if session_factory is None:
        url = database_url or os.environ["FINANCE_APP_DATABASE_URL"]
        session_factory = sessionmaker(create_engine(url))
    return LedgerApp(session_factory)
