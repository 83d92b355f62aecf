"""Inputs from the machine that a user or another local user controls (cache directories, server
faults, URL options, comments on databases). Each test runs the real `testdb` CLI (or pytest)
against real servers and fails on the code before the fix (verified by reverting it)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL

from finreport_testdb import embedded
from finreport_testdb.core.marker import Marker
from finreport_testdb.core.names import Naming, auto_namespace
from finreport_testdb.core.urls import psycopg_connect_kwargs
from finreport_testdb.embedded import EmbeddedServer, default_cache_dir, find_bindir
from finreport_testdb.embedded import layout as embedded_layout
from finreport_testdb.embedded.binaries import major, server_version
from finreport_testdb.errors import EmbeddedServerError

from .conftest import (
    TESTDB,
    Gate,
    Spawned,
    child_env,
    comments,
    core,
    create_database,
    execute,
    mounted_tmpfs,
    run_cli,
    wait_for,
    write_project,
)
from .test_hostile_input import SYNTAX_ERROR, error_line

# ------------------------------------------------------------------------------ item 12


def test_status_names_an_unloadable_migration_in_one_line(scram_base: URL, tmp_path: Path) -> None:
    """`status` still lists the databases, and says in one stderr line which file is broken."""
    project = write_project(tmp_path / "project", revisions=SYNTAX_ERROR)
    result = run_cli("status", env=child_env(scram_base), cwd=project)
    assert result.returncode == 0, result.describe()
    assert "current fingerprint (unknown: see below)" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: current fingerprint unknown: ")
    assert "0004_broken.py" in lines[0] and "SyntaxError" in lines[0], lines
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------ item 13

HUGE_COMMENT = "[" * 50000 + "]" * 50000


def test_huge_nested_comment_and_naive_created_at_do_not_break_status_or_clean(
    scram_base: URL, project: Path
) -> None:
    """A 100 kB nested-JSON comment on a database that is not even ours, and a marker whose
    created_at has no zone: status and clean work, the decoy survives, the marked one is shown
    with an age (taken as UTC) and cleaned."""
    base = scram_base.database
    assert base
    decoy = f"{base}x_decoy"  # not named like ours: every database's comment is parsed
    create_database(scram_base, decoy, comment=HUGE_COMMENT)
    naive = Marker("worker", base, "", "f" * 64, "2024-01-01T00:00:00", worker="gw3")
    worker = Naming(base).worker("gw3")
    create_database(scram_base, worker, comment=naive.to_comment())
    env = child_env(scram_base)

    status = run_cli("status", "--json", env=env, cwd=project)
    assert status.returncode == 0, status.describe()
    rows = {row["name"]: row for row in status.json()["databases"]}
    assert set(rows) == {worker}
    assert rows[worker]["age_seconds"] > 365 * 86400  # 2024 read as UTC, not a crash
    table = run_cli("status", env=env, cwd=project)
    assert table.returncode == 0 and worker in table.stdout, table.describe()

    cleaned = run_cli("clean", "--yes", "--json", env=env, cwd=project)
    assert cleaned.returncode == 0, cleaned.describe()
    assert cleaned.json()["dropped"] == [worker]
    assert set(comments(scram_base, base)) == {decoy}
    assert "Traceback" not in status.output + table.output + cleaned.output


# ------------------------------------------------------------------------------ item 14


@pytest.mark.parametrize(
    ("driver", "query"),
    [
        ("asyncpg", {"prepared_statement_cache_size": "0", "ssl": "disable"}),
        ("psycopg", {"foo": "bar", "application_name": "round2"}),
    ],
    ids=["asyncpg-options", "unknown-option"],
)
def test_driver_options_in_the_url_do_not_reach_libpq(
    driver: str, query: dict[str, str], scram_base: URL, project: Path
) -> None:
    """Administration and the build keep libpq's options only (asyncpg's `ssl` becomes
    `sslmode`); the URL a worker's tests get keeps every option for its own driver."""
    url = scram_base.set(drivername=f"postgresql+{driver}").update_query_dict(query)
    env = child_env(url)
    built = run_cli("prepare-template", "--json", env=env, cwd=project)
    assert built.returncode == 0, built.describe()
    assert built.json()["action"] == "built"
    status = run_cli("status", env=env, cwd=project)
    assert status.returncode == 0 and "yes" in status.stdout, status.describe()
    worker = run_cli("url", "--worker", "gw0", env=env, cwd=project)
    assert worker.returncode == 0, worker.describe()
    for key, value in query.items():
        assert f"{key}={value}" in worker.stdout  # handed to the app unchanged
    cleaned = run_cli("clean", "--templates", "--yes", env=env, cwd=project)
    assert cleaned.returncode == 0, cleaned.describe()
    assert comments(scram_base, str(scram_base.database)) == {}


# ------------------------------------------------------------------------------ item 15

PERCENT_SEED = """
CREATE TABLE percent_seed (name text);
INSERT INTO percent_seed VALUES ('abc'), ('xyz');
DELETE FROM percent_seed WHERE name NOT LIKE 'a%';
DO $$ BEGIN RAISE NOTICE '% rows left', (SELECT count(*) FROM percent_seed); END $$;
"""


def test_seed_sql_with_percent_signs_runs_as_written(scram_base: URL, project: Path) -> None:
    (project / "seed").mkdir()
    (project / "seed" / "percent.sql").write_text(PERCENT_SEED)
    env = child_env(scram_base, TESTDB_SEED="seed/*.sql")
    built = run_cli("prepare-template", "--json", env=env, cwd=project)
    assert built.returncode == 0, built.describe()
    databases = core(scram_base, project, seed="seed/*.sql")
    clone = databases.clone_for_worker("gw0")
    with psycopg.connect(**psycopg_connect_kwargs(clone.url)) as conn:
        rows = conn.execute("SELECT name FROM percent_seed").fetchall()
    databases.close()
    assert rows == [("abc",)]


# ------------------------------------------------------------------------------ item 16


@pytest.mark.parametrize("how", ["drop", "terminate"])
def test_build_killed_from_outside_says_so(
    how: str, scram_base: URL, project: Path, gate: Gate, spawn: Callable[..., Spawned]
) -> None:
    """Dropping the scratch database (with FORCE) or terminating the migration's session under a
    running migration: the error says what happened, not "fix that migration" / "check env.py"."""
    base = scram_base.database
    assert base
    env = child_env(scram_base, RELIABILITY_SQL_BLOCK="1", **gate.env)
    builder = spawn([TESTDB, "prepare-template"], env=env, cwd=project)
    wait_for(lambda: gate.builds() == 1, what="the build to enter the gate revision")
    scratch = Naming(base).scratch(core(scram_base, project).fingerprint)

    def sleeping() -> bool:
        kwargs = psycopg_connect_kwargs(scram_base, database="postgres")
        with psycopg.connect(autocommit=True, **kwargs) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
                (scratch, "%pg_sleep%"),
            ).fetchone()
        return bool(row and row[0])

    wait_for(sleeping, what="the migration to block in pg_sleep")
    if how == "drop":
        statement = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch))
        said = f"another process dropped its database '{scratch}'"
    else:
        statement = sql.SQL(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {}"
        ).format(sql.Literal(scratch))
        said = "another process terminated its connection"
    execute(scram_base, statement)  # type: ignore[arg-type]
    result = builder.result(timeout=60)
    assert result.returncode == 1, result.describe()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the build was interrupted from outside"), last
    assert said in last and "run again" in last, last
    assert "fix that migration" not in last and "check env.py" not in last
    assert comments(scram_base, base) == {}


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A 120 MB tmpfs: a file system the embedded server can really fill up (needs root)."""
    with mounted_tmpfs("120m") as mountpoint:
        yield mountpoint


def test_full_file_system_is_named_with_the_fix(tiny_tmpfs: Path, tmp_path: Path) -> None:
    """Fill the embedded server's file system until it PANICs and shuts down, as a full
    /dev/shm does; the next command fails at once naming the full disk and the way out."""
    cache = tiny_tmpfs / "cache"
    env = child_env(None, TESTDB_CACHE_DIR=str(cache))
    cwd = tmp_path
    try:
        started = run_cli("server", "start", "--json", env=env, cwd=cwd, timeout=120)
        assert started.returncode == 0, started.describe()
        port = started.json()["port"]
        password = (cache / "password").read_text()
        with psycopg.connect(
            host="127.0.0.1",
            port=port,
            user="testdb",
            password=password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute("CREATE TABLE junk (x text)")
            with pytest.raises(psycopg.errors.DiskFull):
                for _ in range(500):
                    conn.execute(
                        "INSERT INTO junk SELECT repeat(md5(random()::text), 30) "
                        "FROM generate_series(1, 2000)"
                    )
            with pytest.raises(psycopg.OperationalError):
                conn.execute("CHECKPOINT")  # cannot write its files: PANIC, the server goes down
        again = run_cli("server", "start", env=env, cwd=cwd, timeout=120)
        assert again.returncode == 1, again.describe()
        line = error_line(again.stderr)
        assert "No space left on device" in line, line
        assert "is full: free space there" in line and "TESTDB_CACHE_DIR" in line, line
    finally:
        run_cli("server", "stop", env=env, cwd=cwd, timeout=120)


def test_server_hung_after_panic_is_reported_without_the_60_s_wait(tmp_path: Path) -> None:
    """Simulated: the postmaster is stopped (SIGSTOP: alive, not answering) and its log ends in a
    PANIC, as a server wedged by a full disk. `server start` must say so within seconds."""
    cache = Path(f"/dev/shm/frt-round2-hung-{uuid.uuid4().hex[:8]}")
    env = child_env(None, TESTDB_CACHE_DIR=str(cache))
    pid = 0
    try:
        started = run_cli("server", "start", "--json", env=env, cwd=tmp_path, timeout=120)
        assert started.returncode == 0, started.describe()
        pid = started.json()["pid"]
        with open(cache / "server.log", "a") as log:
            log.write(
                "2026-01-01 00:00:00.000 UTC [1] PANIC:  could not write to file "
                '"pg_wal/xlogtemp.1": No space left on device\n'
            )
        os.kill(pid, signal.SIGSTOP)
        again = run_cli("server", "start", env=env, cwd=tmp_path, timeout=30)
        assert again.returncode == 1, again.describe()
        line = error_line(again.stderr)
        assert f"(pid {pid}) does not answer" in line and "PANIC:" in line, line
        assert "TESTDB_CACHE_DIR" in line, line
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
        run_cli("server", "stop", env=env, cwd=tmp_path, timeout=120)
        shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------------------ item 17


def test_clean_namespace_auto_means_the_auto_namespace(scram_base: URL, project: Path) -> None:
    namespace = auto_namespace(project.resolve())
    databases = core(scram_base, project, namespace="auto")
    databases.ensure_template()
    worker = databases.clone_for_worker("gw0").name
    databases.close()
    assert worker == Naming(str(scram_base.database), namespace).worker("gw0")
    result = run_cli(
        "clean", "--namespace", "auto", "--yes", "--json", env=child_env(scram_base), cwd=project
    )
    assert result.returncode == 0, result.describe()
    assert result.json()["dropped"] == [worker]
    assert set(comments(scram_base, str(scram_base.database))) == {databases.template_name}


@pytest.mark.parametrize("command", [["clean", "--yes"], ["status"]])
def test_clean_and_status_outside_a_project_start_no_server(
    command: list[str], tmp_path: Path
) -> None:
    cache = Path(f"/dev/shm/frt-round2-noproj-{uuid.uuid4().hex[:8]}")
    env = child_env(None, TESTDB_CACHE_DIR=str(cache))
    empty = tmp_path / "not-a-project"
    empty.mkdir()
    try:
        result = run_cli(*command, env=env, cwd=empty)
        assert result.returncode == 1, result.describe()
        line = error_line(result.stderr)
        assert "no project here" in line and "--url" in line, line
        assert not (cache / "data").exists(), "an embedded server was created"
        status = run_cli("server", "status", env=env, cwd=empty)
        assert status.returncode == 3, status.describe()
    finally:
        run_cli("server", "stop", env=env, cwd=empty, timeout=120)
        shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------------------ item 10


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating another user's dir needs root")


@pytest.fixture
def squat_root() -> Iterator[Path]:
    root = Path(f"/dev/shm/frt-round2-squat-{uuid.uuid4().hex[:8]}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@needs_root
@pytest.mark.parametrize("how", ["other-owner", "mode-0777"])
def test_squatted_cache_dir_is_refused(how: str, squat_root: Path, tmp_path: Path) -> None:
    cache = squat_root
    cache.mkdir(mode=0o700)
    if how == "other-owner":
        os.chown(cache, _nobody().pw_uid, _nobody().pw_gid)
    else:
        os.chmod(cache, 0o777)
    env = child_env(None, TESTDB_CACHE_DIR=str(cache))
    result = run_cli("server", "start", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.describe()
    line = error_line(result.stderr)
    reason = f"belongs to uid {_nobody().pw_uid}" if how == "other-owner" else "mode 777"
    assert reason in line and "TESTDB_CACHE_DIR" in line, line
    assert sorted(p.name for p in cache.iterdir()) == []  # nothing written, nothing started
    refused = run_cli("server", "status", env=env, cwd=tmp_path)  # nor trusted by status
    assert refused.returncode == 1 and reason in error_line(refused.stderr), refused.describe()


@needs_root
def test_squatted_initdb_cache_is_refused_and_nothing_runs_from_it(
    squat_root: Path, tmp_path: Path
) -> None:
    """A planted initdb cache inside TESTDB_CACHE_DIR (where the initdb cache now lives), owned
    by another user, with an archive_command: refused before anything is copied or run."""
    pg_major = major(server_version(find_bindir()))
    squat_root.mkdir(mode=0o711)  # ours, and passable for the server user
    planted = squat_root / "initdb-cache" / pg_major / "testdb"
    planted.mkdir(parents=True)
    witness = tmp_path / "pwned"
    (planted / "PG_VERSION").write_text(f"{pg_major}\n")
    (planted / "postgresql.auto.conf").write_text(
        f"archive_mode = on\narchive_command = 'touch {witness}'\n"
    )
    nobody = _nobody()
    for path in [squat_root / "initdb-cache", planted.parent, planted, *planted.iterdir()]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    env = child_env(None, TESTDB_CACHE_DIR=str(squat_root))
    result = run_cli("server", "start", env=env, cwd=tmp_path)
    try:
        assert result.returncode == 1, result.describe()
        line = error_line(result.stderr)
        assert "initdb cache" in line and f"belongs to uid {nobody.pw_uid}" in line, line
        assert not (squat_root / "data").exists() and not (squat_root / "data.new").exists()
        assert not witness.exists()
    finally:
        run_cli("server", "stop", env=env, cwd=tmp_path, timeout=120)


@needs_root
def test_squatted_cache_base_is_refused(
    squat_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-user base (/dev/shm/finreport-testdb-<uid>) created first by someone else: the
    default cache dir inside it is refused before anything is created there. The base location
    is redirected to a scratch path, since the real one is shared by this machine's runs."""
    squat_root.mkdir(mode=0o755)
    os.chown(squat_root, _nobody().pw_uid, _nobody().pw_gid)
    monkeypatch.setattr(embedded_layout, "cache_base", lambda: squat_root)
    monkeypatch.delenv("TESTDB_CACHE_DIR", raising=False)
    server = EmbeddedServer(default_cache_dir(tmp_path))
    with pytest.raises(EmbeddedServerError, match=r"cache base .* belongs to uid") as caught:
        server.start()
    assert "TESTDB_CACHE_DIR" in str(caught.value)
    assert list(squat_root.iterdir()) == []


@needs_root
def test_own_cache_base_left_0700_is_opened_for_the_server_user(
    squat_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.1.0 created the per-user base 0700 (on the initdb-cache path), so as root the server user
    could reach no project's cache under it and `demo.sh` failed after an upgrade. The base is our
    own (the ownership check runs first), so it is opened for search only: 0711."""
    squat_root.mkdir(mode=0o700)
    os.chmod(squat_root, 0o700)
    monkeypatch.setattr(embedded_layout, "cache_base", lambda: squat_root)
    monkeypatch.delenv("TESTDB_CACHE_DIR", raising=False)
    # Binaries that cannot run stop the start right after the reachability checks, so no server
    # is started: the error is then about them, no longer "no search permission on <base>".
    server = EmbeddedServer(default_cache_dir(tmp_path), bindir=Path("/nonexistent-testdb/bin"))
    with pytest.raises(EmbeddedServerError, match=r"cannot run .*postgres --version") as caught:
        server.start()
    assert "search permission" not in str(caught.value)
    assert stat.S_IMODE(squat_root.stat().st_mode) == 0o711


def test_testdb_cache_dir_moves_the_initdb_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESTDB_CACHE_DIR", "/dev/shm/frt-round2-moved")
    assert embedded.default_initdb_cache_dir() == Path("/dev/shm/frt-round2-moved/initdb-cache")
    assert default_cache_dir(Path("/x")) == Path("/dev/shm/frt-round2-moved")
