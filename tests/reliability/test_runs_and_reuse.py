"""Runs, reuse and isolation under attack: a rebuild that
dropped the template runs were cloning from, `fresh` tests that did not start from the template,
`--testdb-reuse` carrying a run's commits into the next, same-namespace runs sharing per-test
names, and a pool leftover no run removed. Real servers; each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

from finreport_testdb.core.names import Naming
from finreport_testdb.core.urls import psycopg_connect_kwargs

from .conftest import (
    child_env,
    comments,
    core,
    inner_pytest,
    run_cli,
    write_tests,
)

#: A test module whose tests commit through an engine of their own on the worker database.
APP = """
    import os
    import psycopg
    import pytest


    def connect(test_database):
        return psycopg.connect(test_database.url_string.replace("+psycopg", ""), autocommit=True)
"""


def test_rebuild_refuses_a_template_a_run_in_progress_holds(trust_base: URL, project: Path) -> None:
    """`prepare-template --rebuild` (and `--testdb-rebuild`) dropped the template under the build
    lock only; runs in progress in other namespaces lost it mid-run. The rebuild now needs the
    template's hold lock exclusively, as `clean` does."""
    env = child_env(trust_base)
    assert run_cli("prepare-template", env=env, cwd=project).returncode == 0
    with core(trust_base, project, namespace="alpha") as run_in_progress:
        template = run_in_progress.hold_template()
        result = run_cli("prepare-template", "--rebuild", env=env, cwd=project)
        assert result.returncode == 1, result.describe()
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot rebuild template" in lines[0], lines
        assert template in comments(trust_base, template)  # still there, still usable
        run_in_progress.clone_for_worker("gw0")
    result = run_cli("prepare-template", "--rebuild", "--json", env=env, cwd=project)
    assert result.returncode == 0 and result.json()["action"] == "built", result.describe()


def test_a_fresh_test_after_rollback_tests_starts_from_the_template(
    trust_base: URL, project: Path
) -> None:
    """A rollback test's sequences and the app's own commits survive its rollback; the next
    `fresh` test found them (it reset only after fresh tests)."""
    write_tests(
        project,
        APP
        + """
    def test_1_rollback_test_advances_a_sequence(db_session):
        from sqlalchemy import text
        db_session.execute(text("INSERT INTO accounts (name) VALUES ('tmp')"))

    def test_2_unmarked_test_whose_app_code_commits(test_database):
        with connect(test_database) as c:
            c.execute("INSERT INTO accounts (name) VALUES ('committed')")

    @pytest.mark.testdb(isolation="fresh")
    def test_3_fresh_starts_from_the_template(test_database):
        with connect(test_database) as c:
            new_id = c.execute("INSERT INTO accounts (name) VALUES ('x') RETURNING id").fetchone()
            count = c.execute("SELECT count(*) FROM accounts").fetchone()
        assert (new_id[0], count[0]) == (3, 3)
    """,
    )
    result = inner_pytest("-p", "no:randomly", env=child_env(trust_base), cwd=project)
    assert result.returncode == 0, result.describe()
    assert "3 passed" in result.stdout


def test_reuse_never_carries_a_fresh_tests_commits_into_the_next_run(
    trust_base: URL, project: Path
) -> None:
    write_tests(
        project,
        APP
        + """
    def test_a_rollback_test_sees_the_template(test_database):
        with connect(test_database) as c:
            assert c.execute("SELECT count(*) FROM accounts").fetchone()[0] == 2

    @pytest.mark.testdb(isolation="fresh")
    def test_z_fresh_test_commits(test_database):
        with connect(test_database) as c:
            c.execute("INSERT INTO accounts (name) VALUES ('committed-by-fresh-test')")
    """,
    )
    env = child_env(trust_base)
    for run in range(3):
        result = inner_pytest("-p", "no:randomly", "--testdb-reuse", env=env, cwd=project)
        assert result.returncode == 0, f"run {run + 1}\n{result.describe()}"


def test_same_namespace_run_is_refused_before_it_shares_per_test_names(
    trust_base: URL, project: Path
) -> None:
    """A run that only uses `fresh_database` never cloned its worker database, so a second run
    in the same namespace was not refused and the two shared `<base>_serial_t<k>` (one dropped
    the other's database mid-test). The per-test clone now claims the worker's name."""
    write_tests(
        project,
        """
    def test_per_test_database(fresh_database):
        assert fresh_database.name.endswith("_t1")
    """,
    )
    base = trust_base.database
    assert base
    with core(trust_base, project) as first_run:
        first_run.ensure_template()
        # The first run, between two tests: its first per-test database was dropped (its claim
        # released), its next one not cloned yet.
        done = first_run.clone_for_test("master", 1)
        first_run.drop_database(done.name)
        result = inner_pytest("-p", "no:randomly", env=child_env(trust_base), cwd=project)
        assert result.returncode != 0, result.describe()
        assert "in use by another test run with the same namespace" in result.stdout
        assert Naming(base).per_test("master", 1) not in comments(trust_base, base)


def test_reused_database_is_left_pristine_at_session_end(trust_base: URL, project: Path) -> None:
    write_tests(
        project,
        APP
        + """
    @pytest.mark.testdb(isolation="fresh")
    def test_fresh_test_commits(test_database):
        with connect(test_database) as c:
            c.execute("INSERT INTO accounts (name) VALUES ('committed')")
    """,
    )
    result = inner_pytest(
        "-p", "no:randomly", "--testdb-reuse", env=child_env(trust_base), cwd=project
    )
    assert result.returncode == 0, result.describe()
    base = trust_base.database
    assert base
    kept = Naming(base).worker("master")
    with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(trust_base, database=kept)) as c:
        row = c.execute("SELECT count(*) FROM accounts").fetchone()
    assert row is not None and row[0] == 2
