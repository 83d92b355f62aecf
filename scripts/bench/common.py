"""Shared plumbing: timing and statistics, the server under test, machine facts, clean-up."""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the bench venv's bin: testdb, pytest, alembic
#: pytest in the bench venv, quiet, with the timing recorder plugin (`benchrec.py` in the project).
PYTEST_RECORDED = [
    str(BIN / "python"),
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "benchrec",
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics


@dataclass
class Series:
    """Repeated measurements of one quantity (seconds unless `unit` says otherwise)."""

    name: str
    values: list[float] = field(default_factory=list)
    unit: str = "s"

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "values": self.values}


def ratio_series(name: str, num: Series, den: Series) -> Series:
    """Per-repetition ratios num[i]/den[i]: both come from the same repetition, side by side."""
    n = min(len(num.values), len(den.values))
    return Series(name, [num.values[i] / den.values[i] for i in range(n)], unit="x")


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fmt_seconds(value: float) -> str:
    if value >= 10:
        return f"{value:.1f} s"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 0.01:
        return f"{value * 1000:.0f} ms"
    return f"{value * 1000:.1f} ms"


def fmt_value(value: float, unit: str) -> str:
    if unit == "s":
        return fmt_seconds(value)
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "x":
        return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f} %"
    if unit in ("cores", "load"):
        return f"{value:.2f}"
    return f"{value:.3g} {unit}"


def fmt_series(s: Series) -> tuple[str, str]:
    """(median, 'min - max') for the table."""
    return fmt_value(s.median, s.unit), f"{fmt_value(s.lo, s.unit)} - {fmt_value(s.hi, s.unit)}"


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    """The PostgreSQL server every workload runs on, and how child processes reach it."""

    url: URL  # superuser/maintenance URL, password intact (never printed)
    embedded: bool
    cache_dir: Path | None  # the embedded server's cache dir (children get TESTDB_CACHE_DIR)
    started_here: bool
    version: str = ""
    data_dir: str = ""
    data_fs: str = ""
    prefix: str = field(default_factory=lambda: f"bench_{secrets.token_hex(3)}")

    def connect(self, database: str | None = None, *, autocommit: bool = True) -> Any:
        u = self.url
        return psycopg.connect(
            host=u.host,
            port=u.port,
            user=u.username,
            password=u.password,
            dbname=database or u.database or "postgres",
            autocommit=autocommit,
        )

    def db_url(self, database: str) -> URL:
        return self.url.set(database=database)

    def url_string(self, database: str) -> str:
        return self.db_url(database).render_as_string(hide_password=False)

    def child_env(self, base: str | None = None, **extra: str) -> dict[str, str]:
        """Environment for a child that should use this server: the embedded server through
        TESTDB_CACHE_DIR (exactly the default path users get), else TESTDB_URL."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TESTDB_URL", "DATABASE_URL", "TESTDB_BASE_NAME", "PYTEST_ADDOPTS")
        }
        if self.embedded:
            assert self.cache_dir is not None
            env["TESTDB_CACHE_DIR"] = str(self.cache_dir)
            if base:
                env["TESTDB_BASE_NAME"] = base
        elif base:
            env["TESTDB_URL"] = self.url_string(base)
        env["BENCH_SERVER_URL"] = self.url_string(self.url.database or "postgres")
        env.update(extra)
        return env

    def drop_prefixed(self) -> list[str]:
        """Drop every database this run created (they all start with `prefix`)."""
        dropped = []
        with self.connect() as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s",
                    (self.prefix.replace("_", r"\_") + "%",),
                )
            ]
            for name in names:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
                )
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                dropped.append(name)
        return dropped


def bench_cache_dir() -> Path:
    """The bench's own embedded server: next to the project's, so it never stops a colleague's."""
    from finreport_testdb.embedded import default_cache_dir

    if os.environ.get("TESTDB_CACHE_DIR", "").strip():
        return default_cache_dir(REPO)
    saved = os.environ.pop("TESTDB_CACHE_DIR", None)
    try:
        project = default_cache_dir(REPO)
    finally:
        if saved is not None:
            os.environ["TESTDB_CACHE_DIR"] = saved
    return project.with_name(project.name + "-bench")


def open_server(url: str | None, cache_dir: Path | None) -> Server:
    if url:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        server = Server(parsed, embedded=False, cache_dir=None, started_here=False)
    else:
        from finreport_testdb.embedded import EmbeddedServer

        cache = cache_dir or bench_cache_dir()
        embedded = EmbeddedServer(cache)
        info = embedded.start()
        server = Server(
            info.url,
            embedded=True,
            cache_dir=cache,
            started_here=embedded.last_start_action != "running",
        )
    with server.connect() as conn:
        server.version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]
        try:
            server.data_dir = str(conn.execute("SHOW data_directory").fetchone()[0])
        except psycopg.Error:
            server.data_dir = ""
    server.data_fs = filesystem_of(server.data_dir) if server.data_dir else "unknown"
    return server


def filesystem_of(path: str) -> str:
    """'tmpfs' or the filesystem type of the mount holding `path` (from /proc/self/mountinfo)."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                mount = parts[4]
                sep = parts.index("-")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                    best
                ):
                    best, fstype = mount, parts[sep + 1]
    except OSError:
        pass
    if not Path(path).exists():  # a remote server: we cannot see its disk
        return f"{fstype}? (not on this machine)"
    return f"{fstype} ({best})"


def machine_info(server: Server) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kb = int(fh.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": server.version,
        "server": "embedded (finreport-testdb)" if server.embedded else "external (--url)",
        "data_dir": server.data_dir,
        "data_dir_fs": server.data_fs,
        "loadavg_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


@contextmanager
def scratch_database(server: Server, name: str, template: str | None = None) -> Iterator[str]:
    with server.connect() as conn:
        q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            q = sql.SQL("{} TEMPLATE {}").format(q, sql.Identifier(template))
        conn.execute(q)
    try:
        yield name
    finally:
        with server.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 900,
    check: bool = True,
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a whole process; return (wall seconds, result)."""
    started = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    if check and proc.returncode != 0:
        lines = (proc.stdout + "\n" + proc.stderr).strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("E ")][:15]
        tail = "\n".join([*errors, "...", *lines[-25:]])
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{tail}")
    return wall, proc
