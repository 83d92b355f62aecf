"""How the finreport-testdb fixtures are meant to be used; run with `pytest -n 2`.

Every xdist worker gets its own clone of the migrated template (`finance_app_test_gw0`, ...). Every
test commits for real, and what it committed is undone before the next test, so the tests below
never see each other's data, whichever worker runs them.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from finreport_testdb import ClonedDatabase
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from finance_app import ledger
from finance_app.app import LedgerApp, create_app
from finance_app.ledger import Posting
from finance_app.models import Currency, JournalEntry, Organisation, audit_log

D = Decimal
ON = dt.date(2024, 5, 31)


def sale(session: Session, organisation_id: int, debit: str, credit: str) -> JournalEntry:
    cash = ledger.account(session, organisation_id, "1000")
    sales = ledger.account(session, organisation_id, "4000")
    return ledger.post_entry(
        session,
        organisation_id,
        ON,
        [Posting(cash, debit=D(debit)), Posting(sales, credit=D(credit))],
    )


def count_organisations(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Organisation)) or 0


# --- db_session: commits are real; what a test committed is undone before the next test. -------


def test_clone_has_the_migrated_schema_and_seed_rows(db_session: Session) -> None:
    # Rows that migrations insert are in the template, so in every clone (TRUNCATE would lose them).
    assert {"USD", "EUR", "JPY"} <= set(db_session.scalars(select(Currency.code)))
    assert db_session.scalar(select(Currency.minor_units).where(Currency.code == "JPY")) == 0


@pytest.mark.parametrize("name", ["Acme Ltd", "Globex plc", "Initech"])
def test_each_test_starts_from_the_template(db_session: Session, name: str) -> None:
    assert count_organisations(db_session) == 0  # nothing left over from other tests
    ledger.open_organisation(db_session, name)
    db_session.commit()  # a real COMMIT: undone after the test
    assert count_organisations(db_session) == 1


def test_posting_updates_the_trial_balance(db_session: Session, organisation: Organisation) -> None:
    sale(db_session, organisation.id, "120.00", "120.00")
    assert ledger.balances(db_session, organisation.id) == {
        "1000": D("120.00"),
        "4000": D("-120.00"),
    }


def test_triggers_run_inside_the_test_transaction(
    db_session: Session, organisation: Organisation
) -> None:
    audited = db_session.scalars(select(audit_log.c.table_name)).all()
    assert audited.count("accounts") == len(ledger.DEFAULT_CHART)


def test_unbalanced_entry_caught_without_committing(
    db_session: Session, organisation: Organisation
) -> None:
    """The balance check is a deferred constraint trigger that fires at COMMIT, which a rolled-back
    test never reaches. `SET CONSTRAINTS ALL IMMEDIATE` runs the pending checks right now."""
    sale(db_session, organisation.id, "100.00", "90.00")
    with pytest.raises(IntegrityError, match="unbalanced"):
        db_session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))


# --- db_sessionmaker: for an app that opens its own sessions (FastAPI dependencies, services) ---


def test_app_sessions_commit_and_the_test_sees_it(app: LedgerApp, db_session: Session) -> None:
    organisation_id = app.open_organisation("Initech")  # commits in the app's own session
    app.record_sale(organisation_id, D("99.90"), ON)  # and again
    assert app.balances(organisation_id)["1000"] == D("99.90")
    # The test's session sees the app's work: it was committed (and is undone after the test).
    organisation = db_session.get(Organisation, organisation_id)
    assert organisation is not None and organisation.name == "Initech"


# --- fresh_database: a brand-new clone of the template for one test, next to the worker's -------


def test_committed_work_is_visible_to_another_engine(fresh_database: ClonedDatabase) -> None:
    app = create_app(fresh_database.sync_url)  # the app's own engine: real COMMITs
    reporting: Engine = create_engine(fresh_database.sync_url)  # e.g. a reporting job
    try:
        organisation_id = app.open_organisation("Umbrella")
        app.record_sale(organisation_id, D("10.00"), ON)
        with reporting.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(JournalEntry)) == 1
    finally:
        app.close()
        reporting.dispose()


def test_unbalanced_entry_is_rejected_at_commit(fresh_database: ClonedDatabase) -> None:
    engine = create_engine(fresh_database.sync_url)
    try:
        with Session(engine) as session:
            organisation = ledger.open_organisation(session, "Hooli")
            session.commit()
            sale(session, organisation.id, "100.00", "90.00")
            with pytest.raises(IntegrityError, match="unbalanced"):
                session.commit()  # the deferred trigger fires here
    finally:
        engine.dispose()


# --- async: async_db_session / async_db_sessionmaker (asyncpg or psycopg's async mode) ---------


async def test_async_session_commits_are_undone_too(async_db_session: AsyncSession) -> None:
    organisation = await ledger.async_open_organisation(
        async_db_session, "Async GmbH", country_code="DE", currency="EUR"
    )
    cash = await ledger.async_account(async_db_session, organisation.id, "1000")
    sales = await ledger.async_account(async_db_session, organisation.id, "4000")
    await ledger.async_post_entry(
        async_db_session,
        organisation.id,
        ON,
        [Posting(cash, debit=D("5.00")), Posting(sales, credit=D("5.00"))],
    )
    await async_db_session.commit()  # a real COMMIT, undone after the test
    assert await ledger.async_balances(async_db_session, organisation.id) == {
        "1000": D("5.00"),
        "4000": D("-5.00"),
    }


async def test_async_sessionmaker_commits_are_seen_by_the_test(
    async_db_sessionmaker: async_sessionmaker[AsyncSession], async_db_session: AsyncSession
) -> None:
    async with async_db_sessionmaker.begin() as session:  # an app's own session, committing
        await ledger.async_open_organisation(session, "Async Two Ltd")
    count = await async_db_session.scalar(select(func.count()).select_from(Organisation))
    assert count == 1
