"""Hostile input: bad names, namespaces, URLs, configs and chains fail with one clear line and
touch no database; unicode and over-long names work end to end; `clean` never drops a database
without a genuine ownership marker."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import drop_databases_with_prefix
from sqlalchemy.engine import URL, make_url

from finreport_testdb.core.marker import TOOL, Marker
from finreport_testdb.core.names import MAX_IDENTIFIER_BYTES, Naming

from .conftest import (
    SESSION_STOPPED,
    child_env,
    comments,
    core,
    create_database,
    inner_pytest,
    leaks,
    run_cli,
    run_parallel,
    write_project,
    write_tests,
)

ALL_COMMANDS = [["prepare-template"], ["clean", "--yes"], ["status"], ["url"]]
WRONG_PASSWORD = "wr0ng:p@ss/w%rd"


@dataclass
class Case:
    """One hostile input: how to build the environment, what each command must say."""

    url: Callable[[URL], str]  # test's base URL -> TESTDB_URL value
    fragments: list[str]  # must appear in the error line ({base} = the test's base name)
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # global options before the command
    commands: list[list[str]] = field(default_factory=lambda: [["prepare-template"]])
    revisions: dict[str, str] = field(default_factory=dict)
    testdb_table: str | None = None  # replaces the project's [tool.testdb] table
    pytest_args: list[str] | None = None  # also run an inner pytest session with these options
    files: dict[str, str] = field(default_factory=dict)  # project files to (over)write
    absent: list[str] = field(default_factory=list)  # must appear in no output


def with_db(name: str) -> Callable[[URL], str]:
    return lambda url: url.set(database=name.format(base=url.database)).render_as_string(False)


def same(url: URL) -> str:
    return url.render_as_string(hide_password=False)


RAISING = {
    "0004_boom.py": '''
        """boom"""
        revision = "0004"
        down_revision = "0003"

        def upgrade():
            raise RuntimeError("boom from revision 0004")
    '''
}
BAD_SQL = {
    "0004_bad_sql.py": '''
        """bad sql"""
        from alembic import op

        revision = "0004"
        down_revision = "0003"

        def upgrade():
            op.execute("INSERT INTO no_such_table VALUES (1)")
    '''
}
TWO_HEADS = {
    "0004_branch.py": '''
        """a second head"""
        revision = "0004"
        down_revision = "0002"

        def upgrade():
            pass
    '''
}
SYNTAX_ERROR = {
    "0004_broken.py": """
        revision = "0004"
        down_revision = "0003"

        def upgrade(:
            pass
    """
}
MISSING_IMPORT = {
    "0004_noimport.py": """
        import no_such_module_xyz

        revision = "0004"
        down_revision = "0003"
    """
}
#: A password with an unencoded '@': SQLAlchemy reads host `ss@127.0.0.1`, never to be echoed.
UNENCODED_AT = "testdb:p@ss@127.0.0.1"
NAME_ERROR = "use only letters, digits, '_' and '-'"
NS_ERROR = "use 1-30 letters, digits or '_'"

CASES: dict[str, Case] = {
    "base-double-quote": Case(
        with_db('{base}x"y'), ['{base}x"y', NAME_ERROR], commands=ALL_COMMANDS, pytest_args=[]
    ),
    "base-single-quote": Case(with_db("{base}x'y"), ["{base}x'y", NAME_ERROR]),
    "base-semicolon": Case(
        with_db("{base};DROP DATABASE postgres;--"), ["{base};DROP DATABASE", NAME_ERROR]
    ),
    "base-space": Case(with_db("{base} x"), ["{base} x", NAME_ERROR]),
    "base-slash": Case(with_db("{base}/x"), ["{base}/x", NAME_ERROR]),
    "base-system-db": Case(with_db("template1"), ["'template1', a system database"]),
    "namespace-slash": Case(
        same, ["'a/b'", NS_ERROR], env={"TESTDB_NAMESPACE": "a/b"}, commands=ALL_COMMANDS
    ),
    "namespace-dotdot": Case(same, ["'../etc'", NS_ERROR], env={"TESTDB_NAMESPACE": "../etc"}),
    "namespace-backslash": Case(same, ["'a\\\\b'", NS_ERROR], args=["--namespace", "a\\b"]),
    "namespace-option-pytest": Case(
        same,
        ["'x/../y'", NS_ERROR],
        commands=[],
        pytest_args=["--testdb-namespace", "x/../y"],
    ),
    "clean-namespace-slash": Case(
        same, ["'ci/1'", NS_ERROR], commands=[["clean", "--namespace", "ci/1", "--yes"]]
    ),
    "url-no-database": Case(with_db(""), ["has no database name", "app_test"]),
    "url-unknown-driver": Case(
        lambda url: same(url.set(drivername="postgresql+nosuchdriver")),
        ["unknown driver 'nosuchdriver'", "postgresql+psycopg://"],
    ),
    "url-other-backend": Case(lambda url: "mysql://u@localhost/app_test", ["backend 'mysql'"]),
    "url-malformed": Case(lambda url: "not a url at all", ["not a valid database URL"]),
    "url-unreachable-host": Case(
        lambda url: same(url.set(host="no-such-host.invalid")),
        ["no-such-host.invalid:", "start PostgreSQL"],
        commands=[["prepare-template"], ["clean", "--yes"]],
    ),
    "wrong-password": Case(
        lambda url: same(url.set(password=WRONG_PASSWORD)),
        ["password authentication failed", "as testdb", "check the user and password"],
        commands=[["prepare-template"], ["clean", "--yes"], ["status"]],
        pytest_args=[],
    ),
    "lock-timeout-garbage": Case(
        same, ["lock_timeout", "'soon'", "positive number"], env={"TESTDB_LOCK_TIMEOUT": "soon"}
    ),
    "worker-id-injection": Case(
        same, ["'gw0;drop'", "gw<N> or master"], commands=[["url", "--worker", "gw0;drop"]]
    ),
    "alembic-ini-missing": Case(
        same,
        ["missing.ini", "does not exist", "TESTDB_ALEMBIC_CONFIG"],
        env={"TESTDB_ALEMBIC_CONFIG": "missing.ini"},
    ),
    "pyproject-bad-toml": Case(
        same, ["pyproject.toml", "TOML"], testdb_table='[tool.testdb]\nnamespace = "unclosed\n'
    ),
    "pyproject-unknown-key": Case(
        same,
        ["unknown key(s) drop_everything", "known keys:"],
        testdb_table="[tool.testdb]\ndrop_everything = true\n",
    ),
    "pyproject-wrong-type": Case(
        same, ["lock_timeout", "positive number"], testdb_table="[tool.testdb]\nlock_timeout = -1\n"
    ),
    "two-heads": Case(
        same,
        ["2 heads", "0003", "0004", "alembic merge heads"],
        commands=[["prepare-template"]],
        revisions=TWO_HEADS,
        pytest_args=[],
    ),
    # ------------------------------------------------ round 2 (issue 10, items 12 and 14-17)
    "migration-syntax-error": Case(
        same,
        ["cannot load migration file", "0004_broken.py", "SyntaxError", "line 5", "fix that file"],
        revisions=SYNTAX_ERROR,
        pytest_args=[],
    ),
    "migration-missing-import": Case(
        same,
        ["0004_noimport.py", "ModuleNotFoundError", "no_such_module_xyz", "fix that file"],
        revisions=MISSING_IMPORT,
        pytest_args=["-n", "2"],
    ),
    "url-connect-timeout-garbage": Case(
        lambda url: same(url.update_query_dict({"connect_timeout": "abc"})),
        ["connect_timeout='abc'", "whole number"],
        commands=[["prepare-template"], ["status"]],
    ),
    "url-sslmode-garbage": Case(
        lambda url: same(url.update_query_dict({"sslmode": "bogus"})),
        ["sslmode='bogus'", "not valid for libpq", "fix or remove it"],
    ),
    "alembic-ini-broken-header": Case(
        same,
        ["alembic.ini", "cannot read Alembic config", "INI syntax"],
        files={"alembic.ini": "[alembic\nscript_location = migrations\n"},
        pytest_args=[],
    ),
    "seed-missing-package": Case(
        same, ["'nosuch.mod'", "cannot be found"], env={"TESTDB_SEED": "nosuch.mod:fn"}
    ),
    "fingerprint-extra-absolute": Case(
        same,
        ["'/etc/*.conf'", "not relative to the project root"],
        env={"TESTDB_FINGERPRINT_EXTRA": "/etc/*.conf"},
    ),
    "seed-sql-absolute": Case(
        same,
        ["'/tmp/*.sql'", "not relative to the project root"],
        env={"TESTDB_SEED": "/tmp/*.sql"},
    ),
    "alembic-config-flag": Case(
        same,
        ["missing.ini", "does not exist", "--alembic-config"],
        args=["--alembic-config", "missing.ini"],
        absent=["TESTDB_ALEMBIC_CONFIG"],
    ),
    "url-flag-unreachable": Case(
        same,
        ["127.0.0.1:1", "(command line --url)"],
        args=["--url", "postgresql+psycopg://testdb@127.0.0.1:1/app_test"],
        absent=["unset TESTDB_URL"],
    ),
    "url-unencoded-at": Case(
        lambda url: f"postgresql+psycopg://{UNENCODED_AT}:{url.port}/{url.database}",
        ["percent-encode", "@ as %40"],
        absent=["ss@127", "p@ss"],
        commands=[["prepare-template"], ["status"]],
    ),
    "url-unencoded-at-colon": Case(
        lambda url: f"postgresql+psycopg://testdb:p@ss:w@127.0.0.1:{url.port}/{url.database}",
        ["not a valid database URL", "percent-encode"],
        absent=["ss:w"],
    ),
    "worker-id-non-ascii-digit": Case(
        same, ["'gw\u0663'", "gw<N> or master"], commands=[["url", "--worker", "gw\u0663"]]
    ),
}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_input_fails_cleanly(
    case_id: str, scram_base: URL, tmp_path: Path, scram_server: URL
) -> None:
    case = CASES[case_id]
    base = scram_base.database
    assert base
    project = write_project(tmp_path / "project", revisions=case.revisions)
    if case.testdb_table is not None:
        pyproject = project / "pyproject.toml"
        head = pyproject.read_text().split("[tool.testdb]")[0]
        pyproject.write_text(head + case.testdb_table)
    for name, text in case.files.items():
        (project / name).write_text(text)
    write_tests(project, "def test_db(db_session):\n    pass\n")
    env = child_env(case.url(scram_base), **case.env)
    fragments = [f.format(base=base) for f in case.fragments]
    before = comments(scram_server, base)

    calls = [
        (lambda cmd=cmd: run_cli(*case.args, *cmd, env=env, cwd=project)) for cmd in case.commands
    ]
    if case.pytest_args is not None:
        calls.append(lambda: inner_pytest(*case.pytest_args, "tests", env=env, cwd=project))
    results = run_parallel(calls)

    for result in results[: len(case.commands)]:
        assert result.returncode == 1, result.describe()
        line = error_line(result.stderr)
        for fragment in fragments:
            assert fragment in line, f"{fragment!r} missing from: {line}"
        assert result.stdout == "", result.describe()
    if case.pytest_args is not None:
        session = results[-1]
        assert session.returncode in SESSION_STOPPED, session.describe()
        assert "testdb: " in session.output
        for fragment in fragments:
            assert fragment in session.output, f"{fragment!r} missing:\n{session.describe()}"
        assert "passed" not in session.stdout
    for result in results:
        assert "Traceback" not in result.output, result.describe()
        assert "INTERNALERROR" not in result.output, result.describe()
        for text in case.absent:
            assert text not in result.output, f"{text!r} in:\n{result.describe()}"
    assert comments(scram_server, base) == before == {}


@pytest.mark.parametrize("revisions", [RAISING, BAD_SQL], ids=["raises", "bad-sql"])
def test_failing_migration(revisions: dict[str, str], scram_base: URL, tmp_path: Path) -> None:
    """The failing revision is named, its traceback shown, and nothing is left on the server."""
    base = scram_base.database
    assert base
    project = write_project(tmp_path / "project", revisions=revisions)
    write_tests(project, "def test_db(db_session):\n    pass\n")
    env = child_env(scram_base)
    cli, session = run_parallel(
        [
            lambda: run_cli("prepare-template", env=env, cwd=project),
            lambda: inner_pytest("tests", env=env, cwd=project),
        ]
    )
    filename = next(iter(revisions))
    assert cli.returncode == 1, cli.describe()
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: migration failed in revision 0004 ({filename}): "), last
    assert "no template was created" in last
    assert f'{filename}", line' in cli.stderr  # the migration's own traceback is shown
    assert session.returncode in SESSION_STOPPED, session.describe()
    assert f"testdb: migration failed in revision 0004 ({filename})" in session.output
    assert comments(scram_base, base) == {}


@pytest.mark.parametrize(
    "args",
    [
        ["clean", "--namespace", "a", "--all-namespaces"],
        ["clean", "--templates", "--stale-templates"],
        ["prepare-template", "--no-such-option"],
        ["no-such-command"],
    ],
    ids=["ns-and-all", "templates-and-stale", "unknown-option", "unknown-command"],
)
def test_usage_errors_exit_2(args: list[str], scram_base: URL, project: Path) -> None:
    result = run_cli(*args, env=child_env(scram_base), cwd=project)
    assert result.returncode == 2, result.describe()
    assert "Usage: testdb" in result.stderr and "Traceback" not in result.stderr
    assert comments(scram_base, str(scram_base.database)) == {}


# ------------------------------------------------------------------------------ names that work


def _fits(name: str) -> bool:
    return len(name.encode()) <= MAX_IDENTIFIER_BYTES


NAMES_TESTS = """
    import os

    from sqlalchemy import text


    def test_names(test_database, db_session, fresh_database):
        current = db_session.execute(text("SELECT current_database()")).scalar()
        assert current == test_database.name
        assert db_session.execute(text("SELECT count(*) FROM accounts")).scalar() == 2
        with open(os.environ["RELIABILITY_NAMES"], "a", encoding="utf-8") as fh:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "master")
            fh.write(f"{worker} {test_database.name} "
                     f"{fresh_database.name}\\n")


    def test_more(test_database, fresh_database):
        pass
"""


@pytest.mark.parametrize(
    ("suffix", "namespace", "pytest_args"),
    [
        ("_ÄöÜ-данные_数据", "", ["-p", "no:xdist"]),
        ("_" + "ü" * 30, "ci_shard_7", ["-n", "2"]),
    ],
    ids=["unicode-serial", "long-unicode-namespaced-xdist"],
)
def test_unicode_and_long_names_work_end_to_end(
    suffix: str,
    namespace: str,
    pytest_args: list[str],
    scram_base: URL,
    project: Path,
    tmp_path: Path,
) -> None:
    """Unicode letters are valid names; names over 63 bytes are shortened with a hash (suffix
    kept, never a split UTF-8 character) so PostgreSQL never truncates them behind our back.
    prepare-template, a pytest run with worker and per-test clones, `url` and `clean` all agree
    on the names, and nothing is left."""
    base = f"{scram_base.database}{suffix}"
    url = scram_base.set(database=base)
    naming = Naming(base, namespace)
    names_file = tmp_path / "names.txt"
    env = child_env(url, RELIABILITY_NAMES=str(names_file))
    if namespace:
        env["TESTDB_NAMESPACE"] = namespace
    write_tests(project, NAMES_TESTS)

    first = run_cli("prepare-template", "--json", env=env, cwd=project)
    assert first.returncode == 0, first.describe()
    template = first.json()["template"]
    assert template == naming.template(first.json()["fingerprint"]) and _fits(template)
    assert template.endswith(f"_tpl_{first.json()['fingerprint'][:12]}")
    again, worker_url, session = run_parallel(
        [
            lambda: run_cli("prepare-template", env=env, cwd=project),
            lambda: run_cli("url", "--worker", "gw1", env=env, cwd=project),
            lambda: inner_pytest(*pytest_args, "tests", env=env, cwd=project),
        ]
    )
    assert again.returncode == 0 and "up to date" in again.stdout, again.describe()
    assert session.returncode == 0, session.describe()
    assert "2 passed" in session.stdout, session.describe()
    assert make_url(worker_url.stdout.strip()).database == naming.worker("gw1")

    for line in names_file.read_text(encoding="utf-8").splitlines():
        worker, database, fresh = line.split(" ")
        assert database == naming.worker(worker) and _fits(database)
        assert fresh in {naming.per_test(worker, k) for k in range(1, 9)} and _fits(fresh)
        assert re.search(rf"_{worker}_t\d+$", fresh), fresh
    assert set(comments(scram_base, scram_base.database or "")) == {template}

    cleaned = run_cli("clean", "--templates", "--yes", env=env, cwd=project)
    assert cleaned.returncode == 0, cleaned.describe()
    assert comments(scram_base, scram_base.database or "") == {}


# ------------------------------------------------------------------------------ ownership


def test_clean_never_drops_without_a_genuine_marker(scram_base: URL, project: Path) -> None:
    """Only databases testdb created survive `clean --all-namespaces --templates`' scrutiny:
    exact-pattern names without a marker, broken or foreign markers, and real markers copied
    onto other databases are all left alone."""
    base = scram_base.database
    assert base
    databases = core(scram_base, project)
    template = databases.ensure_template().name
    fp = databases.fingerprint
    ci = core(scram_base, project, namespace="ci")
    real = {
        template,
        databases.clone_for_worker("gw0").name,
        databases.clone_for_test("gw0", 1).name,
        ci.clone_for_worker("gw0").name,
    }
    databases.close()  # those runs ended, leaving their databases (and their claims on them)
    ci.close()
    found = comments(scram_base, base)
    assert set(found) == real
    worker_marker = found[f"{base}_gw0"]
    test_marker = found[f"{base}_gw0_t1"]
    template_marker = found[template]
    assert worker_marker and test_marker and template_marker
    foreign = Marker("worker", "someone_else", "", fp, "2024-01-01T00:00:00+00:00", "gw4")
    decoys: dict[str, str | None] = {
        # exactly the names testdb would use, but no marker at all
        base: None,
        f"{base}_gw1": None,
        f"{base}_ci_gw1_t2": None,
        f"{base}_tpl_0123456789ab": None,
        f"{base}_bld_{fp[:12]}": None,
        # comments that are not (or not our) markers
        f"{base}_gw2": "not json at all",
        f"{base}_gw3": json.dumps({"tool": TOOL, "role": "worker"}),
        f"{base}_gw4": foreign.to_comment(),
        # genuine markers copied onto databases whose names they do not produce
        f"{base}_gw5": worker_marker,
        f"{base}_gw0_t9": test_marker,
        f"{base}_tpl_aaaaaaaaaaaa": template_marker,
        f"{base}_evil": worker_marker,
    }
    for name, comment in decoys.items():
        create_database(scram_base, name, comment=comment)

    env = child_env(scram_base)
    dry = run_cli("clean", "--all-namespaces", "--templates", "--dry-run", env=env, cwd=project)
    assert dry.returncode == 0, dry.describe()
    assert set(comments(scram_base, base)) == real | set(decoys)
    result = run_cli(
        "clean", "--all-namespaces", "--templates", "--yes", "--json", env=env, cwd=project
    )
    assert result.returncode == 0, result.describe()
    report = result.json()
    assert set(report["dropped"]) == real
    assert set(comments(scram_base, base)) == set(decoys), "a database without a marker was dropped"
    skipped = {item["name"]: item["reason"] for item in report["skipped"]}
    for name in decoys:
        assert "no testdb ownership marker" in skipped.get(name, ""), (name, skipped)
        assert f"would drop {name} " not in dry.stdout
    assert not leaks(dry.output + result.output)


def test_unmarked_database_in_the_way_is_never_replaced(
    scram_base: URL, scram_server: URL, project: Path
) -> None:
    """A user's own database that happens to have the template's or a worker's name blocks the run
    with a clear error naming it; it is never dropped and replaced."""
    base = scram_base.database
    assert base
    env = child_env(scram_base)
    template = core(scram_base, project).template_name
    create_database(scram_server, template)  # the template's name, not made by testdb

    blocked = run_cli("prepare-template", env=env, cwd=project)
    assert blocked.returncode == 1, blocked.describe()
    line = error_line(blocked.stderr)
    assert template in line and "not created by testdb" in line
    assert set(comments(scram_server, base)) == {template}

    drop_databases_with_prefix(scram_server, template)
    serial = f"{base}_serial"
    create_database(scram_server, serial)  # the serial run's database name, not made by testdb
    write_tests(project, "def test_db(db_session):\n    pass\n")
    session = inner_pytest("-p", "no:xdist", "tests", env=env, cwd=project)
    assert session.returncode == 1, session.describe()
    assert f"database '{serial}' exists but was not created by testdb" in session.output
    found = comments(scram_server, base)
    assert serial in found and Marker.parse(found[serial]) is None
    assert all(name == serial or "_tpl_" in name for name in found), found
