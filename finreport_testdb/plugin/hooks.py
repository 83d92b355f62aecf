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
from sqlalchemy.engine import URL

from ..core import export
from ..core.names import SERIAL_WORKER, validate_worker_id
from ..core.settings import SOURCE_DEFAULT, Settings
from ..core.urls import render_for_humans
from ..databases import ProjectDatabases
from ..errors import FinreportTestdbError, MigrationError
from .report_masking import masked_comparison, redact_report
from .state import (
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
    UNDO_OUTPUT_KEY,
    WORKERINPUT_KEY,
    WORKEROUTPUT_KEY,
    controller_state,
    is_worker,
    one_of,
    opted_in_despite_error,
    rebuild_requested,
    resolve,
    run_label,
    settings_from_config,
    user_environ,
    worker_state,
)

MARKER_HELP = (
    'testdb(isolation="commit"|"rollback"|"fresh"): how this test\'s database is isolated. '
    "commit (default): real commits through any engine, undone after the test. rollback: work "
    "through the db_* fixtures is rolled back (a SAVEPOINT inside an outer transaction). fresh: "
    "the worker database is replaced by a new clone of the template before the test."
)
pytest_plugins = ["finreport_testdb.plugin.fixtures"]


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


#: What `_export_for` exports in the controller of an xdist run, which runs no test: the URL of
#: the database its template build migrates (`<base>_bld_<fp12>`), so that an app whose settings
#: are cached when conftest.py imports it hands env.py that database, not one nobody creates.
CONTROLLER = "controller"


def _xdist_distributes(option: Any) -> bool:
    """Whether pytest-xdist starts workers for this session, read from its parsed options (`-n`,
    `--tx`, `--dist`) as its own `pytest_cmdline_main` reads them; known before any conftest.py
    is imported. False without xdist (`-p no:xdist`: the options do not exist)."""
    if getattr(option, "collectonly", False):
        return False  # xdist collects in-process
    workers = getattr(option, "numprocesses", None)
    if workers in ("auto", "logical"):
        return not getattr(option, "usepdb", False)  # xdist turns `-n auto --pdb` into -n 0
    if workers is not None:
        return bool(workers)  # -n 0: no workers
    dist = "load" if getattr(option, "distload", False) else getattr(option, "dist", "no")
    return dist != "no" and bool(getattr(option, "tx", None))


def _export_for(
    config: pytest.Config, settings: Settings, role: str, *, start_server: bool = True
) -> None:
    """Point the `export_url_as` variables at the database of `role`: a worker id (its own
    database; `master` = a serial run) or `CONTROLLER`. A worker's URL is known without
    connecting; the embedded server is started if it is the server, unless `start_server` is
    False (a session that runs no test: the URL is then read from the server's cache dir)."""
    previous = config.stash.get(EXPORTED_KEY, None)
    if previous is not None and previous["worker"] == role:
        return
    databases = config.stash.get(HOLDER_KEY, None)
    if databases is None:
        databases = ProjectDatabases.from_settings(settings, start=start_server)
    if databases.embedded_action is not None:
        controller_state(config).embedded_action = databases.embedded_action
    if role != CONTROLLER:
        _set_exported(config, settings, databases.worker_url(role), role)
        return
    # The build's name needs the fingerprint, whose computation imports the revision files (and a
    # seed function's package): export a database nobody creates meanwhile, never the user's value.
    _set_exported(config, settings, databases.worker_url(SERIAL_WORKER), SERIAL_WORKER)
    scratch = databases.naming.scratch(databases.fingerprint)
    config.stash[HOLDER_KEY] = databases  # the session start reuses it: no second fingerprint
    _set_exported(config, settings, databases.url_for(scratch), CONTROLLER)


def _set_exported(config: pytest.Config, settings: Settings, url: URL, role: str) -> None:
    """Set the variables to `url`, remembering (once) what this process had before, and, for its
    children (xdist workers), what the user had: they resolve their settings from that."""
    previous = config.stash.get(EXPORTED_KEY, None)
    user = user_environ()  # before our export: what the user set, even in an xdist worker
    saved = export.export(settings.export_url_as, url)
    if previous is not None:
        saved = previous["saved"]  # what this process had before its first export
    else:
        saved[PARENT_VAR] = os.environ.get(PARENT_VAR)
    config.stash[EXPORTED_KEY] = {"worker": role, "saved": saved}
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
    the problem to its fixtures; `--help` and `--version` still work.

    A session that runs no test (`--collect-only`, `--fixtures`: an IDE's discovery) exports the
    URL too, since importing the app needs it, but starts no server to learn it."""
    namespace = early_config.known_args_namespace
    listing_only = any(
        getattr(namespace, flag, False)
        for flag in ("collectonly", "showfixtures", "show_fixtures_per_test")
    )
    settings: Settings | None = None
    try:
        settings = resolve(early_config, namespace)
        early_config.stash[SETTINGS_KEY] = settings
        if settings.opted_in and settings.export_url_as:
            role = _early_worker_id()
            if role == SERIAL_WORKER and not listing_only and _xdist_distributes(namespace):
                role = CONTROLLER
            _export_for(early_config, settings, role, start_server=not listing_only)
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
    default = str(config.getini("testdb_isolation")).strip()
    if default not in ISOLATIONS:
        raise pytest.UsageError(
            f"testdb: testdb_isolation = {default!r} in the pytest ini options is not an "
            f"isolation: use {one_of(ISOLATIONS)}"
        )
    workerinput = getattr(config, "workerinput", None)
    exported = config.stash.get(EXPORTED_KEY, None)
    if exported is not None and _runs_tests(config):
        # The early guess came from the environment and the options; now xdist's own state is
        # authoritative: its worker id, and (its pytest_cmdline_main has run) whether it
        # distributes, which makes this process the controller.
        if workerinput is not None:
            role = str(workerinput["workerid"])
        else:
            role = CONTROLLER if _xdist_distributes(config.option) else SERIAL_WORKER
        with contextlib.suppress(FinreportTestdbError):
            _export_for(config, settings_from_config(config), role)


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


@pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_redacted(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Every test phase's report with its passwords masked (report_masking.py). The outermost
    wrapper, so nothing sees the report before: not the terminal, not JUnit XML, and in an xdist
    worker not the serialisation that sends it to the controller."""
    report = yield
    redact_report(item.config, report)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Collection reports (an import error, what a module printed) masked as test reports are."""
    report = yield
    redact_report(collector.config, report)
    return report


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
        # Kept open for the session: its admin session holds the template against `clean`. An
        # xdist controller made it already, to export the build's URL (`_export_for`).
        databases = config.stash.get(HOLDER_KEY, None)
        if databases is None:
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
        '@pytest.mark.testdb(isolation="rollback" or "fresh"))'
    )
    lines += _export_header(config)
    return lines


def _export_header(config: pytest.Config) -> list[str]:
    """What this run exports, as it does it: the names (and when they are the default, how to
    turn that off), or that it exports nothing."""
    settings = settings_from_config(config)
    if not settings.opted_in:
        return []
    source = settings.sources.get("export_url_as", "")
    if not settings.export_url_as:
        return [
            "testdb: exporting the test database URL to no variable "
            f"(export_url_as = [] from {source})"
        ]
    names = ", ".join(settings.export_url_as)
    default = " (the default; export_url_as = [] turns it off)" if source == SOURCE_DEFAULT else ""
    return [f"testdb: exporting the test database URL as {names}{default}"]


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
    undone = output.get(UNDO_OUTPUT_KEY)
    if undone:
        state = controller_state(node.config)
        state.undone_ms += undone["ms"]
        state.replaced += undone["replaced"]


#: Fixture scopes wider than one test: what they commit stays for the tests that follow.
_WIDER_SCOPES = frozenset({"session", "package", "module", "class"})


@pytest.hookimpl(trylast=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    """A wider-scoped fixture set up now may commit rows the tests after it rely on: the next
    test makes the worker database's current state its baseline before it starts."""
    if fixturedef.scope in _WIDER_SCOPES:
        worker_state(request.config).rebase_due = True


def pytest_fixture_post_finalizer(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    """A wider-scoped fixture's teardown (deleting what it committed, say) happens after the
    last test that used it; its changes, too, belong to the baseline of the next test."""
    if fixturedef.scope in _WIDER_SCOPES:
        worker_state(request.config).rebase_due = True


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands what undoing its tests cost to the controller's summary."""
    state = worker_state(session.config)
    if is_worker(session.config) and state.restored_ms:
        session.config.workeroutput[UNDO_OUTPUT_KEY] = {  # type: ignore[attr-defined]
            "ms": state.restored_ms,
            "replaced": state.replaced,
        }


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
    undone = state.undone_ms + worker_state(config).restored_ms
    if undone:
        replaced = state.replaced + worker_state(config).replaced
        ordered = sorted(undone)
        how = f"; {replaced} by a new clone (DDL or database settings)" if replaced else ""
        terminalreporter.write_line(
            f"testdb: undid what {len(undone)} test(s) committed: median "
            f"{ordered[len(ordered) // 2]:.1f} ms, max {ordered[-1]:.1f} ms{how}"
        )
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
