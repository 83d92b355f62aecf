"""The pytest plugin: options, the template step in the xdist controller, reporting.

Registered through the `pytest11` entry point, so installing the package is enough. It translates
options into settings and calls `TestDatabases`; the fixtures live in `fixtures.py`. The controller
(or the single process of a serial run) prepares the template before workers start, so it is built
once per run; each worker then clones its own database when a fixture first needs it.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any

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


def settings_from_config(config: pytest.Config) -> Settings:
    """Settings with the pytest options as the highest-precedence overrides."""
    overrides = {
        "url": config.getoption("testdb_url"),
        "namespace": config.getoption("testdb_namespace"),
        "reuse": config.getoption("testdb_reuse"),
        "keep": config.getoption("testdb_keep"),
    }
    return resolve_settings(overrides, cwd=config.rootpath)


def is_configured(settings: Settings) -> bool:
    """Prepare the template eagerly only in projects that opted in (a `[tool.testdb]` table, a
    TESTDB_*/DATABASE_URL variable or a --testdb-* option); the fixtures work regardless."""
    explicit = any(
        source.startswith(("env ", SOURCE_OVERRIDE)) for source in settings.sources.values()
    )
    return explicit or settings.has_tool_table


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


def _fail_session(exc: TestdbError) -> None:
    if isinstance(exc, MigrationError) and exc.details:
        sys.stderr.write(exc.details.rstrip() + "\n")
    pytest.exit(f"testdb: {exc}", returncode=1)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _is_worker(config):
        return
    try:
        settings = settings_from_config(config)
        if not is_configured(settings):
            return
        databases = TestDatabases.from_settings(settings)
        state = _state(config)
        state.server = render_for_humans(databases.server_url)
        state.template = databases.ensure_template(rebuild=config.getoption("testdb_rebuild"))
        config.stash[TEMPLATE_KEY] = state.template
    except TestdbError as exc:
        _fail_session(exc)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = _state(config)
    if state.template is None:
        return []
    t = state.template
    return [
        f"testdb: template {t.name} (fingerprint {t.fingerprint[:12]}) {t.action} in "
        f"{t.seconds:.2f} s on {state.server}"
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


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    workers = _state(config).workers
    if not workers:
        return
    parts = [
        f"{w} {'reused' if r['reused'] else 'cloned'} {r['name']} in {r['seconds'] * 1000:.0f} ms"
        for w, r in sorted(workers.items())
    ]
    terminalreporter.write_line(f"testdb: {'; '.join(parts)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Remember each phase's report on the item, so `fresh_database` knows whether to keep."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    fresh = item.stash.get(FRESH_DATABASES, None)
    if fresh and report.when == "call" and report.failed:
        for database in fresh:
            report.sections.append(
                ("testdb", f"fresh database kept for inspection: {render_for_humans(database.url)}")
            )
