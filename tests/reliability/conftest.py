"""Fixtures and helpers for the reliability tests: real `testdb` / `pytest` subprocesses.

Everything here runs the product the way users do: the installed `testdb` console script and
`python -m pytest` in a throwaway project, configured only through the environment
(`TESTDB_URL=...`). Helpers never sleep to synchronise: they poll a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from conftest import SPECIAL_PASSWORD, drop_databases_with_prefix, write_tiny_project
from psycopg import sql
from sqlalchemy.engine import URL

from finreport_testdb.core.admin import advisory_key
from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases

T = TypeVar("T")

_BIN = Path(sys.executable).parent
TESTDB = str(_BIN / "testdb") if (_BIN / "testdb").exists() else "testdb"
PYTHON = sys.executable

#: Extra revision appended to the tiny chain. It appends one line per *execution* to
#: $RELIABILITY_BUILD_LOG (so a test counts real builds, not what the tool says it did) and, when
#: $RELIABILITY_GATE is set, holds the build open until that file exists: the test decides when the
#: build may finish, or kills the process while it is held. $RELIABILITY_SQL_BLOCK blocks in a
#: server-side `pg_sleep` instead, so a killed build leaves a busy backend behind.
GATE_REVISION = '''
    """gate: counts executions and can hold the build open (reliability tests)"""
    import os
    import time

    from alembic import op

    revision = "0003"
    down_revision = "0002"


    def upgrade():
        op.execute("CREATE TABLE gate_passed (id integer)")
        log = os.environ.get("RELIABILITY_BUILD_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()}\\n")
        if os.environ.get("RELIABILITY_SQL_BLOCK"):
            op.execute("SELECT pg_sleep(60)")  # blocks inside the server, not in Python
        gate = os.environ.get("RELIABILITY_GATE")
        if gate:
            deadline = time.monotonic() + 60
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gate {gate} was never opened")
                time.sleep(0.02)


    def downgrade():
        op.drop_table("gate_passed")
'''

PYPROJECT_EXTRA = """lock_timeout = 60

[tool.pytest.ini_options]
addopts = "-p no:cacheprovider"
asyncio_default_fixture_loop_scope = "function"
"""

#: Exit statuses of a pytest session the plugin stopped before any test ran: 1 (`pytest.exit`) or
#: 4 (a pytest usage error); either way the reason is one `testdb: ...` line, not a traceback.
SESSION_STOPPED = (1, 4)


# ------------------------------------------------------------------------------ polling


def wait_for(condition: Callable[[], T], *, timeout: float = 30.0, what: str = "a condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------------------ processes


def child_env(url: URL | str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: no TESTDB_*/DATABASE_URL/PG*/outer-pytest variables
    (coverage's variables stay, so subprocesses are measured), plus TESTDB_URL and `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TESTDB_", "PG", "PYTEST_")) and k != "DATABASE_URL"
    }
    # A wide "terminal", so pytest's short test summary lines are not cut off mid-message.
    env["COLUMNS"] = "400"
    if url is not None:
        env["TESTDB_URL"] = url if isinstance(url, str) else render_for_driver(url)
    env.update(extra)
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n--- stdout\n{self.stdout}"
            f"--- stderr\n{self.stderr}"
        )


def run(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 90) -> Result:
    proc = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    return Result(args, proc.returncode, proc.stdout, proc.stderr)


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 90) -> Result:
    return run([TESTDB, *args], env=env, cwd=cwd, timeout=timeout)


def inner_pytest(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> Result:
    return run([PYTHON, "-m", "pytest", *args], env=env, cwd=cwd, timeout=timeout)


def run_parallel(calls: Iterable[Callable[[], T]]) -> list[T]:
    """Run independent subprocess calls at once (each call blocks on its own process)."""
    calls = list(calls)
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        return list(pool.map(lambda call: call(), calls))


@dataclass
class Spawned:
    """A background process group whose output goes to files (no pipe can fill up)."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def result(self, timeout: float = 120) -> Result:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            output = self.out.read_text(errors="replace") + self.err.read_text(errors="replace")
            raise AssertionError(
                f"{self.proc.args} still running after {timeout} s:\n{output}"
            ) from None
        return Result(
            [str(a) for a in self.proc.args],  # type: ignore[union-attr]
            self.proc.returncode,
            self.out.read_text(errors="replace"),
            self.err.read_text(errors="replace"),
        )

    def kill(self) -> None:
        """SIGKILL the whole process group (a pytest controller and its xdist workers)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    """Start processes in their own session; any still alive at teardown are killed."""
    started: list[Spawned] = []

    def start(args: list[str], *, env: dict[str, str], cwd: Path) -> Spawned:
        tag = uuid.uuid4().hex[:8]
        out, err = tmp_path / f"proc-{tag}.out", tmp_path / f"proc-{tag}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=fo, stderr=fe, start_new_session=True
            )
        spawned = Spawned(proc, out, err)
        started.append(spawned)
        return spawned

    yield start
    for spawned in started:
        spawned.kill()


# ------------------------------------------------------------------------------ server state


@contextlib.contextmanager
def mounted_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of `size` of our own (needs root), for file systems that fill up or turn
    read-only under the embedded server. Not under tmp_path: as root, the server user must be
    able to pass through every parent."""
    mountpoint = Path(f"/tmp/frt-tmpfs-{uuid.uuid4().hex[:8]}")
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        mountpoint.rmdir()


def _connect(server: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(autocommit=True, **psycopg_connect_kwargs(server, database="postgres"))


def comments(server: URL, prefix: str) -> dict[str, str | None]:
    """name -> COMMENT ON DATABASE for every database whose name starts with `prefix`."""
    with _connect(server) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE starts_with(datname, %s)",
            (prefix,),
        ).fetchall()
    return {name: comment for name, comment in rows}


def database_flags(server: URL, name: str) -> tuple[bool, bool] | None:
    """(datistemplate, datallowconn) of a database, None if it does not exist."""
    with _connect(server) as conn:
        row = conn.execute(
            "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    return (bool(row[0]), bool(row[1])) if row else None


def create_database(server: URL, name: str, *, comment: str | None = None) -> None:
    """A database *not* made by testdb (optionally with a hand-written comment)."""
    with _connect(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if comment is not None:
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(comment)
                )
            )


def advisory_waiters(server: URL, label: str) -> int:
    """How many sessions wait (not granted) for the advisory lock testdb takes for `label`."""
    key = advisory_key(label) & 0xFFFFFFFFFFFFFFFF
    with _connect(server) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1",
            (key >> 32, key & 0xFFFFFFFF),
        ).fetchone()
    return int(row[0]) if row else 0


def execute(server: URL, query: str, *, database: str = "postgres") -> None:
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database=database)
    ) as conn:
        conn.execute(query)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ projects


@dataclass
class Gate:
    """Control of the gate revision: count builds, hold a build open, let it finish."""

    directory: Path
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "builds.log"
        self.gate = self.directory / "gate.open"
        self.env = {"RELIABILITY_BUILD_LOG": str(self.log), "RELIABILITY_GATE": str(self.gate)}

    def builds(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def open(self) -> None:
        self.gate.touch()


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path / "gate")


def write_project(root: Path, *, revisions: dict[str, str] | None = None) -> Path:
    """The shared tiny project plus the gate revision (and any extra revisions)."""
    write_tiny_project(root, pyproject_extra=PYPROJECT_EXTRA)
    versions = root / "migrations" / "versions"
    (versions / "0003_gate.py").write_text(textwrap.dedent(GATE_REVISION))
    for name, body in (revisions or {}).items():
        (versions / name).write_text(textwrap.dedent(body))
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project")


def write_tests(project: Path, body: str, name: str = "test_inner.py") -> Path:
    tests = project / "tests"
    tests.mkdir(exist_ok=True)
    path = tests / name
    path.write_text(textwrap.dedent(body))
    return path


def core(url: URL, project: Path, **overrides: Any) -> ProjectDatabases:
    """The in-process core API for `project` on `url` (to compute names, or set up state)."""
    settings = resolve_settings(
        {"url": render_for_driver(url), **overrides}, cwd=project, environ={}
    )
    return ProjectDatabases.from_settings(settings)


# ------------------------------------------------------------------------------ servers


@pytest.fixture
def trust_base(trust_server: URL, base_name: str) -> Iterator[URL]:
    """The trust server with this test's base name; databases with that prefix dropped after."""
    yield trust_server.set(database=base_name)
    drop_databases_with_prefix(trust_server, base_name)


@pytest.fixture
def scram_base(scram_server: URL, base_name: str) -> Iterator[URL]:
    yield scram_server.set(database=base_name)
    drop_databases_with_prefix(scram_server, base_name)


# ------------------------------------------------------------------------------ secrets


def secret_forms(password: str) -> set[str]:
    """Every way a password commonly leaks: raw, percent-encoded, form-encoded, as SQLAlchemy
    renders it in a URL."""
    rendered = URL.create("postgresql", username="u", password=password, host="h").render_as_string(
        hide_password=False
    )
    sa_form = rendered[len("postgresql://u:") : rendered.rindex("@h")]
    return {password, quote(password, safe=""), quote_plus(password), sa_form}


def leaks(text: str, passwords: Iterable[str] = (SPECIAL_PASSWORD,)) -> list[str]:
    return sorted(form for pw in passwords for form in secret_forms(pw) if form in text)
