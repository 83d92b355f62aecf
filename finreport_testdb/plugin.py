"""The pytest plugin: options, the template step in the xdist controller, reporting.

Registered through the `pytest11` entry point, so installing the package is enough. It translates
options into settings and calls `ProjectDatabases`; the fixtures live in `fixtures.py`. The
controller (or the single process of a serial run) prepares the template before workers start, so
it is built once per run; each worker then clones its own database when a fixture first needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Generator
from typing import Any, NoReturn

import pytest

from . import export, pool_reset
from .errors import FinreportTestdbError, MigrationError
from .manager import ProjectDatabases
from .names import SERIAL_WORKER, validate_worker_id
from .plugin_state import (
    DEFAULT_ISOLATION,
    EMBEDDED_OUTPUT_KEY,
    EXPORTED_KEY,
    FRESH_DATABASES,
    FRESH_KEPT_PROPERTY,
    HOLDER_KEY,
    ISOLATIONS,
    PARENT_VAR,
    PHASE_REPORTS,
    PROBLEMS_OUTPUT_KEY,
    RUN_PID_KEY,
    SETTINGS_KEY,
    TEMPLATE_KEY,
    WORKERINPUT_KEY,
    WORKEROUTPUT_KEY,
    controller_state,
    is_worker,
    opted_in_despite_error,
    rebuild_requested,
    resolve,
    run_label,
    settings_from_config,
    user_environ,
)
from .report_masking import masked_comparison
from .settings import Settings
from .urls import render_for_humans

MARKER_HELP = (
    'testdb(isolation="rollback"|"fresh"): how this test\'s database is isolated. rollback: '
    "work through the db_* fixtures is rolled back (a SAVEPOINT inside an outer transaction). "
    "fresh: the worker database is pristine at the start and the test may commit through any "
    "engine, the app's own included."
)
pytest_plugins = ["finreport_testdb.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testdb", "finreport-testdb: a cloned PostgreSQL database per worker")
    group.addoption(
        "--testdb-url", metavar="URL", help="Server and base database (beats TESTDB_URL)."
    )
    group.addoption(
        "--testdb-namespace", metavar="NS", help="Namespace for worker databases, or 'auto'."
    )
    group.addoption(
        "--testdb-reuse",
        action="store_true",
        default=None,
        help="Keep worker databases and reuse them next run while the fingerprint matches.",
    )
    group.addoption(
        "--testdb-keep",
        action="store_true",
        default=None,
        help="Keep worker databases after the run.",
    )
    group.addoption(
        "--testdb-rebuild", action="store_true", default=False, help="Build a new template first."
    )
    group.addoption(
        "--testdb-full",
        action="store_true",
        default=False,
        help="Build a missing template from empty (no extend, no restore from the dump cache).",
    )
    group.addoption(
        "--testdb-cache-dir",
        metavar="DIR",
        help="Dump cache to restore templates from and save them to (beats TESTDB_DUMP_CACHE_DIR).",
    )
    group.addoption(
        "--testdb-no-drift-check",
        action="store_true",
        default=None,
        help="Do not compare the built template with the models (the metadata setting).",
    )
    group.addoption(
        "--testdb-export-url-as",
        metavar="VARS",
        help="Comma-separated environment variables set to the current test database's URL "
        "(e.g. DATABASE_URL), before conftest.py and test modules are imported.",
    )
    group.addoption(
        "--testdb-pool-size",
        metavar="N",
        help="Ready clones each worker keeps for fresh tests (default 2; 0: no pool).",
    )
    parser.addini(
        "testdb_isolation",
        help="Default isolation for tests without a testdb marker: rollback (default) or fresh.",
        default=DEFAULT_ISOLATION,
    )


def is_configured(settings: Settings) -> bool:
    """Prepare the template eagerly only in projects that opted in (a `[tool.testdb]` table, a
    TESTDB_* settings variable or a --testdb-* option); the fixtures work regardless. A
    `DATABASE_URL` alone never opts in."""
    return settings.opted_in


def _early_worker_id() -> str:
    """The xdist worker id before `config.workerinput` exists: xdist sets PYTEST_XDIST_WORKER
    before it configures a worker; it counts only in a direct child of the process that set
    PARENT_VAR (a serial pytest run inside another run's worker inherits the variable too)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        parent_pid = json.loads(os.environ.get(PARENT_VAR, "{}")).get("pid")
    except (ValueError, AttributeError):
        parent_pid = None
    if worker and parent_pid == os.getppid():
        try:
            return validate_worker_id(worker)
        except FinreportTestdbError:
            return SERIAL_WORKER
    return SERIAL_WORKER


def _export_for(config: pytest.Config, settings: Settings, worker_id: str) -> None:
    """Point the `export_url_as` variables at `worker_id`'s database (the URL is known without
    connecting; the embedded server is started if it is the server)."""
    previous = config.stash.get(EXPORTED_KEY, None)
    if previous is not None and previous["worker"] == worker_id:
        return
    databases = ProjectDatabases.from_settings(settings)
    if databases.embedded_action is not None:
        controller_state(config).embedded_action = databases.embedded_action
    user = user_environ()  # before our export: what the user set, even in an xdist worker
    saved = export.export(settings.export_url_as, databases.worker_url(worker_id))
    if previous is not None:
        saved = previous["saved"]  # what this process had before its first export
    else:
        saved[PARENT_VAR] = os.environ.get(PARENT_VAR)
    config.stash[EXPORTED_KEY] = {"worker": worker_id, "saved": saved}
    user_values = {name: user.get(name) for name in settings.export_url_as}
    os.environ[PARENT_VAR] = json.dumps({"pid": os.getpid(), "saved": user_values})


def _in_xdist_worker_setup() -> bool:
    """True while an xdist worker parses its configuration (before `config.workerinput` exists):
    xdist runs the worker's start-up code through execnet, as module `__channelexec__`."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_globals.get("__name__") == "__channelexec__":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Export the URL before any conftest.py or test module is imported (an app may build its
    engine from DATABASE_URL at import time). A settings problem in a project that opted in stops
    the run here, with the session start's one line: past this point conftest.py would import the
    app with the shell's DATABASE_URL (a developer's database) or none. A project that has not
    opted in is never stopped; an xdist worker (whose controller already passed this point) leaves
    the problem to its fixtures; `--help` and `--version` still work."""
    namespace = early_config.known_args_namespace
    listing_only = any(
        getattr(namespace, flag, False)
        for flag in ("collectonly", "showfixtures", "show_fixtures_per_test")
    )
    settings: Settings | None = None
    try:
        settings = resolve(early_config, namespace)
        early_config.stash[SETTINGS_KEY] = settings
        # A session that runs no test starts no server just to know the URL to export.
        if listing_only and settings.url is None:
            return
        if settings.opted_in and settings.export_url_as:
            _export_for(early_config, settings, _early_worker_id())
    except FinreportTestdbError as exc:
        if getattr(namespace, "help", False) or getattr(namespace, "version", False):
            return
        if _in_xdist_worker_setup():
            return
        opted_in = (
            settings.opted_in
            if settings is not None
            else opted_in_despite_error(early_config, namespace)
        )
        if opted_in:
            _fail_session(exc)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    pool_reset.install()
    default = str(config.getini("testdb_isolation")).strip()
    if default not in ISOLATIONS:
        raise pytest.UsageError(
            f"testdb: testdb_isolation = {default!r} in the pytest ini options is not an "
            f"isolation: use {' or '.join(ISOLATIONS)}"
        )
    workerinput = getattr(config, "workerinput", None)
    exported = config.stash.get(EXPORTED_KEY, None)
    if exported is not None and workerinput is not None:
        # The early guess came from the environment; xdist's own worker id is authoritative.
        with contextlib.suppress(FinreportTestdbError):
            _export_for(config, settings_from_config(config), str(workerinput["workerid"]))


def pytest_unconfigure(config: pytest.Config) -> None:
    exported = config.stash.get(EXPORTED_KEY, None)
    if exported is not None:
        export.restore(exported["saved"])
        del config.stash[EXPORTED_KEY]
    holder = config.stash.get(HOLDER_KEY, None)
    if holder is not None:
        try:
            holder.close()  # ends the template hold
        except FinreportTestdbError as exc:  # after the summary: one line of its own
            sys.stderr.write(f"testdb: {exc}\n")


@pytest.hookimpl(tryfirst=True)
def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any) -> Any:
    """A failed comparison that involves a database URL shows both operands with the password
    masked and no text diff (report_masking.py)."""
    return masked_comparison(config, op, left, right)


def _runs_tests(config: pytest.Config) -> bool:
    """False for `--collect-only`, `--fixtures` and `--fixtures-per-test`: those sessions run no
    test, so they must not build a template (or start the embedded server)."""
    option = config.option
    return not (
        getattr(option, "collectonly", False)
        or getattr(option, "showfixtures", False)
        or getattr(option, "show_fixtures_per_test", False)
    )


def _fail_session(exc: FinreportTestdbError) -> NoReturn:
    """Stop before any test runs with one line, `ERROR: testdb: <problem>; <fix>` (pytest's usage
    error: exit status 4), after the migration's traceback when a migration failed."""
    if isinstance(exc, MigrationError) and exc.details:
        sys.stderr.write(exc.details.rstrip() + "\n")
    raise pytest.UsageError(f"testdb: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if is_worker(config) or not _runs_tests(config):
        return
    try:
        settings = settings_from_config(config)
    except FinreportTestdbError as exc:
        # An opted-in project normally stopped earlier, in pytest_load_initial_conftests. One
        # that did not opt in is never stopped: its fixtures report the problem when used.
        if rebuild_requested(config) or opted_in_despite_error(config, config.option):
            _fail_session(exc)
        return
    try:
        rebuild = rebuild_requested(config)
        if not (rebuild or is_configured(settings)):
            return
        state = controller_state(config)
        # Kept open for the session: its admin session holds the template against `clean`.
        databases = config.stash[HOLDER_KEY] = ProjectDatabases.from_settings(settings)
        databases.application_name = run_label(config)  # who holds the server, for `server stop`
        if databases.embedded_action not in (None, "running"):
            state.embedded_action = databases.embedded_action
        state.server = render_for_humans(databases.server_url)
        databases.hold_template()
        state.template = databases.ensure_template(
            rebuild=rebuild, full=bool(config.getoption("testdb_full", False))
        )
        config.stash[TEMPLATE_KEY] = state.template
    except FinreportTestdbError as exc:
        _fail_session(exc)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = controller_state(config)
    if state.template is None:
        return []
    t = state.template
    waited = (
        f", {t.waited_seconds:.2f} s waiting for another build" if t.waited_seconds >= 0.1 else ""
    )
    lines = [
        f"testdb: template {t.name} (fingerprint {t.fingerprint[:12]}) {t.describe()} in "
        f"{t.seconds:.2f} s{waited} on {state.server}",
        *(f"testdb: {note}" for note in t.notes),
    ]
    if state.embedded_action not in (None, "running"):
        lines.append(
            "testdb: started the embedded PostgreSQL server for this run; it keeps running for "
            "the next one: stop it with `testdb server stop`"
        )
    isolation = str(config.getini("testdb_isolation")).strip()
    lines.append(
        f"testdb: default isolation {isolation} (testdb_isolation ini option; per test: "
        '@pytest.mark.testdb(isolation="fresh"))'
    )
    exported = settings_from_config(config).export_url_as
    if exported:
        lines.append(f"testdb: exporting the test database URL as {', '.join(exported)}")
    return lines


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's template to each worker so no worker rebuilds it."""
    node.workerinput[RUN_PID_KEY] = os.getpid()
    template = controller_state(node.config).template
    if template is not None:
        node.workerinput[WORKERINPUT_KEY] = {
            "name": template.name,
            "fingerprint": template.fingerprint,
        }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: collect each worker's clone report for the terminal summary."""
    output = getattr(node, "workeroutput", {})
    report = output.get(WORKEROUTPUT_KEY)
    if report:
        controller_state(node.config).workers[report["worker"]] = report
    if output.get(EMBEDDED_OUTPUT_KEY):
        controller_state(node.config).embedded_by_fixture = True
    controller_state(node.config).problems.extend(output.get(PROBLEMS_OUTPUT_KEY, []))


#: How the summary describes what happens to worker databases at session end.
DISPOSITIONS = {
    "dropped": "dropped at session end",
    "kept": "kept after the run (--testdb-keep)",
    "reused": "kept for the next run (--testdb-reuse)",
}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = controller_state(config)
    if state.embedded_by_fixture:
        terminalreporter.write_line(
            "testdb: started the embedded PostgreSQL server (no URL configured); it keeps running "
            "for the next run: stop it with `testdb server stop`"
        )
    if state.workers:
        reports = sorted(state.workers.items(), key=lambda item: _worker_order(item[0]))
        parts = [
            f"{w} {'reused' if r['reused'] else 'cloned'} {r['name']} in "
            f"{r['seconds'] * 1000:.0f} ms"
            for w, r in reports
        ]
        # What actually happened at session end: the intended disposition of those that went
        # as planned, and one line per reason for those that did not (the server went away...).
        dispositions = sorted(
            {r.get("disposition", "dropped") for _, r in reports if not r.get("problem")}
        )
        what = "".join(f"; {DISPOSITIONS.get(d, d)}" for d in dispositions)
        terminalreporter.write_line(f"testdb: {', '.join(parts)}{what}")
        failed: dict[str, list[str]] = {}
        for _, r in reports:
            if r.get("problem"):
                failed.setdefault(r["problem"], []).append(r["name"])
        for problem, names in failed.items():
            terminalreporter.write_line(
                f"testdb: {', '.join(names)} {problem}; run `testdb clean` to remove "
                f"{'it' if len(names) == 1 else 'them'} later"
            )
    for problem in dict.fromkeys(state.problems):  # once each, however many workers met it
        terminalreporter.write_line(f"testdb: {problem}")
    kept = _kept_fresh_databases(terminalreporter.stats)
    if kept:
        terminalreporter.write_line(
            f"testdb: kept {len(kept)} fresh database(s) of failed tests for inspection: "
            f"{', '.join(kept)} (remove with `testdb clean`)"
        )


def _kept_fresh_databases(stats: dict[str, list[Any]]) -> list[str]:
    """Names the fresh-database fixture kept, read from the teardown reports (which xdist ships
    from the workers to the controller together with their `user_properties`)."""
    kept: list[str] = []
    for reports in stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == FRESH_KEPT_PROPERTY and str(value) not in kept:
                    kept.append(str(value))
    return kept


def _worker_order(worker: str) -> tuple[int, str]:
    """gw2 before gw10; `master` (a serial run) first."""
    digits = worker[2:] if worker.startswith("gw") else ""
    return (int(digits) if digits.isdigit() else -1, worker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Remember each phase's report on the item, so `fresh_database` knows whether to keep."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    fresh = item.stash.get(FRESH_DATABASES, None)
    if fresh and report.when in ("setup", "call") and report.failed:
        for database in fresh:
            report.sections.append(
                ("testdb", f"fresh database kept for inspection: {render_for_humans(database.url)}")
            )
