# ruff: noqa: F811  (make_project, imported from test_plugin, is a fixture)
"""The warm pool of clones (issue 12): swaps under the worker's own name, exhaustion, crash, off.

Real servers throughout. The pool's thread is observed through the server (which databases exist,
with which markers) and through `wait_full`, never through sleeps.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from test_plugin import Project, make_project  # noqa: F401  (make_project is a fixture)

from finreport_testdb import pool_reset
from finreport_testdb.errors import ConfigError
from finreport_testdb.manager import ProjectDatabases
from finreport_testdb.marker import ROLE_POOL, ROLE_TEST, ROLE_TRASH, ROLE_WORKER, owned_marker
from finreport_testdb.settings import resolve_settings
from finreport_testdb.urls import psycopg_connect_kwargs, render_for_driver

WORKER = "gw0"


def markers(server: URL, prefix: str) -> dict[str, str | None]:
    """name -> role of its ownership marker (None: not ours) for every database named prefix*."""
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database="postgres")
    ) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE starts_with(datname, %s)",
            (prefix,),
        ).fetchall()
    result: dict[str, str | None] = {}
    for name, comment in rows:
        marker = owned_marker(name, comment, prefix)
        result[name] = marker.role if marker else None
    return result


def count_accounts(url: URL) -> int:
    engine = create_engine(render_for_driver(url))
    with engine.connect() as connection:
        value = int(connection.execute(text("SELECT count(*) FROM accounts")).scalar_one())
    engine.dispose()
    return value


def ready(databases: ProjectDatabases) -> ProjectDatabases:
    databases.ensure_template()
    databases.clone_for_worker(WORKER)
    return databases


def test_reset_swaps_a_ready_clone_in_under_the_worker_name(
    make_databases: Callable[..., ProjectDatabases], server: URL, base_name: str
) -> None:
    databases = ready(make_databases(pool_size=2))
    pool = databases.start_pool(WORKER)
    assert pool is not None and pool.wait_full(60)
    worker = databases.naming.worker(WORKER)
    assert markers(server, base_name) == {
        databases.template_name: "template",
        worker: ROLE_WORKER,
        f"{worker}_p1": ROLE_POOL,
        f"{worker}_p2": ROLE_POOL,
    }
    # An engine built before the reset (as an app builds it at import time) and used once.
    pool_reset.install()
    app_engine = create_engine(render_for_driver(databases.worker_url(WORKER)))
    with app_engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts (name) VALUES ('committed')"))
        assert connection.execute(text("SELECT count(*) FROM accounts")).scalar() == 3

    reset = databases.reset_worker(WORKER)

    assert reset.name == worker
    with app_engine.connect() as connection:  # same engine, same URL: the pristine database
        assert connection.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
    app_engine.dispose()
    # p1 became the worker database; the used one is trash, then dropped in the background;
    # the pool refills (p3). Every marker names the database it sits on at every point.
    assert pool.wait_full(60)
    assert markers(server, base_name) == {
        databases.template_name: "template",
        worker: ROLE_WORKER,
        f"{worker}_p2": ROLE_POOL,
        f"{worker}_p3": ROLE_POOL,
    }
    databases.close()
    assert markers(server, base_name) == {databases.template_name: "template", worker: ROLE_WORKER}


def test_exhausted_pool_waits_and_every_reset_is_pristine(
    make_databases: Callable[..., ProjectDatabases], server: URL, base_name: str
) -> None:
    """More back-to-back resets than the pool holds, with no work in between: each waits for a
    clone instead of failing, and none leaks the previous one's commit."""
    databases = ready(make_databases(pool_size=1))
    databases.start_pool(WORKER)
    url = databases.worker_url(WORKER)
    for i in range(8):
        engine = create_engine(render_for_driver(url))
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO accounts (name) VALUES (:n)"), {"n": f"r{i}"})
        engine.dispose()
        databases.reset_worker(WORKER)
        assert count_accounts(url) == 2
    databases.close()
    roles = markers(server, base_name)
    assert sorted(map(str, roles.values())) == ["template", ROLE_WORKER], roles


def test_a_stopped_thread_means_direct_clones_and_a_bounded_backlog(
    make_databases: Callable[..., ProjectDatabases], server: URL, base_name: str
) -> None:
    """With the thread gone (say, its connection died) resets still work, cloning directly, and
    the used databases nobody drops in the background stay bounded by pool_size."""
    databases = ready(make_databases(pool_size=1))
    pool = databases.start_pool(WORKER)
    assert pool is not None and pool.wait_full(60)
    pool.stop()
    url = databases.worker_url(WORKER)
    for _ in range(4):
        databases.reset_worker(WORKER)
        assert count_accounts(url) == 2
        roles = list(markers(server, base_name).values())
        assert roles.count(ROLE_TRASH) <= 1, roles
    databases.close()
    assert sorted(map(str, markers(server, base_name).values())) == ["template", ROLE_WORKER]


def test_fresh_database_comes_from_the_pool_and_is_dropped_in_the_background(
    make_databases: Callable[..., ProjectDatabases], server: URL, base_name: str
) -> None:
    databases = ready(make_databases(pool_size=2))
    pool = databases.start_pool(WORKER)
    assert pool is not None and pool.wait_full(60)

    fresh = databases.clone_for_test(WORKER, 7)

    assert fresh.name == databases.naming.per_test(WORKER, 7)
    assert markers(server, base_name)[fresh.name] == ROLE_TEST
    assert count_accounts(fresh.url) == 2
    databases.drop_later(WORKER, fresh.name)
    assert pool.wait_full(60)  # also waits for the drop
    assert fresh.name not in markers(server, base_name)


def test_the_pool_is_on_by_default(make_databases: Callable[..., ProjectDatabases]) -> None:
    default = ready(make_databases())
    assert default.settings.pool_size == 2
    assert default.start_pool(WORKER) is not None
    default.close()  # it holds its worker database; the next manager clones the same name
    assert ready(make_databases(pool_size=0)).start_pool(WORKER) is None


def test_pool_size_zero_turns_the_pool_off(
    make_databases: Callable[..., ProjectDatabases], server: URL, base_name: str
) -> None:
    databases = ready(make_databases(pool_size=0))
    assert databases.start_pool(WORKER) is None
    url = databases.worker_url(WORKER)
    engine = create_engine(render_for_driver(url))
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts (name) VALUES ('x')"))
    engine.dispose()
    databases.reset_worker(WORKER)
    fresh = databases.clone_for_test(WORKER, 1)
    assert count_accounts(url) == 2
    assert set(markers(server, base_name).values()) == {"template", ROLE_WORKER, ROLE_TEST}
    databases.drop_later(WORKER, fresh.name)  # no pool: dropped right away
    assert fresh.name not in markers(server, base_name)


@pytest.mark.parametrize(
    ("raw", "expected"), [("0", 0), ("3", 3), (" 2 ", 2)], ids=["zero", "three", "spaces"]
)
def test_pool_size_from_the_environment(tmp_path: Path, raw: str, expected: int) -> None:
    settings = resolve_settings(cwd=tmp_path, environ={"TESTDB_POOL_SIZE": raw})
    assert settings.pool_size == expected
    assert settings.sources["pool_size"] == "env TESTDB_POOL_SIZE"


@pytest.mark.parametrize("raw", ["-1", "two", "1.5", "true", ""])
def test_bad_pool_size_is_a_one_line_error(tmp_path: Path, raw: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[tool.testdb]\npool_size = "{raw}"\n')
    with pytest.raises(ConfigError) as info:
        resolve_settings(cwd=tmp_path, environ={})
    message = str(info.value)
    assert "pool_size" in message and "e.g. 2" in message and "\n" not in message


# --------------------------------------------------------------------------- through pytest

POOL_TESTS = """
    import pytest
    from sqlalchemy import text

    pytestmark = pytest.mark.testdb(isolation="fresh")


    @pytest.mark.parametrize("i", range(6))
    def test_fresh_commits(i, db_bind):
        with db_bind.begin() as connection:
            assert connection.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
            connection.execute(text("INSERT INTO accounts (name) VALUES ('x')"))


    @pytest.mark.parametrize("i", range(3))
    def test_fresh_database(i, fresh_database):
        assert fresh_database.name.endswith(tuple(f"_t{k}" for k in range(1, 10)))
"""


@pytest.mark.parametrize("args", [("-n", "2"), ()], ids=["n2", "serial"])
def test_a_normal_run_leaves_no_pool_database_behind(
    make_project: Callable[..., Project],
    scram_server: URL,
    args: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = make_project(scram_server)
    monkeypatch.setenv("TESTDB_POOL_SIZE", "2")  # the pool is opt-in
    project.write(test_pool=POOL_TESTS, test_pool_copy=POOL_TESTS)
    result = project.run(*args, subprocess=True)
    result.assert_outcomes(passed=18)
    assert project.databases() == project.templates(), project.databases()


CRASH_TEST = """
    import os
    import signal

    import pytest
    from sqlalchemy import text

    from finreport_testdb.marker import ROLE_TRASH


    @pytest.mark.testdb(isolation="fresh")
    def test_crash_with_a_full_pool(testdb_databases, testdb_worker_id, db_bind):
        with db_bind.begin() as connection:
            connection.execute(text("INSERT INTO accounts (name) VALUES ('x')"))
        testdb_databases.reset_worker(testdb_worker_id)  # leaves a used database as trash
        pool = testdb_databases.pools[testdb_worker_id]
        # Hold a trash database as a crash right after a swap leaves it (its drop not yet run).
        trash, marker = pool.trash_name()
        with testdb_databases.admin() as admin:
            admin.create_database(trash, comment=marker.to_comment())
        assert pool.wait_full(60)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_clean_removes_the_pool_and_trash_after_a_crash(
    make_project: Callable[..., Project], scram_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(scram_server)
    monkeypatch.setenv("TESTDB_POOL_SIZE", "2")  # the pool is opt-in
    project.write(test_crash=CRASH_TEST)
    result = project.run("-n", "1", subprocess=True)
    assert result.ret != 0
    left = markers(scram_server, project.base)
    roles = sorted(str(r) for r in left.values() if r != "template")
    assert roles == [ROLE_POOL, ROLE_POOL, ROLE_TRASH, ROLE_WORKER], left

    cleaned = subprocess.run(  # TESTDB_URL is the project's (make_project set it)
        [str(Path(sys.executable).with_name("testdb")), "clean", "--yes"],
        cwd=project.pytester.path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cleaned.returncode == 0, cleaned.stderr
    assert project.databases() == project.templates(), cleaned.stdout
