"""The plugin's fixtures, composed from session-scoped pieces a conftest.py may override
(`testdb_settings`, `testdb_worker_id`, `testdb_databases`, `testdb_template`). Every database
operation is a `ProjectDatabases` call.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from ..core.clones import ClonedDatabase
from ..core.names import SERIAL_WORKER
from ..core.settings import Settings
from ..core.template import TemplateResult
from ..core.urls import SecretUrl, unless_session_ended
from ..databases import ProjectDatabases
from ..errors import FinreportTestdbError
from .state import (
    FRESH_DATABASES,
    FRESH_KEPT_PROPERTY,
    PHASE_REPORTS,
    SERVER_URLS_KEY,
    TEMPLATE_INPUT,
    isolation_of,
    one_line,
    run_label,
    run_state,
    settings_from_config,
    worker_id,
)


@pytest.fixture(scope="session")
def testdb_settings(pytestconfig: pytest.Config) -> Settings:
    """Resolved settings: pytest options → environment → [tool.testdb] → defaults."""
    with one_line():
        return settings_from_config(pytestconfig)


@pytest.fixture(scope="session")
def testdb_worker_id(pytestconfig: pytest.Config) -> str:
    """`gw0`, `gw1`, ... under pytest-xdist; `master` in a serial run."""
    return worker_id(pytestconfig) or SERIAL_WORKER


@pytest.fixture(scope="session")
def testdb_databases(
    pytestconfig: pytest.Config, testdb_settings: Settings
) -> Iterator[ProjectDatabases]:
    """The core API object for this run (starts the embedded server when no URL is configured)."""
    with one_line():
        databases = ProjectDatabases.from_settings(testdb_settings)
    # The summary says the server was started; its generated password is masked in reports.
    if databases.embedded_action not in (None, "running"):
        run_state(pytestconfig).embedded_by_fixture = True
    pytestconfig.stash.setdefault(SERVER_URLS_KEY, []).append(databases.server_url)
    databases.application_name = run_label(pytestconfig)
    with databases:
        yield databases


@pytest.fixture(scope="session")
def testdb_template(
    pytestconfig: pytest.Config, testdb_databases: ProjectDatabases
) -> TemplateResult:
    """The ready template, prepared by the controller; built here only if it was not."""
    prepared = run_state(pytestconfig).template
    if prepared is not None:
        return prepared
    handed = getattr(pytestconfig, "workerinput", {}).get(TEMPLATE_INPUT)
    with one_line():
        if handed:
            testdb_databases.adopt_template(handed["name"], handed["fingerprint"])
            return TemplateResult(handed["name"], handed["fingerprint"], built=False, seconds=0.0)
        testdb_databases.hold_template()  # against `clean`, as the controller does
        return testdb_databases.ensure_template()


@pytest.fixture(scope="session")
def test_database(
    pytestconfig: pytest.Config,
    testdb_databases: ProjectDatabases,
    testdb_template: TemplateResult,
    testdb_worker_id: str,
    testdb_settings: Settings,
) -> Iterator[ClonedDatabase]:
    """This worker's own database (`<base>_gwN`; `<base>_serial` serially), cloned from the
    template: `.name`, `.url`, `.url_string`, `.sync_url`, `.async_url`. Dropped at session end
    unless --testdb-keep or --testdb-reuse."""
    reuse = testdb_settings.reuse and not pytestconfig.getoption("testdb_rebuild", False)
    with one_line():
        database = testdb_databases.clone_for_worker(testdb_worker_id, reuse=reuse, track=True)
    keep = "kept" if testdb_settings.keep else "dropped"
    disposition = "reused" if testdb_settings.reuse else keep
    report: dict[str, Any] = {
        "name": database.name,
        "seconds": database.seconds,
        "reused": database.reused,
        "disposition": disposition,
    }
    state = run_state(pytestconfig)
    state.workers[testdb_worker_id] = report
    state.database, state.databases, state.worker_id = database, testdb_databases, testdb_worker_id
    yield database
    state.database = None
    try:  # a failure is the summary's to report, not the last test's error
        if disposition == "dropped":
            testdb_databases.drop_database(database.name)
        elif disposition == "reused" and not state.pristine:
            # The next run must not find this run's session fixtures' commits in it.
            testdb_databases.reset_worker(testdb_worker_id)
    except FinreportTestdbError as exc:
        what = "dropped" if disposition == "dropped" else "reset for the next run"
        report["problem"] = f"could not be {what}: {exc}"


@pytest.fixture(scope="session")
def test_database_url(test_database: ClonedDatabase) -> SecretUrl:
    """The worker database's URL as a `str` whose `repr` masks the password: choose it to point
    your app's settings at the test database (`export_url_as` already did, by default)."""
    return test_database.url_string


@pytest.fixture(scope="session", autouse=True)
def _testdb_eager_clone(request: pytest.FixtureRequest) -> None:
    """Clone the worker database before the first test where the URL is exported: a test using
    only the app's own engine must find it, and have its commits undone."""
    try:
        settings = settings_from_config(request.config)
    except FinreportTestdbError:
        return
    if settings.opted_in and settings.export_url_as:
        request.getfixturevalue("test_database")


@pytest.fixture(autouse=True)
def testdb_isolation(request: pytest.FixtureRequest) -> Iterator[str]:
    """This test's isolation, `commit`, `rollback` or `fresh` (see `pytest --markers`):
    `@pytest.mark.testdb(isolation=...)`, else the `testdb_isolation` ini option."""
    with one_line():
        isolation = isolation_of(request.node)
    state = run_state(request.config)
    if isolation == "fresh":
        request.getfixturevalue("test_database")
    if state.database is not None:
        with one_line():
            if isolation == "fresh":
                started = time.monotonic()
                state.databases.reset_worker(state.worker_id)
                state.pristine = True
                request.node.user_properties.append(
                    ("testdb_fresh_reset_ms", (time.monotonic() - started) * 1000)
                )
            elif state.rebase_due and state.databases.rebase_worker(state.worker_id):
                state.pristine = False
        state.rebase_due = False
    yield isolation
    if state.database is None:  # no test has needed the database yet: nothing to undo
        return
    started = time.monotonic()
    with one_line():
        outcome = state.databases.restore_worker(state.worker_id)
    if outcome != "clean":
        ms = (time.monotonic() - started) * 1000
        state.undone_ms.append(ms)
        if outcome == "replaced":
            state.replaced += 1
            state.pristine = True
        request.node.user_properties += [("testdb_undo", outcome), ("testdb_undo_ms", round(ms, 3))]


@pytest.fixture
def db_bind(request: pytest.FixtureRequest, testdb_isolation: str) -> Connection | Engine:
    """What this test's sessions should bind to: `db_engine`, or `db_connection` under `rollback`.
    Wire it once in conftest (`Session(bind=db_bind)`) and the isolation decides the rest."""
    bind: Connection | Engine = request.getfixturevalue(
        "db_connection" if testdb_isolation == "rollback" else "db_engine"
    )
    return bind


@pytest.fixture(scope="session")
def db_engine(test_database: ClonedDatabase) -> Iterator[Engine]:
    """A session-scoped sync `Engine` on the worker database (sync even if the driver is async)."""
    engine = create_engine(test_database.sync_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_connection(db_engine: Engine) -> Iterator[Connection]:
    """A connection inside an outer transaction that is rolled back after the test."""
    with one_line(db_engine.url):
        connection = db_engine.connect()
    with connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                with unless_session_ended():
                    transaction.rollback()


@pytest.fixture
def db_session(db_bind: Connection | Engine) -> Iterator[Session]:
    """An ORM `Session` on `db_bind`: real commits (triggers and deferred constraints run as in
    production), undone after the test; under `rollback`, `commit()` releases a SAVEPOINT."""
    session = Session(bind=db_bind, join_transaction_mode="create_savepoint")
    try:
        with one_line(db_bind.engine.url):
            session.connection()  # now: a failure is one line, not driver frames in the test
        yield session
    finally:
        with unless_session_ended():
            session.close()


@pytest.fixture
def db_sessionmaker(db_bind: Connection | Engine) -> sessionmaker[Session]:
    """A session factory on `db_bind`, for apps that build their own sessions (FastAPI
    dependencies); under `rollback` they join the test's rolled-back transaction."""
    return sessionmaker(bind=db_bind, join_transaction_mode="create_savepoint")


_fresh_counter = itertools.count(1)


@pytest.fixture
def fresh_database(
    request: pytest.FixtureRequest,
    testdb_databases: ProjectDatabases,
    testdb_template: TemplateResult,
    testdb_worker_id: str,
) -> Iterator[ClonedDatabase]:
    """A new clone of the template for this test alone (`<base>_gwN_t<k>`): choose it for a second
    database, or the template's exact state whatever wider-scoped fixtures committed. Dropped
    after the test; kept when it fails, its URL (password masked) in the failure report."""
    started = time.monotonic()
    with one_line():
        database = testdb_databases.clone_for_test(testdb_worker_id, next(_fresh_counter))
    request.node.stash.setdefault(FRESH_DATABASES, []).append(database)
    request.node.user_properties.append(
        ("testdb_fresh_clone_ms", (time.monotonic() - started) * 1000)
    )
    yield database
    if any(report.failed for report in request.node.stash.get(PHASE_REPORTS, {}).values()):
        request.node.user_properties.append((FRESH_KEPT_PROPERTY, database.name))
        return
    with one_line():
        testdb_databases.drop_database(database.name)


# The async twins need pytest-asyncio and greenlet. Without them the names still exist, so a test
# asking for one learns the fix instead of pytest's "fixture not found".
_MISSING = " and ".join(
    m.replace("_", "-") for m in ("pytest_asyncio", "greenlet") if not importlib.util.find_spec(m)
)
pytest_plugins = [] if _MISSING else ["finreport_testdb.plugin.async_fixtures"]


def _needs_async_extra(name: str) -> Any:
    def fixture() -> None:
        raise pytest.fail.Exception(
            f"testdb: the {name} fixture needs the async extra ({_MISSING} not installed): "
            "pip install 'finreport-testdb[async]'",
            pytrace=False,
        )

    fixture.__doc__ = f"Not available: needs pip install 'finreport-testdb[async]' ({_MISSING})."
    return pytest.fixture(name=name)(fixture)


if _MISSING:
    for _name in ("bind", "connection", "engine", "session", "sessionmaker"):
        globals()[f"_missing_async_db_{_name}"] = _needs_async_extra(f"async_db_{_name}")
