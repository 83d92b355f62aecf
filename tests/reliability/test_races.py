"""Races: many processes building one template, CI shards sharing one server."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL

from finreport_testdb.core.marker import ROLE_TEMPLATE, Marker
from finreport_testdb.core.ownership import template_lock_label

from .conftest import (
    PYTHON,
    TESTDB,
    Gate,
    Spawned,
    advisory_waiters,
    child_env,
    comments,
    core,
    database_flags,
    run_cli,
    run_parallel,
    wait_for,
    write_tests,
)

RACERS = 8
SHARDS = 4


def template_name(url: URL, project: Path) -> str:
    return core(url, project).template_name


def assert_single_ready_template(server: URL, base: str, template: str) -> None:
    databases = comments(server, base)
    assert set(databases) == {template}, f"expected only the template, found {sorted(databases)}"
    marker = Marker.parse(databases[template])
    assert marker is not None and marker.role == ROLE_TEMPLATE and marker.ready
    assert database_flags(server, template) == (True, False)  # IS_TEMPLATE, no connections


def test_eight_prepare_template_processes_build_once(
    scram_base: URL, project: Path, gate: Gate, spawn
) -> None:
    """8 `testdb prepare-template` at once on a fresh fingerprint: one build, 7 reuse, all exit 0.

    The gate revision holds the first build open until the 7 others are queued on the advisory
    lock (seen in pg_locks), so the race is real, not an accident of start-up timing.
    """
    base = scram_base.database
    assert base
    template = template_name(scram_base, project)
    env = child_env(scram_base, **gate.env)
    racers: list[Spawned] = [
        spawn([TESTDB, "prepare-template", "--json"], env=env, cwd=project) for _ in range(RACERS)
    ]

    wait_for(lambda: gate.builds() == 1, what="the first build to start")
    label = template_lock_label(template)
    wait_for(
        lambda: advisory_waiters(scram_base, label) == RACERS - 1,
        what=f"{RACERS - 1} processes waiting on the template lock",
    )
    gate.open()
    results = [racer.result() for racer in racers]

    for result in results:
        assert result.returncode == 0, result.describe()
    actions = sorted(result.json()["action"] for result in results)
    assert actions == ["built"] + ["reused"] * (RACERS - 1)
    assert {result.json()["template"] for result in results} == {template}
    assert gate.builds() == 1, "the migration chain ran more than once"
    assert_single_ready_template(scram_base, base, template)


SHARD_TESTS = """
    import os

    import pytest
    from sqlalchemy import text

    NS = os.environ["TESTDB_NAMESPACE"]


    @pytest.mark.parametrize("k", range(4))
    def test_own_database(test_database, db_engine, k):
        worker = os.environ["PYTEST_XDIST_WORKER"]
        with open(os.environ["RELIABILITY_NAMES"], "a") as fh:
            fh.write(f"{NS} {worker} {test_database.name}\\n")
        with db_engine.begin() as conn:
            conn.execute(text("INSERT INTO accounts (name) VALUES (:n)"), {"n": f"{NS}:{worker}:{k}"})
        with db_engine.connect() as conn:
            names = conn.execute(text("SELECT name FROM accounts WHERE name LIKE '%:%'")).scalars()
            foreign = [n for n in names if not n.startswith(f"{NS}:{worker}:")]
        assert not foreign, f"another session wrote into this database: {foreign}"


    def test_rollback(db_session):
        db_session.execute(text("INSERT INTO accounts (name) VALUES ('rolled back')"))
        db_session.commit()
        assert db_session.execute(text("SELECT count(*) FROM gate_passed")).scalar() == 0
"""


def test_four_ci_shards_share_one_server(
    scram_base: URL, project: Path, gate: Gate, spawn, tmp_path: Path
) -> None:
    """4 `pytest -n 2` sessions, namespaces shard1..4, started at once on one server: all green,
    8 distinct worker databases, one template build, nothing left behind."""
    base = scram_base.database
    assert base
    write_tests(project, SHARD_TESTS)
    template = template_name(scram_base, project)
    names_file = tmp_path / "names.txt"
    shards = [
        spawn(
            [PYTHON, "-m", "pytest", "-n", "2", "tests"],
            env=child_env(
                scram_base,
                TESTDB_NAMESPACE=f"shard{i}",
                RELIABILITY_NAMES=str(names_file),
                **gate.env,
            ),
            cwd=project,
        )
        for i in range(1, SHARDS + 1)
    ]
    wait_for(lambda: gate.builds() == 1, timeout=60, what="the first shard to start the build")
    wait_for(
        lambda: advisory_waiters(scram_base, template_lock_label(template)) == SHARDS - 1,
        timeout=60,
        what=f"{SHARDS - 1} shards waiting on the template lock",
    )
    gate.open()
    results = [shard.result(timeout=180) for shard in shards]

    for result in results:
        assert result.returncode == 0, result.describe()
        assert re.search(r"\b5 passed\b", result.stdout), result.describe()
    assert gate.builds() == 1, "the template was built more than once"
    built = [r for r in results if re.search(r"testdb: template \S+ .* built in", r.stdout)]
    reused = [r for r in results if re.search(r"testdb: template \S+ .* reused in", r.stdout)]
    assert (len(built), len(reused)) == (1, SHARDS - 1)

    seen: dict[tuple[str, str], set[str]] = {}
    for line in names_file.read_text().splitlines():
        namespace, worker, database = line.split()
        seen.setdefault((namespace, worker), set()).add(database)
    assert {ns for ns, _ in seen} == {f"shard{i}" for i in range(1, SHARDS + 1)}
    for (namespace, worker), databases in seen.items():
        assert databases == {f"{base}_{namespace}_{worker}"}
    all_names = [db for databases in seen.values() for db in databases]
    assert len(all_names) == len(set(all_names)), "two workers shared a database name"
    assert_single_ready_template(scram_base, base, template)  # worker databases were dropped


def test_clean_during_a_build_leaves_the_build_alone(
    scram_base: URL, project: Path, gate: Gate, spawn
) -> None:
    """`testdb clean` while another process is mid-build skips the scratch database (its build
    lock is held) and the build completes."""
    base = scram_base.database
    assert base
    builder = spawn(
        [TESTDB, "prepare-template", "--json"], env=child_env(scram_base, **gate.env), cwd=project
    )
    wait_for(lambda: gate.builds() == 1, what="the build to start")
    scratch = wait_for(
        lambda: [n for n in comments(scram_base, base) if "_bld_" in n], what="the scratch db"
    )[0]
    cleaned = run_cli("clean", "--yes", env=child_env(scram_base), cwd=project)
    assert cleaned.returncode == 0, cleaned.describe()
    assert f"skipped {scratch}: a template build is in progress" in cleaned.stdout
    assert scratch in comments(scram_base, base)
    gate.open()
    built = builder.result()
    assert built.returncode == 0 and built.json()["action"] == "built", built.describe()
    assert_single_ready_template(scram_base, base, built.json()["template"])


def test_concurrent_cleans(scram_base: URL, project: Path) -> None:
    """Four `testdb clean` at once over the same orphans: all exit 0, every orphan is gone, the
    template stays."""
    base = scram_base.database
    assert base
    databases = core(scram_base, project)
    template = databases.ensure_template().name
    for worker in range(12):
        databases.clone_for_worker(f"gw{worker}")
    for index in range(1, 4):
        databases.clone_for_test("gw0", index)
    databases.close()  # the run ended, leaving its databases (and its claims on them)
    assert len(comments(scram_base, base)) == 16
    results = run_parallel(
        [lambda: run_cli("clean", "--yes", env=child_env(scram_base), cwd=project)] * 4
    )
    for result in results:
        assert result.returncode == 0, result.describe()
        assert "Traceback" not in result.output
    assert set(comments(scram_base, base)) == {template}
