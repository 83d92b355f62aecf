"""The pytest plugin: options, the template step in the xdist controller, reporting.

Registered through the `pytest11` entry point, so installing the package is enough. It translates
options into settings and calls `TestDatabases`; the fixtures live in `fixtures.py`. The controller
(or the single process of a serial run) prepares the template before workers start, so it is built
once per run; each worker then clones its own database when a fixture first needs it.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any, NoReturn

import pytest

from .errors import MigrationError, TestdbError
from .manager import TestDatabases
from .settings import SOURCE_OVERRIDE, Settings, resolve_settings
from .template import TemplateResult
from .urls import render_for_humans

# Keys used to pass data between the xdist controller and its workers.
WORKERINPUT_KEY = "testdb_template"
WORKEROUTPUT_KEY = "testdb_worker"
TEMPLATE_KEY = pytest.StashKey[TemplateResult]()
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
FRESH_DATABASES = pytest.StashKey[list[Any]]()
#: `user_properties` entry a test's reports carry when its fresh database was kept (travels with
#: the report from an xdist worker to the controller, which lists the kept databases at the end).
FRESH_KEPT_PROPERTY = "testdb_fresh_kept"

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


def settings_from_config(config: pytest.Config) -> Settings:
    """Settings with the pytest options as the highest-precedence overrides."""
    overrides = {
        "url": config.getoption("testdb_url"),
        "namespace": config.getoption("testdb_namespace"),
        "reuse": config.getoption("testdb_reuse"),
        "keep": config.getoption("testdb_keep"),
        "cache_dir": config.getoption("testdb_cache_dir", None),
        "drift_check": False if config.getoption("testdb_no_drift_check", None) else None,
    }
    return resolve_settings(overrides, cwd=config.rootpath)


def is_configured(settings: Settings) -> bool:
    """Prepare the template eagerly only in projects that opted in (a `[tool.testdb]` table, a
    TESTDB_*/DATABASE_URL variable or a --testdb-* option); the fixtures work regardless."""
    explicit = any(
        source.startswith(("env ", SOURCE_OVERRIDE)) for source in settings.sources.values()
    )
    return explicit or settings.has_tool_table


def _runs_tests(config: pytest.Config) -> bool:
    """False for `--collect-only`, `--fixtures` and `--fixtures-per-test`: those sessions run no
    test, so they must not build a template (or start the embedded server)."""
    option = config.option
    return not (
        getattr(option, "collectonly", False)
        or getattr(option, "showfixtures", False)
        or getattr(option, "show_fixtures_per_test", False)
    )


def rebuild_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("testdb_rebuild", False))


class ControllerState:
    """What the controller learned, for the header, the workers and the summary."""

    def __init__(self) -> None:
        self.template: TemplateResult | None = None
        self.server: str | None = None
        self.workers: dict[str, dict[str, Any]] = {}


def _state(config: pytest.Config) -> ControllerState:
    state: ControllerState | None = getattr(config, "_testdb_state", None)
    if state is None:
        state = ControllerState()
        config._testdb_state = state  # type: ignore[attr-defined]
    return state


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _fail_session(exc: TestdbError) -> NoReturn:
    """Stop before any test runs with one line, `ERROR: testdb: <problem>; <fix>` (pytest's usage
    error: exit status 4), after the migration's traceback when a migration failed."""
    if isinstance(exc, MigrationError) and exc.details:
        sys.stderr.write(exc.details.rstrip() + "\n")
    raise pytest.UsageError(f"testdb: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _is_worker(config) or not _runs_tests(config):
        return
    try:
        settings = settings_from_config(config)
        rebuild = rebuild_requested(config)
        if not (rebuild or is_configured(settings)):
            return
        state = _state(config)
        with TestDatabases.from_settings(settings) as databases:
            state.server = render_for_humans(databases.server_url)
            state.template = databases.ensure_template(
                rebuild=rebuild, full=bool(config.getoption("testdb_full", False))
            )
        config.stash[TEMPLATE_KEY] = state.template
    except TestdbError as exc:
        _fail_session(exc)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = _state(config)
    if state.template is None:
        return []
    t = state.template
    waited = (
        f", {t.waited_seconds:.2f} s waiting for another build" if t.waited_seconds >= 0.1 else ""
    )
    return [
        f"testdb: template {t.name} (fingerprint {t.fingerprint[:12]}) {t.describe()} in "
        f"{t.seconds:.2f} s{waited} on {state.server}",
        *(f"testdb: {note}" for note in t.notes),
    ]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's template to each worker so no worker rebuilds it."""
    template = _state(node.config).template
    if template is not None:
        node.workerinput[WORKERINPUT_KEY] = {
            "name": template.name,
            "fingerprint": template.fingerprint,
        }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: collect each worker's clone report for the terminal summary."""
    report = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
    if report:
        _state(node.config).workers[report["worker"]] = report


def record_worker_clone(config: pytest.Config, report: dict[str, Any]) -> None:
    """Called by the worker-database fixture: where the summary learns about clones."""
    if _is_worker(config):
        config.workeroutput[WORKEROUTPUT_KEY] = report  # type: ignore[attr-defined]
    else:
        _state(config).workers[report["worker"]] = report


#: How the summary describes what happens to worker databases at session end.
DISPOSITIONS = {
    "dropped": "dropped at session end",
    "kept": "kept after the run (--testdb-keep)",
    "reused": "kept for the next run (--testdb-reuse)",
}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = _state(config)
    if state.workers:
        parts = [
            f"{w} {'reused' if r['reused'] else 'cloned'} {r['name']} in "
            f"{r['seconds'] * 1000:.0f} ms"
            for w, r in sorted(state.workers.items(), key=lambda item: _worker_order(item[0]))
        ]
        dispositions = sorted({r.get("disposition", "dropped") for r in state.workers.values()})
        what = ", ".join(DISPOSITIONS.get(d, d) for d in dispositions)
        terminalreporter.write_line(f"testdb: {', '.join(parts)}; {what}")
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
