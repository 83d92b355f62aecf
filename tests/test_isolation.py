# ruff: noqa: F811  (make_project, imported from test_plugin, is a fixture)
"""The default isolation's contract, clause by clause, with no marker anywhere (issue 17).

Every inner test commits for real (through the fixtures, the app's own engine, raw psycopg and
asyncpg, a thread, background tasks) and the inner conftest checks, before *every* test, that the
worker database is at its baseline: the seed rows and the current module's reference rows, no
other rows, sequences where the template left them, no large objects, no table a test created, no
advisory lock held, no prepared transaction. So a leak from any test fails whichever test runs
next on that worker, in any order. The inner session runs serially and with `-n 2`, on the trust
server and on the scram server.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import drop_databases_with_prefix
from psycopg import sql
from sqlalchemy.engine import URL
from test_plugin import (  # noqa: F401  (make_project is a fixture)
    Project,
    assert_no_password,
    make_project,
)

from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases

CONTRACT_REVISION = '''
    """the contract's schema: an xmin guard, a deferred balance check, a free sequence"""
    from alembic import op

    revision = "0004"
    down_revision = "0003"


    def upgrade():
        op.execute("""
            CREATE TABLE postings (
                id serial PRIMARY KEY,
                amount numeric NOT NULL,
                posted boolean NOT NULL DEFAULT false
            );
            -- A posted row may change only in the transaction that posted it: inside a SAVEPOINT
            -- xmin is the subtransaction's id, never pg_current_xact_id().
            CREATE FUNCTION guard_posted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.posted AND OLD.xmin <> pg_current_xact_id()::xid THEN
                    RAISE EXCEPTION 'posting % is posted', OLD.id;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER postings_guard BEFORE UPDATE ON postings
                FOR EACH ROW EXECUTE FUNCTION guard_posted();

            CREATE TABLE transfers (id serial PRIMARY KEY, debit numeric NOT NULL,
                                    credit numeric NOT NULL);
            CREATE FUNCTION check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT coalesce(sum(debit - credit), 0) FROM transfers) <> 0 THEN
                    RAISE EXCEPTION 'transfers are unbalanced';
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER transfers_balanced AFTER INSERT OR UPDATE ON transfers
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION check_balanced();

            CREATE SEQUENCE tickets;
        """)


    def downgrade():
        pass
'''

CONTRACT_CONFTEST = '''
    import os

    import psycopg
    import pytest
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    # The app's own engine, built at import time from the exported URL (12-factor style).
    APP_ENGINE = create_engine(make_url(os.environ["DATABASE_URL"]))


    def psycopg_kwargs(url):
        url = make_url(str(url))
        return dict(host=url.host, port=url.port, user=url.username, password=url.password,
                    dbname=url.database)


    @pytest.fixture(autouse=True)
    def at_baseline(request, test_database):
        """Before every test: nothing any earlier test committed is left."""
        with psycopg.connect(autocommit=True, **psycopg_kwargs(test_database.url_string)) as c:
            extra = c.execute(
                "SELECT name FROM accounts WHERE name NOT IN ('cash', 'bank') "
                "AND name NOT LIKE 'reference%'").fetchall()
            assert extra == [], f"rows left by an earlier test: {extra}"
            assert c.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
            assert c.execute("SELECT count(*) FROM postings").fetchone()[0] == 0
            assert c.execute("SELECT count(*) FROM transfers").fetchone()[0] == 0
            assert c.execute("SELECT last_value, is_called FROM tickets").fetchone() == (1, False)
            assert c.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == 0
            assert c.execute("SELECT to_regclass('scratch')").fetchone()[0] is None
            assert c.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = current_database() "
                "AND l.objid <> 7"  # the module fixture's own lock
            ).fetchone()[0] == 0
            assert c.execute(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            ).fetchone()[0] == 0
            assert c.execute("SHOW work_mem").fetchone()[0] != "7MB"
        yield
'''

CONTRACT_SYNC = """
    import threading

    import psycopg
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from conftest import APP_ENGINE, psycopg_kwargs

    NEW = text("INSERT INTO accounts (name) VALUES (:n) RETURNING id")


    def test_db_session_commits_are_real_and_seen_by_other_connections(db_session):
        db_session.execute(NEW, {"n": "session"})
        db_session.commit()
        with APP_ENGINE.connect() as other:
            assert other.execute(text("SELECT count(*) FROM accounts")).scalar() == 3


    def test_the_apps_own_engine_commits(db_session):
        with APP_ENGINE.begin() as connection:
            connection.execute(NEW, {"n": "app"})
            connection.execute(text("INSERT INTO entries (account_id, amount) VALUES (1, 5)"))
        assert db_session.execute(text("SELECT count(*) FROM entries")).scalar() == 1


    def test_raw_psycopg_and_a_thread_commit(test_database_url):
        def write(name):
            with psycopg.connect(**psycopg_kwargs(test_database_url)) as c:
                c.execute("INSERT INTO accounts (name) VALUES (%s)", (name,))

        write("raw")
        thread = threading.Thread(target=write, args=("thread",))
        thread.start()
        thread.join()
        with APP_ENGINE.connect() as c:
            assert c.execute(text("SELECT count(*) FROM accounts")).scalar() == 4


    def test_xmin_guard_sees_the_top_level_transaction():
        with APP_ENGINE.begin() as c:
            c.execute(text("INSERT INTO postings (amount, posted) VALUES (10, true)"))
            c.execute(text("UPDATE postings SET amount = 11"))  # same transaction: allowed
        with pytest.raises(DBAPIError, match="is posted"), APP_ENGINE.begin() as c:
            c.execute(text("UPDATE postings SET amount = 12"))  # a later one: refused


    def test_deferred_constraint_fires_at_commit():
        with pytest.raises(DBAPIError, match="unbalanced"), APP_ENGINE.begin() as c:
            c.execute(text("INSERT INTO transfers (debit, credit) VALUES (10, 0)"))
        with APP_ENGINE.begin() as c:
            c.execute(text("INSERT INTO transfers (debit, credit) VALUES (10, 0), (0, 10)"))


    def test_sequences_large_objects_and_advisory_locks(db_engine):
        with APP_ENGINE.begin() as c:
            assert c.execute(text("SELECT nextval('tickets')")).scalar() == 1
            c.execute(text("SELECT lo_from_bytea(0, 'blob')"))
        # A session-level lock on a pooled connection outlives the test unless it is undone.
        with APP_ENGINE.connect() as c:
            assert c.execute(text("SELECT pg_try_advisory_lock(42)")).scalar() is True
        with db_engine.connect() as other:
            assert other.execute(text("SELECT pg_try_advisory_lock(42)")).scalar() is False


    def test_a_rollback_only_advances_a_sequence():
        with APP_ENGINE.connect() as c:
            c.execute(NEW, {"n": "rolled back"})
            c.rollback()  # nothing committed, but the id sequence moved


    def test_ddl_is_undone():
        with APP_ENGINE.begin() as c:
            c.execute(text("CREATE TABLE scratch (id int)"))
            c.execute(text("INSERT INTO scratch VALUES (1)"))
            c.execute(NEW, {"n": "with ddl"})


    IDS = []


    @pytest.mark.parametrize("n", range(3))
    def test_repeated_tests_get_the_same_new_id(n, db_session):
        IDS.append(db_session.execute(NEW, {"n": "repeat"}).scalar_one())
        db_session.commit()
        assert len(set(IDS)) == 1, IDS  # the id sequence went back after each of them
"""

CONTRACT_MODULE_FIXTURE = '''
    import pytest
    from sqlalchemy import text

    from conftest import APP_ENGINE


    @pytest.fixture(scope="module", autouse=True)
    def reference_rows():
        """Reference data committed once for the module: it stays for every test in it."""
        with APP_ENGINE.begin() as c:
            c.execute(text("INSERT INTO accounts (name) VALUES ('reference-1'), ('reference-2')"))
        yield
        with APP_ENGINE.begin() as c:
            c.execute(text("DELETE FROM accounts WHERE name LIKE 'reference%'"))


    def names():
        with APP_ENGINE.connect() as c:
            return set(c.execute(text("SELECT name FROM accounts")).scalars())


    def test_ddl_next_to_module_rows():
        """DDL is undone by a new clone; the module's rows are carried over into it."""
        with APP_ENGINE.begin() as c:
            c.execute(text("CREATE TABLE scratch (id int)"))
            c.execute(text("DELETE FROM accounts WHERE name = 'reference-1'"))


    @pytest.mark.parametrize("n", range(3))
    def test_module_rows_stay_while_test_changes_to_the_same_table_go(n):
        assert names() == {"cash", "bank", "reference-1", "reference-2"}
        with APP_ENGINE.begin() as c:
            c.execute(text("DELETE FROM accounts WHERE name = 'reference-1'"))
            c.execute(text("UPDATE accounts SET name = 'renamed' WHERE name = 'reference-2'"))
            c.execute(text("INSERT INTO accounts (name) VALUES ('test row')"))
        assert names() == {"cash", "bank", "renamed", "test row"}
'''

CONTRACT_MODULE_LOCK = """
    import psycopg
    import pytest
    from sqlalchemy import text

    from conftest import APP_ENGINE, psycopg_kwargs


    @pytest.fixture(scope="module")
    def held_lock(test_database_url):
        \"\"\"An advisory lock a module fixture holds on a connection of its own: it stays.\"\"\"
        holder = psycopg.connect(autocommit=True, **psycopg_kwargs(test_database_url))
        holder.execute("SELECT pg_advisory_lock(7)")
        yield
        assert holder.execute("SELECT pg_advisory_unlock(7)").fetchone() == (True,)
        holder.close()


    @pytest.mark.parametrize("n", range(2))
    def test_a_test_lock_goes_a_module_lock_stays(n, held_lock):
        with APP_ENGINE.connect() as c:
            assert c.execute(text("SELECT pg_try_advisory_lock(7)")).scalar() is False
            assert c.execute(text("SELECT pg_try_advisory_lock(8)")).scalar() is True
"""

CONTRACT_ASYNC = """
    import asyncio
    import os

    import asyncpg
    from sqlalchemy import text
    from sqlalchemy.engine import make_url


    async def count(sessionmaker):
        async with sessionmaker() as session:
            return (await session.execute(text("SELECT count(*) FROM accounts"))).scalar()


    async def test_gather_over_sessions(async_db_sessionmaker):
        async def create(name):
            async with async_db_sessionmaker() as session, session.begin():
                await session.execute(text("INSERT INTO accounts (name) VALUES (:n)"), {"n": name})

        await asyncio.gather(*(create(f"gathered {i}") for i in range(3)))
        assert await count(async_db_sessionmaker) == 5


    async def test_background_task_commits(async_db_sessionmaker):
        done = asyncio.Event()

        async def audit_writer():
            async with async_db_sessionmaker() as session, session.begin():
                await session.execute(text("INSERT INTO accounts (name) VALUES ('background')"))
            done.set()

        task = asyncio.create_task(audit_writer())
        async with async_db_sessionmaker() as session, session.begin():
            await session.execute(text("INSERT INTO accounts (name) VALUES ('foreground')"))
        await done.wait()
        await task
        assert await count(async_db_sessionmaker) == 4


    async def test_raw_asyncpg_commits(test_database):
        url = make_url(str(test_database.url_string))
        connection = await asyncpg.connect(host=url.host, port=url.port, user=url.username,
                                           password=url.password, database=url.database)
        try:
            await connection.execute("INSERT INTO accounts (name) VALUES ('asyncpg')")
        finally:
            await connection.close()


    async def test_async_session_commits(async_db_session):
        await async_db_session.execute(text("INSERT INTO accounts (name) VALUES ('async')"))
        await async_db_session.commit()
"""

CONTRACT_SETTINGS = """
    from sqlalchemy import text

    from conftest import APP_ENGINE


    def test_alter_database_set_is_undone(test_database):
        with APP_ENGINE.connect() as c:
            c.execute(text(f'ALTER DATABASE "{test_database.name}" SET work_mem = \\'7MB\\''))
            c.commit()


    def test_the_next_connection_has_the_default_again():
        pass  # the conftest's check opens a new connection
"""


def contract_project(
    make_project: Callable[..., Project], server: URL, monkeypatch: pytest.MonkeyPatch
) -> Project:
    project = make_project(server)
    monkeypatch.setenv("TESTDB_EXPORT_URL_AS", "DATABASE_URL")
    (project.pytester.path / "migrations" / "versions" / "0004_contract.py").write_text(
        textwrap.dedent(CONTRACT_REVISION)
    )
    project.write(
        **{"conftest.py": CONTRACT_CONFTEST},
        test_contract_sync=CONTRACT_SYNC,
        test_contract_module_fixture=CONTRACT_MODULE_FIXTURE,
        test_contract_module_lock=CONTRACT_MODULE_LOCK,
        test_contract_async=CONTRACT_ASYNC,
        test_contract_settings=CONTRACT_SETTINGS,
    )
    return project


#: 11 sync + 4 module-fixture + 2 module-lock + 4 async + 2 settings tests.
CONTRACT_TESTS = 23


@pytest.mark.parametrize("server_kind", ["trust", "scram"])
def test_every_clause_of_the_contract_serially(
    make_project: Callable[..., Project],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    server_kind: str,
) -> None:
    server = request.getfixturevalue(f"{server_kind}_server")
    project = contract_project(make_project, server, monkeypatch)

    result = project.run("-p", "no:randomly", subprocess=True)

    result.assert_outcomes(passed=CONTRACT_TESTS)
    undone = [line for line in result.outlines if line.startswith("testdb: undid what")]
    assert len(undone) == 1, result.outlines
    # Three tests need a new clone: the two that run DDL and the ALTER DATABASE one.
    assert re.search(r"; 3 by a new clone \(DDL or database settings\)$", undone[0])
    assert_no_password(result)


def test_every_clause_of_the_contract_with_two_workers(
    make_project: Callable[..., Project], scram_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = contract_project(make_project, scram_server, monkeypatch)

    result = project.run("-n", "2", "-p", "no:randomly", subprocess=True)

    result.assert_outcomes(passed=CONTRACT_TESTS)
    assert_no_password(result)


PREPARED = """
    import psycopg
    import pytest
    from sqlalchemy import text
    from sqlalchemy.engine import make_url


    def prepare(url, gid):
        url = make_url(str(url))
        with psycopg.connect(host=url.host, port=url.port, user=url.username,
                             password=url.password, dbname=url.database, autocommit=True) as c:
            c.execute("BEGIN")
            c.execute("INSERT INTO accounts (name) VALUES ('in doubt')")
            c.execute(f"PREPARE TRANSACTION '{url.database} {gid}'")  # unique on the server


    @pytest.fixture(scope="session")
    def leaves_one_at_session_end(test_database_url):
        yield
        prepare(test_database_url, "from a session fixture")


    def test_leaves_a_prepared_transaction(test_database_url, leaves_one_at_session_end):
        prepare(test_database_url, "from a test")


    def test_the_next_test_finds_it_rolled_back(db_session):
        assert db_session.execute(text("SELECT count(*) FROM pg_prepared_xacts")).scalar() == 0
        assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2


    def test_no_pool_listener_was_installed_in_a_run_that_ended_no_session():
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        from finreport_testdb.core import reconnect

        assert not event.contains(Pool, "connect", reconnect._on_connect)
"""


def test_prepared_transactions_are_rolled_back_after_the_test_and_at_teardown(
    make_project: Callable[..., Project], scram_server: URL
) -> None:
    """Trust round 4, item 2: a test (or a fixture's teardown) that leaves PREPARE TRANSACTION
    behind no longer pins the worker database: the restore after the test rolls it back, and so
    does the drop at session end; nothing is left on the server. (The scram server allows
    prepared transactions; the machine's trust server does not.) A run that ends no session of
    the app installs no process-wide pool listener (issue 19)."""
    project = make_project(scram_server)
    project.write(test_prepared=PREPARED)

    result = project.run(
        "-p", "no:randomly", subprocess=True
    )  # a process of its own: see last test

    result.assert_outcomes(passed=3)
    assert project.databases() == project.templates()
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(scram_server, database="postgres")
    ) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_prepared_xacts WHERE starts_with(database, %s)",
            (project.base,),
        ).fetchone()
    assert left == (0,)


AUDIT_REVISION = '''
    """an audit trigger on accounts, and a trigger the schema keeps disabled"""
    from alembic import op

    revision = "0003"
    down_revision = "0002"


    def upgrade():
        op.execute("""
            CREATE TABLE audit (id serial PRIMARY KEY, what text NOT NULL);
            CREATE FUNCTION audit_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO audit (what) VALUES (TG_OP);
                RETURN NULL;
            END $$;
            CREATE TRIGGER audit_accounts AFTER INSERT OR UPDATE OR DELETE ON accounts
                FOR EACH ROW EXECUTE FUNCTION audit_accounts();
            CREATE TRIGGER never_on AFTER INSERT ON entries
                FOR EACH ROW EXECUTE FUNCTION audit_accounts();
            ALTER TABLE entries DISABLE TRIGGER never_on;
        """)


    def downgrade():
        pass
'''


@pytest.fixture
def createdb_role(server: URL, base_name: str) -> Iterator[URL]:
    """A role that may create databases and nothing more (no superuser, no SET on
    session_replication_role): the usual shared CI server."""
    role, password = f"{base_name}_app", "app-secret"
    with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(server)) as su:
        su.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        yield server.set(username=role, password=password)
    finally:
        drop_databases_with_prefix(server, base_name)
        with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(server)) as su:
            su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_without_superuser_undoes_in_place_with_its_triggers_off(
    createdb_role: URL, base_name: str, tiny_project: Path
) -> None:
    """Without session_replication_role the touched tables and the tables whose foreign keys
    reach them are truncated and refilled, parents first, with their user triggers off: no new
    clone, the audit trigger writes nothing, and a trigger the schema disabled stays disabled."""
    versions = tiny_project / "migrations" / "versions"
    (versions / "0003_audit.py").write_text(textwrap.dedent(AUDIT_REVISION))
    settings = resolve_settings(
        {"url": render_for_driver(createdb_role.set(database=base_name))},
        cwd=tiny_project,
        environ={},
    )
    with ProjectDatabases.from_settings(settings) as databases:
        databases.ensure_template()
        clone = databases.clone_for_worker("gw0", track=True)
        kwargs = psycopg_connect_kwargs(createdb_role, database=clone.name)
        with psycopg.connect(autocommit=True, **kwargs) as c:
            c.execute("INSERT INTO accounts (name) VALUES ('new')")
            c.execute("INSERT INTO entries (account_id, amount) VALUES (2, 10)")
            c.execute("UPDATE accounts SET name = 'renamed' WHERE name = 'cash'")

        assert databases.restore_worker("gw0") == "restored"  # in place: no new clone

        with psycopg.connect(autocommit=True, **kwargs) as c:
            assert c.execute("SELECT name FROM accounts ORDER BY id").fetchall() == [
                ("cash",),
                ("bank",),
            ]
            assert c.execute("SELECT count(*) FROM entries").fetchone() == (0,)
            assert c.execute("SELECT count(*) FROM audit").fetchone() == (0,)
            states = dict(
                c.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal")
            )
            assert states["audit_accounts"] == "O" and states["never_on"] == "D"
            assert c.execute("SELECT nextval('accounts_id_seq')").fetchone() == (3,)
