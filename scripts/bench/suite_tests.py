"""Source text of the generated finance-schema test suite and of its conftest variants.

Every test takes one fixture, `db`: a SQLAlchemy Session on a database migrated to head. What
`db` is depends on the conftest variant (the benchmark mode); the test bodies never change.
"""

from __future__ import annotations

HELPERS = r'''
"""Helpers the generated tests share: a small finance app's data layer, in plain SQL."""
import itertools
import os
from datetime import date

from sqlalchemy import text

_seq = itertools.count(1)


def unique(prefix):
    return f"{prefix}-{os.getpid()}-{next(_seq)}"


def make_user(db, name=None):
    name = name or unique("user")
    return db.execute(
        text("INSERT INTO users (email, display_name) VALUES (:e, :n) RETURNING id"),
        {"e": f"{name}@example.com", "n": name},
    ).scalar_one()


def make_org(db, currency="EUR"):
    return db.execute(
        text(
            "INSERT INTO organisations (name, country_code, functional_currency) "
            "VALUES (:n, 'DE', :c) RETURNING id"
        ),
        {"n": unique("org"), "c": currency},
    ).scalar_one()


CHART = [
    ("1000", "Cash", "asset", "debit"),
    ("1100", "Bank", "asset", "debit"),
    ("1200", "Receivables", "asset", "debit"),
    ("1500", "Equipment", "asset", "debit"),
    ("2000", "Payables", "liability", "credit"),
    ("2100", "VAT payable", "liability", "credit"),
    ("3000", "Equity", "equity", "credit"),
    ("4000", "Sales", "revenue", "credit"),
    ("4100", "Services", "revenue", "credit"),
    ("5000", "Cost of sales", "expense", "debit"),
    ("6000", "Rent", "expense", "debit"),
    ("6100", "Salaries", "expense", "debit"),
]


def make_chart(db, org):
    ids = {}
    for code, name, kind, normal in CHART:
        ids[code] = db.execute(
            text(
                "INSERT INTO accounts (organisation_id, code, name, account_type, normal_balance) "
                "VALUES (:o, :c, :n, :t, :b) RETURNING id"
            ),
            {"o": org, "c": code, "n": name, "t": kind, "b": normal},
        ).scalar_one()
    return ids


def make_period(db, org, year=2024, month=1):
    start = date(year, month, 1)
    end = date(year + (month == 12), month % 12 + 1, 1)
    return db.execute(
        text(
            "INSERT INTO fiscal_periods (organisation_id, name, start_date, end_date) "
            "VALUES (:o, :n, :s, :e - 1) RETURNING id"
        ),
        {"o": org, "n": f"{year}-{month:02d}", "s": start, "e": end},
    ).scalar_one()


def next_number(db, org):
    return db.execute(
        text("SELECT coalesce(max(entry_number), 0) + 1 FROM journal_entries WHERE organisation_id = :o"),
        {"o": org},
    ).scalar_one()


def book(db, org, period, lines, day=15, post=True, user=None):
    """A journal entry with (account_id, debit, credit) lines; posted unless told otherwise."""
    entry = db.execute(
        text(
            "INSERT INTO journal_entries (organisation_id, fiscal_period_id, entry_date, "
            "description, status, entry_number, created_by) "
            "VALUES (:o, :p, :d, 'bench', 'draft', :n, :u) RETURNING id"
        ),
        {"o": org, "p": period, "d": date(2024, 1, day), "n": next_number(db, org), "u": user},
    ).scalar_one()
    for no, (account, debit, credit) in enumerate(lines, 1):
        db.execute(
            text(
                "INSERT INTO journal_lines (entry_id, line_no, account_id, debit, credit) "
                "VALUES (:e, :l, :a, :d, :c)"
            ),
            {"e": entry, "l": no, "a": account, "d": debit, "c": credit},
        )
    if post:
        db.execute(
            text("UPDATE journal_entries SET status = 'posted', posted_at = now() WHERE id = :e"),
            {"e": entry},
        )
    return entry


def ledger(db, entries=6):
    """An organisation with a chart of accounts, a period and a few posted entries."""
    org = make_org(db)
    accounts = make_chart(db, org)
    period = make_period(db, org)
    user = make_user(db)
    for k in range(entries):
        amount = 100 + 17 * k
        book(db, org, period, [(accounts["1100"], amount, 0), (accounts["4000"], 0, amount)], day=1 + k, user=user)
        book(db, org, period, [(accounts["6000"], amount / 4, 0), (accounts["2100"], amount / 4 / 5, 0),
                               (accounts["1100"], 0, amount / 4 * 1.2)], day=2 + k, user=user)
    return org, accounts, period
'''

TEST_KINDS = {
    "trial_balance": r"""
def test_trial_balance_{n}(db):
    org, accounts, period = ledger(db)
    row = db.execute(
        text("SELECT sum(total_debit), sum(total_credit) FROM trial_balance WHERE organisation_id = :o"),
        {{"o": org}},
    ).one()
    assert row[0] == row[1] and row[0] > 0
""",
    "account_balances": r"""
def test_account_balances_{n}(db):
    org, accounts, period = ledger(db)
    balances = dict(db.execute(
        text("SELECT code, balance FROM account_balances WHERE organisation_id = :o"), {{"o": org}}
    ).all())
    assert balances["1100"] > 0 and balances["4000"] > 0 and len(balances) == len(CHART)
""",
    "unbalanced": r"""
def test_unbalanced_entry_rejected_{n}(db):
    org, accounts, period = ledger(db, entries=3)
    book(db, org, period, [(accounts["1000"], 50, 0), (accounts["4100"], 0, 49)], post=False)
    with pytest.raises(DBAPIError, match="unbalanced"):
        db.execute(text("SET CONSTRAINTS journal_entry_balanced IMMEDIATE"))
    db.rollback()
""",
    "code_check": r"""
def test_account_code_format_{n}(db):
    org = make_org(db)
    make_chart(db, org)
    with pytest.raises(IntegrityError):
        db.execute(
            text("INSERT INTO accounts (organisation_id, code, name, account_type, normal_balance) "
                 "VALUES (:o, 'bad code', 'x', 'asset', 'debit')"),
            {{"o": org}},
        )
    db.rollback()
""",
    "email_unique": r"""
def test_email_case_insensitive_{n}(db):
    name = unique("Mixed")
    make_user(db, name)
    for k in range(5):
        make_user(db)
    with pytest.raises(IntegrityError):
        make_user(db, name.upper())
    db.rollback()
""",
    "posted_guard": r"""
def test_posted_entry_is_frozen_{n}(db):
    org, accounts, period = ledger(db, entries=4)
    entry = db.execute(text("SELECT max(id) FROM journal_entries WHERE organisation_id = :o"), {{"o": org}}).scalar_one()
    with pytest.raises(DBAPIError, match="posted"):
        db.execute(text("UPDATE journal_entries SET entry_date = entry_date + 1 WHERE id = :e"), {{"e": entry}})
    db.rollback()
""",
    "commit": r"""
def test_commit_and_read_back_{n}(db):
    org, accounts, period = ledger(db, entries=4)
    db.commit()
    count = db.execute(text("SELECT count(*) FROM journal_entries WHERE organisation_id = :o"), {{"o": org}}).scalar_one()
    assert count == 8
    db.execute(text("UPDATE organisations SET legal_name = 'Bench GmbH' WHERE id = :o"), {{"o": org}})
    db.commit()
    assert db.execute(text("SELECT legal_name FROM organisations WHERE id = :o"), {{"o": org}}).scalar_one() == "Bench GmbH"
""",
    "seed_data": r"""
def test_seeded_roles_and_currencies_{n}(db):
    assert db.execute(text("SELECT count(*) FROM currencies")).scalar_one() >= 13
    grants = db.execute(text(
        "SELECT r.name, count(*) FROM roles r JOIN role_permissions rp ON rp.role_id = r.id GROUP BY r.name"
    )).all()
    assert dict(grants)["admin"] == 9
    org, accounts, period = ledger(db, entries=2)
    assert db.execute(text("SELECT minor_units FROM currencies WHERE code = 'JPY'")).scalar_one() == 0
""",
    "audit": r"""
def test_audit_log_records_changes_{n}(db):
    org, accounts, period = ledger(db, entries=3)
    db.execute(text("UPDATE accounts SET name = name || ' (old)' WHERE organisation_id = :o"), {{"o": org}})
    rows = dict(db.execute(
        text("SELECT action::text, count(*) FROM audit_log WHERE table_name = 'accounts' "
             "AND (new_data->>'organisation_id')::bigint = :o GROUP BY action"),
        {{"o": org}},
    ).all())
    assert rows == {{"INSERT": len(CHART), "UPDATE": len(CHART)}}
""",
    "fx": r"""
def test_foreign_currency_line_{n}(db):
    org, accounts, period = ledger(db, entries=3)
    entry = book(db, org, period, [(accounts["1100"], 90, 0), (accounts["4000"], 0, 90)], post=False)
    db.execute(text("UPDATE journal_lines SET currency_code = 'USD', amount_foreign = 100, fx_rate = 0.9 "
                    "WHERE entry_id = :e"), {{"e": entry}})
    with pytest.raises(IntegrityError):
        db.execute(text("UPDATE journal_lines SET fx_rate = 0 WHERE entry_id = :e"), {{"e": entry}})
    db.rollback()
""",
}

TEST_HEADER = """
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from helpers import CHART, book, ledger, make_chart, make_org, make_user, unique
"""

# --------------------------------------------------------------------------- conftest variants

# Shared by every variant: the recorder writes per-worker timings for the benchmark to read.
RECORDER = r"""
import json
import os
import time

import pytest

_BENCH = {"phases": {"setup": 0.0, "call": 0.0, "teardown": 0.0}, "tests": 0, "fixtures": {},
          "per_test": {}}
_TIMED_FIXTURES = {"test_database", "testdb_databases", "testdb_template", "db_engine",
                   "migrated_engine", "postgresql_noproc", "fresh_database", "truncate_engine"}


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    started = time.perf_counter()
    yield
    if fixturedef.argname in _TIMED_FIXTURES:
        entry = _BENCH["fixtures"].setdefault(fixturedef.argname, [0.0, 0])
        entry[0] += time.perf_counter() - started
        entry[1] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionstart(session):
    started = time.perf_counter()
    yield
    _BENCH["sessionstart"] = time.perf_counter() - started


def pytest_runtest_logreport(report):
    _BENCH["phases"][report.when] += report.duration
    if report.when == "call":
        _BENCH["tests"] += 1
    group = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    slot = _BENCH["per_test"].setdefault(group, {"setup": 0.0, "call": 0.0, "teardown": 0.0, "n": 0})
    slot[report.when] += report.duration
    if report.when == "call":
        slot["n"] += 1


def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_RECORD_DIR")
    if out:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
        with open(os.path.join(out, f"{worker}.json"), "w") as fh:
            json.dump(_BENCH, fh)
"""

# (a) and (b): what a project does before adopting the plugin. One database per process (a serial
# run: one; naive xdist: one per worker), migrated by a session fixture through Alembic's API, and
# the usual per-test outer transaction + SAVEPOINT session, exactly like the plugin's db_session.
CONFTEST_MIGRATE = r"""
import os

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

SERVER = make_url(os.environ["BENCH_SERVER_URL"])
BASE = os.environ["BENCH_BASE"]


def _admin():
    u = SERVER
    return psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                           dbname="postgres", autocommit=True)


@pytest.fixture(scope="session")
def migrated_engine():
    name = f"{BASE}_{os.environ.get('PYTEST_XDIST_WORKER', 'master')}"
    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = SERVER.set(database=name)
    engine = create_engine(url)
    cfg = Config(os.environ["BENCH_ALEMBIC_INI"])
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
    yield engine
    engine.dispose()
    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(migrated_engine):
    with migrated_engine.connect() as connection:
        transaction = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()
"""

# (c) and (d): this plugin. (d) hands 10 % of the tests (marked `fresh`) a fresh clone instead.
CONFTEST_PLUGIN = r"""
import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool


def pytest_configure(config):
    config.addinivalue_line("markers", "fresh: needs committed data visible to other connections")


@pytest.fixture
def db(request):
    if os.environ.get("BENCH_FRESH") and request.node.get_closest_marker("fresh"):
        database = request.getfixturevalue("fresh_database")
        engine = create_engine(database.sync_url, poolclass=NullPool)
        session = Session(bind=engine)
        try:
            yield session
        finally:
            session.close()
            engine.dispose()
    else:
        yield request.getfixturevalue("db_session")
"""

# (e): the peer. pytest-postgresql's noproc fixture loads the schema into its template (once per
# process: with xdist every worker builds its own), and `postgresql` clones + drops one database
# per test. The Session wraps the fixture's own psycopg connection (no extra login).
CONFTEST_PEER = r"""
import os

import pytest
from alembic import command
from alembic.config import Config
from pytest_postgresql import factories
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

SERVER = make_url(os.environ["BENCH_SERVER_URL"])


def load_schema(host, port, user, dbname, password, **_):
    url = SERVER.set(host=host, port=int(port), username=user, password=password, database=dbname)
    engine = create_engine(url)
    cfg = Config(os.environ["BENCH_ALEMBIC_INI"])
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
    engine.dispose()


postgresql_noproc = factories.postgresql_noproc(
    host=SERVER.host, port=SERVER.port, user=SERVER.username, password=SERVER.password,
    dbname=os.environ["BENCH_BASE"], load=[load_schema],
)
postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
def db(postgresql):
    engine = create_engine("postgresql+psycopg://", creator=lambda: postgresql, poolclass=StaticPool)
    session = Session(bind=engine)
    try:
        yield session
    finally:
        session.close()
"""


def is_fresh(n: int) -> bool:
    """One test in ten, spread over every kind of test."""
    return (n // 10) % 10 == n % 10


def render_module(index: int, count: int) -> str:
    kinds = list(TEST_KINDS)
    parts = [TEST_HEADER]
    for k in range(count):
        n = index * count + k
        body = TEST_KINDS[kinds[n % len(kinds)]].format(n=n)
        if is_fresh(n):
            body = body.replace("\ndef ", "\n@pytest.mark.fresh\ndef ", 1)
        parts.append(body)
    return "\n".join(parts)
