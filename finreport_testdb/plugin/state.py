"""State the pytest plugin (`plugin.py`) and its fixtures (`fixtures.py`) share: stash keys, the
keys xdist carries between controller and workers, the settings resolved once per process, the
isolation a test asked for, and what the controller learned for the summary.

Both modules import this one and never each other (as pytest-django's fixtures never import its
plugin): the hooks in `plugin.py` and the fixtures record into and read from the same
`config.stash` entries defined here.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from sqlalchemy.engine import URL

from ..core.ownership import session_label
from ..core.settings import Settings, find_pyproject, opts_in, resolve_settings
from ..core.template import TemplateResult
from ..databases import ProjectDatabases
from ..errors import FinreportTestdbError

# Keys used to pass data between the xdist controller and its workers.
WORKERINPUT_KEY = "testdb_template"
WORKEROUTPUT_KEY = "testdb_worker"
EMBEDDED_OUTPUT_KEY = "testdb_embedded_started"
UNDO_OUTPUT_KEY = "testdb_undo"
PROBLEMS_OUTPUT_KEY = "testdb_problems"
#: The controller's pid, for the `application_name` of its workers' sessions (`run_label`).
RUN_PID_KEY = "testdb_run_pid"
TEMPLATE_KEY = pytest.StashKey[TemplateResult]()
HOLDER_KEY = pytest.StashKey[ProjectDatabases]()
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
FRESH_DATABASES = pytest.StashKey[list[Any]]()
SETTINGS_KEY = pytest.StashKey[Settings]()
EXPORTED_KEY = pytest.StashKey[dict[str, Any]]()
STATE_KEY = pytest.StashKey["ControllerState"]()
WORKER_KEY = pytest.StashKey["WorkerState"]()
#: The servers this process's fixtures connected to: their passwords are masked in reports.
SERVER_URLS_KEY = pytest.StashKey[list[URL]]()
#: Set by a process that exported variables, for its children (xdist workers): the pid and the
#: values the exported variables had before, so a child resolves its settings from the user's
#: environment, never from a URL the parent exported (DATABASE_URL is also the fallback URL).
PARENT_VAR = "_TESTDB_PARENT"

#: commit (default): real commits, undone after the test (undo.py); rollback: SAVEPOINTs inside a
#: transaction rolled back after the test; fresh: a new clone of the template before the test.
ISOLATIONS = ("commit", "rollback", "fresh")
DEFAULT_ISOLATION = "commit"
#: `user_properties` entry a test's reports carry when its fresh database was kept (travels with
#: the report from an xdist worker to the controller, which lists the kept databases at the end).
FRESH_KEPT_PROPERTY = "testdb_fresh_kept"


_OPTION_SETTINGS = {
    "url": "testdb_url",
    "namespace": "testdb_namespace",
    "reuse": "testdb_reuse",
    "keep": "testdb_keep",
    "export_url_as": "testdb_export_url_as",
    "cache_dir": "testdb_cache_dir",
}


def user_environ() -> dict[str, str]:
    """The environment as the user set it: values this plugin exported in a parent process (the
    xdist controller) are replaced by what they were before."""
    environ = dict(os.environ)
    parent = environ.pop(PARENT_VAR, None)
    if parent:
        try:
            saved = json.loads(parent).get("saved", {})
        except (ValueError, AttributeError):
            saved = {}
        for name, value in saved.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
    return environ


def _overrides(namespace: Any) -> dict[str, Any]:
    """The settings the --testdb-* options give (None: not given)."""
    overrides = {name: getattr(namespace, dest, None) for name, dest in _OPTION_SETTINGS.items()}
    if getattr(namespace, "testdb_no_drift_check", None):
        overrides["drift_check"] = False
    return overrides


def resolve(config: pytest.Config, namespace: Any) -> Settings:
    return resolve_settings(_overrides(namespace), cwd=config.rootpath, environ=user_environ())


#: `[tool.testdb]`, `[tool.testdb.x]`, `tool.testdb = ...` or `testdb = ...` (under `[tool]`).
_TESTDB_TABLE = re.compile(r"^\s*(\[\s*tool\s*\.\s*testdb\b|(tool\s*\.\s*)?testdb\s*[.=])", re.M)


def opted_in_despite_error(config: pytest.Config, namespace: Any) -> bool:
    """Whether the project opted in, asked when resolving its settings failed (so `opted_in` is
    unknown): a --testdb-* option, a TESTDB_* settings variable, or a [tool.testdb] table in the
    nearest pyproject.toml (looked for in its text when the file is not valid TOML)."""
    if getattr(namespace, "testdb_rebuild", None):
        return True
    try:
        pyproject = find_pyproject(config.rootpath.resolve())
        text = pyproject.read_bytes().decode("utf-8", "replace") if pyproject else ""
    except (FinreportTestdbError, OSError):
        text = ""
    has_table = _TESTDB_TABLE.search(text) is not None
    return opts_in(_overrides(namespace), user_environ(), has_table=has_table)


def settings_from_config(config: pytest.Config) -> Settings:
    """Settings with the pytest options as the highest-precedence overrides, resolved once per
    process and kept: the environment may later hold URLs that `export_url_as` wrote."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        settings = config.stash[SETTINGS_KEY] = resolve(config, config.option)
    return settings


def isolation_of(item: pytest.Item) -> str:
    """The closest `testdb(isolation=...)` marker (test, class, module `pytestmark`, conftest
    via `pytest_collection_modifyitems`), else the `testdb_isolation` ini default."""
    for mark in item.iter_markers("testdb"):
        unknown = sorted(set(mark.kwargs) - {"isolation"})
        if unknown:
            raise FinreportTestdbError(
                f"@pytest.mark.testdb({', '.join(f'{k}=...' for k in unknown)}) on {item.nodeid}: "
                f"unknown keyword {', '.join(repr(k) for k in unknown)}; the marker takes only "
                'isolation=, e.g. @pytest.mark.testdb(isolation="fresh")'
            )
        if "isolation" in mark.kwargs:
            value = mark.kwargs["isolation"]
            if value not in ISOLATIONS:
                raise FinreportTestdbError(
                    f"@pytest.mark.testdb(isolation={value!r}) on {item.nodeid} is not an "
                    f"isolation: use {one_of(ISOLATIONS, quote=True)}"
                )
            return str(value)
        if mark.args:
            raise FinreportTestdbError(
                f"@pytest.mark.testdb{mark.args!r} on {item.nodeid}: pass the isolation by "
                'keyword, e.g. @pytest.mark.testdb(isolation="fresh")'
            )
    return str(item.config.getini("testdb_isolation")).strip() or DEFAULT_ISOLATION


def one_of(choices: tuple[str, ...], *, quote: bool = False) -> str:
    """`'commit', 'rollback' or 'fresh'`: the choices as a message lists them."""
    shown = [repr(c) if quote else c for c in choices]
    return f"{', '.join(shown[:-1])} or {shown[-1]}"


def rebuild_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("testdb_rebuild", False))


class ControllerState:
    """What the controller learned, for the header, the workers and the summary."""

    def __init__(self) -> None:
        self.template: TemplateResult | None = None
        self.server: str | None = None
        self.workers: dict[str, dict[str, Any]] = {}
        self.embedded_action: str | None = None
        self.embedded_by_fixture = False
        #: What undoing the workers' tests cost (ms each), and how many needed a new clone.
        self.undone_ms: list[float] = []
        self.replaced = 0
        #: What the run's teardown could not do (one line each in the summary).
        self.problems: list[str] = []


def controller_state(config: pytest.Config) -> ControllerState:
    """This process's `ControllerState`, kept in `config.stash` (created on first use)."""
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        state = config.stash[STATE_KEY] = ControllerState()
    return state


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def record_embedded_start(config: pytest.Config, action: str | None) -> None:
    """Called by the `testdb_databases` fixture: a fixture that had to start the embedded server
    (a project that has not opted in) says so in the summary, with how to stop it."""
    if action in (None, "running"):
        return
    if is_worker(config):
        config.workeroutput[EMBEDDED_OUTPUT_KEY] = True  # type: ignore[attr-defined]
    else:
        controller_state(config).embedded_by_fixture = True


def record_worker_clone(config: pytest.Config, report: dict[str, Any]) -> None:
    """Called by the worker-database fixture: where the summary learns about clones."""
    if is_worker(config):
        config.workeroutput[WORKEROUTPUT_KEY] = report  # type: ignore[attr-defined]
    else:
        controller_state(config).workers[report["worker"]] = report


class WorkerState:
    """This process's worker database, between its tests: whether it exists yet, whether
    wider-scoped fixtures ran since its baseline, and what undoing tests cost (for the summary)."""

    def __init__(self) -> None:
        #: The worker database, once a fixture cloned it (until then there is nothing to undo),
        #: the core object that cloned it, and this process's worker id.
        self.database: Any = None
        self.databases: Any = None
        self.worker_id = ""
        #: A session-, package-, module- or class-scoped fixture was set up or finished since
        #: the last baseline: what it committed must become part of the baseline.
        self.rebase_due = False
        #: The baseline is the template's state (what `--testdb-reuse` must leave behind).
        self.pristine = True
        self.restored_ms: list[float] = []
        self.replaced = 0


def worker_state(config: pytest.Config) -> WorkerState:
    state = config.stash.get(WORKER_KEY, None)
    if state is None:
        state = config.stash[WORKER_KEY] = WorkerState()
    return state


def record_server_url(config: pytest.Config, url: URL) -> None:
    """Called by the `testdb_databases` fixture: the server's password (the embedded server's is
    generated, and no setting holds it) is one the reports must not show."""
    urls = config.stash.setdefault(SERVER_URLS_KEY, [])
    if url not in urls:
        urls.append(url)


def server_urls(config: pytest.Config) -> list[URL]:
    return config.stash.get(SERVER_URLS_KEY, [])


def record_problem(config: pytest.Config, problem: str) -> None:
    """Called by fixture teardowns that failed (the server went away, say): instead of an error
    (or an exception group) on whichever test ran last, the summary says it in one line."""
    if is_worker(config):
        config.workeroutput.setdefault(PROBLEMS_OUTPUT_KEY, []).append(problem)  # type: ignore[attr-defined]
    else:
        controller_state(config).problems.append(problem)


def run_label(config: pytest.Config) -> str:
    """The `application_name` of this process's sessions: the run (its controller's pid) and
    the xdist worker, so `testdb server stop` can say which run holds the server."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return session_label(f"pytest pid {os.getpid()}")
    run_pid = workerinput.get(RUN_PID_KEY, os.getppid())
    return session_label(f"pytest pid {run_pid}", str(workerinput.get("workerid", "")) or None)
