"""Tests for the Alembic project in migrations/ (chain shape, schema, triggers, env.py).

Self-contained: every test that needs a database creates its own uniquely named
scratch database on the admin server (``TESTDB_TEST_TRUST_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``) and drops it afterwards, so the
module runs serially and under ``pytest -n N`` alike.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

EXPECTED_TABLES = {
    "users",
    "roles",
    "permissions",
    "role_permissions",
    "user_roles",
    "organisations",
    "user_organisations",
    "currencies",
    "accounts",
    "fiscal_periods",
    "journal_entries",
    "journal_lines",
    "bank_accounts",
    "bank_statements",
    "bank_statement_lines",
    "reconciliation_matches",
    "fx_rates",
    "report_definitions",
    "report_snapshots",
    "audit_log",
}
EXPECTED_VIEWS = {"account_balances", "trial_balance"}
EXPECTED_ENUMS = {
    "entity_type",
    "account_type",
    "normal_balance",
    "fiscal_period_status",
    "journal_entry_status",
    "statement_source",
    "match_method",
    "report_kind",
    "audit_action",
    "reconciliation_status",
}
EXPECTED_FUNCTIONS = {
    "check_journal_entry_balanced",
    "audit_log_row_change",
    "guard_posted_journal_entry",
}
SEEDED_CURRENCIES = {"USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "SEK", "NOK"}


# --------------------------------------------------------------------------- helpers


def _admin_url() -> URL:
    url = make_url(os.environ.get("TESTDB_TEST_TRUST_URL") or DEFAULT_ADMIN_URL)
    # Accept SQLAlchemy-style URLs (postgresql+psycopg://...) as well as libpq ones.
    return url.set(drivername="postgresql")


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class ScratchDB:
    name: str
    url: URL  # postgresql+psycopg://.../<name>

    def sa_url(self, drivername: str = "postgresql+psycopg") -> str:
        return self.url.set(drivername=drivername).render_as_string(hide_password=False)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(_libpq(self.url), autocommit=autocommit)


@pytest.fixture
def scratch_db() -> Iterator[ScratchDB]:
    admin = _admin_url()
    name = f"test_migrations_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield ScratchDB(name=name, url=admin.set(drivername="postgresql+psycopg", database=name))
    finally:
        with psycopg.connect(_libpq(admin), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def make_config(url: str | None = None, **kwargs: Any) -> Config:
    cfg = Config(str(ALEMBIC_INI), **kwargs)
    if url is not None:
        # Config is a ConfigParser: a literal '%' (e.g. an escaped password) must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(make_config()).get_current_head()
    assert head is not None
    return head


def current_version(db: ScratchDB) -> str | None:
    with db.connect() as conn:
        exists = conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()
        assert exists is not None
        if exists[0] is None:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row[0])


def _rows(conn: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(row) for row in conn.execute(query).fetchall())


def schema_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Everything our migrations can create in ``public``, in comparable form.

    Covers columns, relations, constraints, indexes, triggers, functions, enum labels,
    view definitions and per-table row counts (seed data); ``alembic_version`` is left out.
    """
    snapshot = {
        "columns": _rows(
            conn,
            """
            SELECT table_name::text, column_name::text, udt_name::text, is_nullable::text,
                   coalesce(column_default, ''), coalesce(character_maximum_length, -1),
                   coalesce(numeric_precision, -1), coalesce(numeric_scale, -1),
                   is_identity::text
              FROM information_schema.columns
             WHERE table_schema = 'public'
            """,
        ),
        "relations": _rows(
            conn,
            """
            SELECT c.relname::text, c.relkind::text
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public'
            """,
        ),
        "constraints": _rows(
            conn,
            """
            SELECT con.conrelid::regclass::text, con.conname::text,
                   pg_get_constraintdef(con.oid), con.condeferrable, con.condeferred
              FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
             WHERE n.nspname = 'public'
            """,
        ),
        "indexes": _rows(
            conn,
            "SELECT tablename::text, indexname::text, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public'",
        ),
        "triggers": _rows(
            conn,
            """
            SELECT t.tgrelid::regclass::text, t.tgname::text, pg_get_triggerdef(t.oid)
              FROM pg_trigger t
              JOIN pg_class c ON c.oid = t.tgrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND NOT t.tgisinternal
            """,
        ),
        "functions": _rows(
            conn,
            """
            SELECT p.proname::text, pg_get_functiondef(p.oid)
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public'
            """,
        ),
        "enums": _rows(
            conn,
            """
            SELECT t.typname::text,
                   array_to_string(array_agg(e.enumlabel ORDER BY e.enumsortorder), ',')
              FROM pg_type t
              JOIN pg_enum e ON e.enumtypid = t.oid
              JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = 'public'
             GROUP BY t.typname
            """,
        ),
        "views": _rows(
            conn,
            "SELECT viewname::text, definition FROM pg_views WHERE schemaname = 'public'",
        ),
    }
    # Alembic's own bookkeeping table comes and goes with the first/last revision.
    snapshot = {
        key: [row for row in rows if not any("alembic_version" in str(v) for v in row)]
        for key, rows in snapshot.items()
    }
    tables = [name for name, kind in snapshot["relations"] if kind == "r"]
    snapshot["row_counts"] = [
        (
            table,
            conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()[0],  # type: ignore[index]
        )
        for table in sorted(tables)
    ]
    return snapshot


def public_objects(conn: psycopg.Connection[Any]) -> dict[str, set[str]]:
    def names(query: str) -> set[str]:
        return {str(row[0]) for row in conn.execute(query).fetchall()}

    return {
        "tables": names(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ),
        "views": names("SELECT viewname FROM pg_views WHERE schemaname = 'public'"),
        "enums": names(
            "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = 'public' AND t.typtype = 'e'"
        ),
        "functions": names(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'"
        ),
    }


# --------------------------------------------------------------------------- tests


def test_revision_chain_is_linear_with_single_head() -> None:
    script = ScriptDirectory.from_config(make_config())

    heads = script.get_heads()
    bases = script.get_bases()
    assert len(heads) == 1, f"expected exactly one head, got {heads}"
    assert len(bases) == 1, f"expected exactly one base, got {bases}"

    # walk_revisions goes head -> base; reverse it to read the chain in order.
    chain = list(reversed(list(script.walk_revisions())))
    assert len(chain) >= 30
    assert chain[0].revision == bases[0]
    assert chain[0].down_revision is None
    assert chain[-1].revision == heads[0]

    for index, rev in enumerate(chain, start=1):
        assert not rev.is_merge_point and not rev.is_branch_point, rev.revision
        if index > 1:
            assert rev.down_revision == chain[index - 2].revision, rev.revision
        # House style: 12-hex ids prefixed with the sequence number, NNNN_<slug>.py files.
        assert re.fullmatch(r"[0-9a-f]{12}", rev.revision), rev.revision
        assert rev.revision.startswith(f"{index:04d}"), rev.revision
        assert rev.path is not None
        assert re.fullmatch(rf"{index:04d}_[a-z0-9_]+\.py", Path(rev.path).name), rev.path
        assert rev.doc, f"{rev.revision} has no message"

    # Nothing in versions/ is outside the chain.
    version_files = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert version_files == sorted(Path(rev.path).name for rev in chain if rev.path)


def test_upgrade_head_creates_schema_and_seeds_currencies(scratch_db: ScratchDB) -> None:
    command.upgrade(make_config(scratch_db.sa_url()), "head")

    assert current_version(scratch_db) == head_revision()
    with scratch_db.connect() as conn:
        objects = public_objects(conn)
        assert objects["tables"] == EXPECTED_TABLES | {"alembic_version"}
        assert objects["views"] == EXPECTED_VIEWS
        assert objects["enums"] == EXPECTED_ENUMS
        assert objects["functions"] == EXPECTED_FUNCTIONS

        currencies = dict(conn.execute("SELECT code, minor_units FROM currencies").fetchall())
        assert len(currencies) >= 10
        assert set(currencies) >= SEEDED_CURRENCIES
        assert currencies["JPY"] == 0
        assert currencies["USD"] == 2

        # Later revisions altered earlier tables.
        user_columns = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
            )
        }
        assert {"display_name", "last_login_at", "is_active"} <= user_columns
        assert "full_name" not in user_columns
        rate_type = conn.execute(
            "SELECT numeric_precision, numeric_scale FROM information_schema.columns "
            "WHERE table_name = 'fx_rates' AND column_name = 'rate'"
        ).fetchone()
        assert rate_type == (24, 10)

        # Seeded roles and their grants.
        grants = dict(
            conn.execute(
                "SELECT r.name, count(*) FROM role_permissions rp "
                "JOIN roles r ON r.id = rp.role_id GROUP BY r.name"
            ).fetchall()
        )
        assert grants["viewer"] == 1
        assert grants["admin"] == conn.execute("SELECT count(*) FROM permissions").fetchone()[0]  # type: ignore[index]

        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            ).fetchall()
        )
        assert "WHERE (status = 'posted'" in indexes["ix_journal_entries_posted"]
        assert "USING gin (payload jsonb_path_ops)" in indexes["ix_report_snapshots_payload"]

        trigger = conn.execute(
            "SELECT tgdeferrable, tginitdeferred FROM pg_trigger "
            "WHERE tgname = 'journal_entry_balanced'"
        ).fetchone()
        assert trigger == (True, True)


def _insert_ledger_fixture(cur: psycopg.Cursor[Any]) -> tuple[int, int, int]:
    """An organisation with a cash and a revenue account; returns (org, cash, revenue)."""
    org_id = cur.execute(
        "INSERT INTO organisations (name, country_code, functional_currency) "
        "VALUES ('Acme Ltd', 'GB', 'GBP') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    cash_id = cur.execute(
        "INSERT INTO accounts (organisation_id, code, name, account_type, normal_balance) "
        "VALUES (%s, '1000', 'Cash', 'asset', 'debit') RETURNING id",
        (org_id,),
    ).fetchone()[0]  # type: ignore[index]
    revenue_id = cur.execute(
        "INSERT INTO accounts (organisation_id, code, name, account_type, normal_balance) "
        "VALUES (%s, '4000', 'Sales', 'revenue', 'credit') RETURNING id",
        (org_id,),
    ).fetchone()[0]  # type: ignore[index]
    return org_id, cash_id, revenue_id


def _insert_entry(
    cur: psycopg.Cursor[Any],
    org_id: int,
    number: int,
    lines: list[tuple[int, str, str]],
    *,
    posted: bool = False,
) -> int:
    entry_id = cur.execute(
        "INSERT INTO journal_entries (organisation_id, entry_number, entry_date, description, "
        "status, posted_at) VALUES (%s, %s, %s, 'test', %s, %s) RETURNING id",
        (
            org_id,
            number,
            date(2024, 1, 31),
            "posted" if posted else "draft",
            "2024-01-31T12:00:00Z" if posted else None,
        ),
    ).fetchone()[0]  # type: ignore[index]
    for line_no, (account_id, debit, credit) in enumerate(lines, start=1):
        cur.execute(
            "INSERT INTO journal_lines (entry_id, line_no, account_id, debit, credit) "
            "VALUES (%s, %s, %s, %s, %s)",
            (entry_id, line_no, account_id, debit, credit),
        )
    return int(entry_id)


def test_balanced_entry_trigger_is_deferred_to_commit(scratch_db: ScratchDB) -> None:
    command.upgrade(make_config(scratch_db.sa_url()), "head")

    with scratch_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            org_id, cash_id, revenue_id = _insert_ledger_fixture(cur)
        conn.commit()

        # Unbalanced: every INSERT succeeds (the check is deferred) but COMMIT fails.
        with conn.cursor() as cur:
            _insert_entry(cur, org_id, 1, [(cash_id, "100.00", "0"), (revenue_id, "0", "90.00")])
        with pytest.raises(psycopg.errors.CheckViolation, match="unbalanced") as excinfo:
            conn.commit()
        assert excinfo.value.diag.constraint_name == "journal_entry_balanced"
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM journal_entries").fetchone() == (0,)

        # A single one-sided line is unbalanced too.
        with conn.cursor() as cur:
            _insert_entry(cur, org_id, 1, [(cash_id, "5.00", "0")])
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.commit()
        conn.rollback()

        # Balanced across several lines: accepted.
        with conn.cursor() as cur:
            entry_id = _insert_entry(
                cur,
                org_id,
                1,
                [
                    (cash_id, "60.00", "0"),
                    (cash_id, "40.00", "0"),
                    (revenue_id, "0", "100.00"),
                ],
                posted=True,
            )
        conn.commit()
        lines = conn.execute(
            "SELECT sum(debit), sum(credit), count(*) FROM journal_lines WHERE entry_id = %s",
            (entry_id,),
        ).fetchone()
        assert lines is not None
        assert (str(lines[0]), str(lines[1]), lines[2]) == ("100.00", "100.00", 3)

        # Updating a committed entry out of balance is rejected at commit as well.
        conn.execute(
            "UPDATE journal_lines SET debit = 70 WHERE entry_id = %s AND line_no = 1", (entry_id,)
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.commit()
        conn.rollback()

        # The reporting views see the posted entry.
        balances = dict(conn.execute("SELECT code, balance::text FROM account_balances").fetchall())
        assert balances == {"1000": "100.00", "4000": "100.00"}
        trial = conn.execute(
            "SELECT sum(debit_balance)::text, sum(credit_balance)::text FROM trial_balance"
        ).fetchone()
        assert trial == ("100.00", "100.00")

        # The generic audit trigger recorded the inserts.
        audited = conn.execute(
            "SELECT action::text, row_id FROM audit_log WHERE table_name = 'journal_entries'"
        ).fetchall()
        assert audited == [("INSERT", str(entry_id))]
        conn.commit()


def test_downgrade_to_base_removes_all_objects(scratch_db: ScratchDB) -> None:
    cfg = make_config(scratch_db.sa_url())
    with scratch_db.connect() as conn:
        before = schema_snapshot(conn)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")

    assert current_version(scratch_db) is None
    with scratch_db.connect() as conn:
        objects = public_objects(conn)
        assert objects["tables"] <= {"alembic_version"}
        assert objects["views"] == set()
        assert objects["enums"] == set()
        assert objects["functions"] == set()
        after = schema_snapshot(conn)

    # Apart from Alembic's own bookkeeping table, the database is as it was.
    assert after == before


def test_round_trip_head_base_head(scratch_db: ScratchDB) -> None:
    cfg = make_config(scratch_db.sa_url())
    command.upgrade(cfg, "head")
    with scratch_db.connect() as conn:
        first = schema_snapshot(conn)

    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")

    assert current_version(scratch_db) == head_revision()
    with scratch_db.connect() as conn:
        second = schema_snapshot(conn)
    assert second == first
    assert ("currencies", 13) in second["row_counts"]


def test_every_downgrade_exactly_reverses_its_upgrade(scratch_db: ScratchDB) -> None:
    """Stairway: for each revision, upgrade to it, step back one, compare, step forward."""
    script = ScriptDirectory.from_config(make_config())
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]

    engine = create_engine(scratch_db.sa_url(), poolclass=NullPool)
    cfg = make_config()

    def run(fn: Any, target: str) -> None:
        with engine.connect() as connection:
            cfg.attributes["connection"] = connection
            fn(cfg, target)
            connection.commit()

    try:
        with scratch_db.connect() as conn:
            before = schema_snapshot(conn)
            for revision in chain:
                run(command.upgrade, revision)
                after = schema_snapshot(conn)
                assert after != before, f"{revision} changed nothing"
                run(command.downgrade, "-1")
                assert schema_snapshot(conn) == before, f"downgrade of {revision} is not exact"
                run(command.upgrade, revision)
                assert schema_snapshot(conn) == after, f"{revision} is not repeatable"
                before = after
    finally:
        engine.dispose()


def test_env_py_runs_on_connection_from_config_attributes(scratch_db: ScratchDB) -> None:
    # A URL that cannot work proves the passed-in connection is what gets used.
    cfg = make_config("postgresql+psycopg://nobody@127.0.0.1:1/does_not_exist")
    engine = create_engine(scratch_db.sa_url(), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
            # env.py must leave the caller's connection open and usable.
            assert not connection.closed
            assert connection.execute(text("SELECT count(*) FROM currencies")).scalar() == 13
            assert (
                connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
                == head_revision()
            )
        # Committed by the caller's engine.begin() block.
        assert current_version(scratch_db) == head_revision()

        with engine.connect() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "base")
            connection.commit()
    finally:
        engine.dispose()
    assert current_version(scratch_db) is None


def test_env_py_runs_with_async_driver_url(scratch_db: ScratchDB) -> None:
    # asyncpg and greenlet come with the test extra: a missing one must fail, not skip.
    cfg = make_config(scratch_db.sa_url("postgresql+asyncpg"))

    command.upgrade(cfg, "head")
    assert current_version(scratch_db) == head_revision()
    with scratch_db.connect() as conn:
        assert public_objects(conn)["views"] == EXPECTED_VIEWS

    command.downgrade(cfg, "-3")
    script = ScriptDirectory.from_config(cfg)
    expected = script.get_revision(head_revision())
    for _ in range(3):
        assert expected is not None
        expected = script.get_revision(expected.down_revision)  # type: ignore[arg-type]
    assert expected is not None
    assert current_version(scratch_db) == expected.revision

    command.downgrade(cfg, "base")
    assert current_version(scratch_db) is None


def test_offline_sql_matches_online_upgrade(scratch_db: ScratchDB) -> None:
    buffer = io.StringIO()
    cfg = make_config(scratch_db.sa_url(), output_buffer=buffer)
    command.upgrade(cfg, "head", sql=True)
    script_sql = buffer.getvalue()

    assert "CREATE CONSTRAINT TRIGGER journal_entry_balanced" in script_sql
    assert "CREATE TYPE account_type AS ENUM" in script_sql
    assert "INSERT INTO currencies" in script_sql
    assert current_version(scratch_db) is None  # offline mode touched nothing

    with scratch_db.connect() as conn:
        conn.execute(script_sql)
        offline = schema_snapshot(conn)
    assert current_version(scratch_db) == head_revision()

    online_cfg = make_config(scratch_db.sa_url())
    command.downgrade(online_cfg, "base")
    command.upgrade(online_cfg, "head")
    with scratch_db.connect() as conn:
        assert schema_snapshot(conn) == offline
