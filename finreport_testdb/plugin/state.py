"""What the plugin's hooks and fixtures share: stash keys, the settings resolved once per
process, a test's isolation, and what the run learned (`RunState`). The hooks and the fixtures
import this module and never each other (as in pytest-django).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.engine import URL

from ..core.ownership import session_label
from ..core.settings import SETTINGS, Settings, find_pyproject, opts_in, resolve_settings
from ..core.template import TemplateResult
from ..core.urls import connection_failure
from ..errors import FinreportTestdbError

#: xdist's `workerinput` keys (controller to worker) and `workeroutput` key (worker to controller).
TEMPLATE_INPUT = "testdb_template"
RUN_PID_INPUT = "testdb_run_pid"  # the controller's pid, for `run_label`
REPORT_OUTPUT = "testdb_report"

SETTINGS_KEY = pytest.StashKey[Settings]()
ENVIRON_KEY = pytest.StashKey[dict[str, str]]()
STATE_KEY = pytest.StashKey["RunState"]()
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
FRESH_DATABASES = pytest.StashKey[list[Any]]()
#: The servers this process's fixtures connected to: their passwords are masked in reports.
SERVER_URLS_KEY = pytest.StashKey[list[URL]]()

ISOLATIONS = ("commit", "rollback", "fresh")
DEFAULT_ISOLATION = "commit"
#: A test's `user_properties` entry naming its kept fresh database (travels with its reports).
FRESH_KEPT_PROPERTY = "testdb_fresh_kept"


def _overrides(namespace: Any) -> dict[str, Any]:
    """The settings the --testdb-* options give (None: not given; a flag: not the default)."""
    overrides = {}
    for s in SETTINGS:
        if s.pytest:
            value = getattr(namespace, s.flag("testdb-")[2:].replace("-", "_"), None)
            overrides[s.name] = (not s.default if value else None) if s.kind == "bool" else value
    return overrides


#: `[tool.testdb]`, `[tool.testdb.x]`, `tool.testdb = ...` or `testdb = ...` (under `[tool]`).
_TESTDB_TABLE = re.compile(r"^\s*(\[\s*tool\s*\.\s*testdb\b|(tool\s*\.\s*)?testdb\s*[.=])", re.M)


def opted_in_despite_error(config: pytest.Config, namespace: Any) -> bool:
    """`opts_in` when resolving the settings failed: the [tool.testdb] table is looked for in the
    text of pyproject.toml, which may not be valid TOML."""
    if getattr(namespace, "testdb_rebuild", None):
        return True
    try:
        pyproject = find_pyproject(config.rootpath.resolve())
        text = pyproject.read_bytes().decode("utf-8", "replace") if pyproject else ""
    except (FinreportTestdbError, OSError):
        text = ""
    environ = config.stash.get(ENVIRON_KEY, os.environ)
    return opts_in(_overrides(namespace), environ, has_table=_TESTDB_TABLE.search(text) is not None)


def settings_from_config(config: pytest.Config, namespace: Any = None) -> Settings:
    """Settings with the pytest options (`namespace` before they are parsed) as overrides,
    resolved once per process (the environment may later hold what `export_url_as` wrote)."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        overrides = _overrides(config.option if namespace is None else namespace)
        environ = config.stash.get(ENVIRON_KEY, None)
        settings = resolve_settings(overrides, cwd=config.rootpath, environ=environ)
        config.stash[SETTINGS_KEY] = settings
    return settings


def isolation_of(item: pytest.Item) -> str:
    """The closest `testdb(isolation=...)` marker, else the `testdb_isolation` ini default."""
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
                    "isolation: use 'commit', 'rollback' or 'fresh'"
                )
            return str(value)
        if mark.args:
            raise FinreportTestdbError(
                f"@pytest.mark.testdb{mark.args!r} on {item.nodeid}: pass the isolation by "
                'keyword, e.g. @pytest.mark.testdb(isolation="fresh")'
            )
    return str(item.config.getini("testdb_isolation")).strip() or DEFAULT_ISOLATION


@contextmanager
def one_line(url: URL | None = None) -> Iterator[None]:
    """Fail the test with one line and no traceback: a testdb error, and with `url` any failure
    to connect to it (no driver frames, no password)."""
    try:
        yield
    except FinreportTestdbError as exc:
        raise pytest.fail.Exception(f"testdb: {exc}", pytrace=False) from None
    except Exception as exc:
        if url is None:
            raise
        raise pytest.fail.Exception(connection_failure(url, exc), pytrace=False) from None


@dataclass
class RunState:
    """This process's part of the run: what the header and the summary show (a worker ships the
    `SHIPPED` fields to its controller), and its worker database between tests."""

    template: TemplateResult | None = None
    server: str | None = None
    embedded_action: str | None = None
    #: worker id -> how its database was cloned and what became of it at session end.
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    embedded_by_fixture: bool = False  # a fixture started the embedded server (not opted in)
    undone_ms: list[float] = field(default_factory=list)  # what undoing each test's commits cost
    replaced: int = 0  # undone by a new clone
    SHIPPED = ("workers", "embedded_by_fixture", "undone_ms", "replaced")

    #: The worker database once a fixture cloned it, who cloned it, and this worker's id.
    database: Any = None
    databases: Any = None
    worker_id: str = ""
    rebase_due: bool = False  # a wider-scoped fixture was set up or finished since the baseline
    pristine: bool = True  # the baseline is the template's (what --testdb-reuse must leave)


def run_state(config: pytest.Config) -> RunState:
    return config.stash.setdefault(STATE_KEY, RunState())


def worker_id(config: pytest.Config) -> str | None:
    """This process's xdist worker id (None: not a worker), once xdist has configured it."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else None


def run_label(config: pytest.Config) -> str:
    """The `application_name` of this process's sessions (run pid, worker), so `testdb server
    stop` can say which run holds the server."""
    workerinput = getattr(config, "workerinput", None)
    run_pid = workerinput.get(RUN_PID_INPUT, os.getppid()) if workerinput else os.getpid()
    return session_label(f"pytest pid {run_pid}", worker_id(config))
