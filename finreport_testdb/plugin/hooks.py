"""The pytest plugin (the `pytest11` entry point): options, the URL exported before any
conftest.py, and the template, prepared once per run by the xdist controller (or a serial run's
process) before workers start. See docs/architecture.md, "Worker identity and the export".
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, NoReturn

import pytest
from sqlalchemy.engine import URL

from ..core import export
from ..core.names import SERIAL_WORKER, validate_worker_id
from ..core.settings import FALLBACK_URL_VAR, SETTINGS, Settings
from ..core.urls import render_for_driver, render_for_humans
from ..databases import ProjectDatabases
from ..errors import FinreportTestdbError, MigrationError
from .state import (
    DEFAULT_ISOLATION,
    ENVIRON_KEY,
    ISOLATIONS,
    RUN_PID_INPUT,
    SETTINGS_KEY,
    TEMPLATE_INPUT,
    opted_in_despite_error,
    run_label,
    run_state,
    settings_from_config,
    worker_id,
)

HOLDER_KEY = pytest.StashKey[ProjectDatabases]()
EXPORTED_KEY = pytest.StashKey[str]()  # whose database the exported variables name
SAVED_KEY = pytest.StashKey[dict[str, "str | None"]]()  # what they were before
MARKER_HELP = (
    'testdb(isolation="commit"|"rollback"|"fresh"): how this test\'s database is isolated. '
    "commit (default): real commits through any engine, undone after the test. rollback: work "
    "through the db_* fixtures is rolled back (a SAVEPOINT inside an outer transaction). fresh: "
    "the worker database is replaced by a new clone of the template before the test."
)
pytest_plugins = ["finreport_testdb.plugin.fixtures", "finreport_testdb.plugin.reporting"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testdb", "finreport-testdb: a cloned PostgreSQL database per worker")
    for s in SETTINGS:
        kind = {"action": "store_true"} if s.kind == "bool" else {"metavar": s.metavar}
        if s.pytest:
            group.addoption(s.flag("testdb-"), help=s.help, **kind)
    group.addoption("--testdb-rebuild", action="store_true", help="Build a new template first.")
    group.addoption(
        "--testdb-full",
        action="store_true",
        help="Build a missing template from empty (no extend, no restore from the dump cache).",
    )
    parser.addini(
        "testdb_isolation",
        help="Default isolation for tests without a testdb marker: commit (default), rollback or "
        "fresh.",
        default=DEFAULT_ISOLATION,
    )


#: The user's DATABASE_URL ("" for none), from an xdist controller to its workers.
USER_DATABASE_URL_VAR = "_TESTDB_USER_DATABASE_URL"


def early_worker_id(config: pytest.Config) -> str | None:
    """This process's xdist worker id (None: not a worker) before `config.workerinput` exists; it
    also keeps the user's environment for the settings."""
    handed = os.environ.pop(USER_DATABASE_URL_VAR, None)
    environ = config.stash[ENVIRON_KEY] = dict(os.environ)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if handed is None:
        return None
    environ[FALLBACK_URL_VAR] = handed  # the only exported variable settings read
    try:
        return validate_worker_id(worker) if worker else None
    except FinreportTestdbError:
        return None


#: The xdist controller runs no test: it exports its template build's database (`<base>_bld_...`),
#: so an app whose settings are cached at import hands env.py that database.
CONTROLLER = "controller"


def _xdist_distributes(option: Any) -> bool:
    """Whether pytest-xdist starts workers, read from its options (`-n`, `--tx`, `--dist`) as its
    `pytest_cmdline_main` does, before any conftest.py is imported; False without xdist."""
    if getattr(option, "collectonly", False):
        return False  # xdist collects in-process
    workers = getattr(option, "numprocesses", None)
    if workers in ("auto", "logical"):
        return not getattr(option, "usepdb", False)  # xdist turns `-n auto --pdb` into -n 0
    if workers is not None:
        return bool(workers)  # -n 0: no workers
    dist = "load" if getattr(option, "distload", False) else getattr(option, "dist", "no")
    return dist != "no" and bool(getattr(option, "tx", None))


def runs_tests(option: Any) -> bool:
    """False for `--collect-only`, `--fixtures` and `--fixtures-per-test`, which must not build a
    template or start the embedded server."""
    return not any(
        getattr(option, name, False)
        for name in ("collectonly", "showfixtures", "show_fixtures_per_test")
    )


def _setenv(config: pytest.Config, names: tuple[str, ...], value: URL | str) -> None:
    """Set the variables until `config` ends (`add_cleanup`: also after a failure before
    pytest_configure, and for a config never configured, as pytester's `parseconfig`)."""
    if SAVED_KEY not in config.stash:
        saved = config.stash[SAVED_KEY] = {}
        config.add_cleanup(lambda: export.restore(saved))
    for name in names:
        config.stash[SAVED_KEY].setdefault(name, os.environ.get(name))  # the first: the user's
        os.environ[name] = value if isinstance(value, str) else render_for_driver(value)


def _hold(config: pytest.Config, databases: ProjectDatabases) -> ProjectDatabases:
    """Keep `databases` (whose session holds the template against `clean`) open until the end."""
    if config.stash.get(HOLDER_KEY, None) is None:
        config.stash[HOLDER_KEY] = databases

        def close() -> None:
            try:
                databases.close()
            except FinreportTestdbError as exc:  # after the summary: one line of its own
                sys.stderr.write(f"testdb: {exc}\n")

        config.add_cleanup(close)
    return config.stash[HOLDER_KEY]


def _export_for(config: pytest.Config, settings: Settings, option: Any, worker: str | None) -> None:
    """Point the `export_url_as` variables at the database of this process's role: its `worker` id
    (`master`: a serial run) or `CONTROLLER`. In a session that runs no test the embedded
    server's URL is read from its cache dir."""
    distributes = runs_tests(option) and _xdist_distributes(option)
    role = worker or (CONTROLLER if distributes else SERIAL_WORKER)
    if config.stash.get(EXPORTED_KEY, None) == role:
        return
    databases = config.stash.get(HOLDER_KEY, None)
    if databases is None:
        databases = ProjectDatabases.from_settings(settings, start=runs_tests(option))
    if databases.embedded_action is not None:
        run_state(config).embedded_action = databases.embedded_action
    if role == CONTROLLER:
        # The fingerprint imports the revision files and seed functions: meanwhile export a
        # database nobody creates, never the user's. The session start reuses `databases`.
        _setenv(config, settings.export_url_as, databases.worker_url(SERIAL_WORKER))
        url = databases.url_for(databases.naming.scratch(databases.fingerprint))
        _hold(config, databases)
    else:
        url = databases.worker_url(role)
    _setenv(config, settings.export_url_as, url)
    config.stash[EXPORTED_KEY] = role


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Export the URL before any conftest.py is imported. A settings problem stops an opted-in
    project's run here: past this point conftest.py would import the app with the shell's
    DATABASE_URL. Not stopped: a project not opted in, an xdist worker (its fixtures report it),
    `--help`, `--version`. A session that runs no test exports too, but starts no server."""
    namespace = early_config.known_args_namespace
    worker = early_worker_id(early_config)
    settings: Settings | None = None
    try:
        settings = settings_from_config(early_config, namespace)
        if settings.opted_in and settings.export_url_as:
            _export_for(early_config, settings, namespace, worker)
    except FinreportTestdbError as exc:
        if worker or getattr(namespace, "help", False) or getattr(namespace, "version", False):
            return
        if settings.opted_in if settings else opted_in_despite_error(early_config, namespace):
            _fail_session(exc)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    default = str(config.getini("testdb_isolation")).strip()
    if default not in ISOLATIONS:
        raise pytest.UsageError(
            f"testdb: testdb_isolation = {default!r} in the pytest ini options is not an "
            "isolation: use commit, rollback or fresh"
        )
    if config.stash.get(EXPORTED_KEY, None) is not None and runs_tests(config.option):
        # The early guess came from the environment; now xdist's own state decides.
        with contextlib.suppress(FinreportTestdbError):
            _export_for(config, settings_from_config(config), config.option, worker_id(config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: Any) -> None:
    """xdist, before starting workers: hand them the user's DATABASE_URL, which the export
    replaced, and with it their identity as this run's workers."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is not None and settings.opted_in:
        user = config.stash.get(ENVIRON_KEY, {}).get(FALLBACK_URL_VAR, "")
        _setenv(config, (USER_DATABASE_URL_VAR,), user)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's template to each worker so no worker rebuilds it."""
    node.workerinput[RUN_PID_INPUT] = os.getpid()
    t = run_state(node.config).template
    if t is not None:
        node.workerinput[TEMPLATE_INPUT] = {"name": t.name, "fingerprint": t.fingerprint}


def _fail_session(exc: FinreportTestdbError) -> NoReturn:
    """Stop before any test runs with one line, `ERROR: testdb: <problem>; <fix>` (pytest's usage
    error: exit status 4), after the migration's traceback when a migration failed."""
    if isinstance(exc, MigrationError) and exc.details:
        sys.stderr.write(exc.details.rstrip() + "\n")
    raise pytest.UsageError(f"testdb: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if worker_id(config) or not runs_tests(config.option):
        return
    rebuild = bool(config.getoption("testdb_rebuild", False))
    try:
        settings = settings_from_config(config)
    except FinreportTestdbError as exc:
        # An opted-in project normally stopped earlier; others' fixtures report it when used.
        if opted_in_despite_error(config, config.option):  # --testdb-rebuild included
            _fail_session(exc)
        return
    if not (rebuild or settings.opted_in):
        return
    try:
        report = run_state(config)
        databases = config.stash.get(HOLDER_KEY, None)  # an xdist controller's `_export_for`
        databases = databases or _hold(config, ProjectDatabases.from_settings(settings))
        databases.application_name = run_label(config)  # who holds the server, for `server stop`
        if databases.embedded_action not in (None, "running"):
            report.embedded_action = databases.embedded_action
        report.server = render_for_humans(databases.server_url)
        databases.hold_template()
        full = bool(config.getoption("testdb_full", False))
        report.template = databases.ensure_template(rebuild=rebuild, full=full)
    except FinreportTestdbError as exc:
        _fail_session(exc)


@pytest.hookimpl(trylast=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    """What a wider-scoped fixture commits in its setup (or teardown, after the last test that
    used it) stays for the tests that follow: the next test rebases on it."""
    if fixturedef.scope in ("session", "package", "module", "class"):
        run_state(request.config).rebase_due = True


pytest_fixture_post_finalizer = pytest_fixture_setup
