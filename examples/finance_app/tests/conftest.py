"""Project fixtures built on the finreport-testdb plugin's fixtures (installed = enabled)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from finance_app import ledger
from finance_app.app import LedgerApp, create_app
from finance_app.models import Organisation


@pytest.fixture
def organisation(db_session: Session) -> Organisation:
    """An organisation with the default chart of accounts; undone after the test."""
    return ledger.open_organisation(db_session, "Acme Ltd")


@pytest.fixture
def app(db_sessionmaker: sessionmaker[Session]) -> LedgerApp:
    """The app under test. It opens (and commits) its own sessions, FastAPI style; built on the
    plugin's `db_sessionmaker`, they commit for real, and what they commit is undone after the
    test."""
    return create_app(session_factory=db_sessionmaker)
