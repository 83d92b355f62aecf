"""The CLI's boundaries under attack: URL options that redirect the tool, a secret in a URL
option, `clean` and unmarked `.creating` databases it never made, a creation dropped from under
its creator, commands that started a server outside any project, forged output lines. Each test
runs against a real server and failed on the code before its fix (verified by reverting it)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL

from finreport_testdb.core.admin import Admin
from finreport_testdb.core.marker import Marker
from finreport_testdb.core.names import Naming, creating_name
from finreport_testdb.core.ownership import template_lock_label
from finreport_testdb.core.urls import parse_url, psycopg_connect_kwargs, render_for_driver
from finreport_testdb.errors import ConfigError, FinreportTestdbError
from finreport_testdb.templates import dump_cache

from .conftest import child_env, comments, create_database, execute, run_cli

SECRET = "s3cret:Key/Pass%#"  # an sslpassword; the trust server never asks for it


def tables_in(server: URL, database: str) -> list[str]:
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database=database)
    ) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return [r[0] for r in rows]


# ------------------------------------------------------------- options that redirect the tool


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("dbname={victim}", "'dbname'"),
        ("database={victim}", "'database'"),
        ("user=postgres", "'user'"),
        ("password=p%40ss", "'password'"),
        ("host=/run/postgresql", "host both"),
        ("port=5433", "port both"),
    ],
)
def test_url_options_that_override_its_parts_are_refused(
    trust_base: URL, project: Path, query: str, named: str
) -> None:
    """`?dbname=` once sent the migrations and every test to an existing database the tool never
    created: drivers let the query win over the URL's path. Now such a URL is one line, exit 1,
    and the other database is untouched."""
    base = trust_base.database
    assert base
    victim = f"{base}_victim"
    create_database(trust_base, victim)
    url = f"{render_for_driver(trust_base)}?{query.format(victim=victim)}"
    result = run_cli("prepare-template", env=child_env(url), cwd=project)
    assert result.returncode == 1, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert "p@ss" not in result.output and "p%40ss" not in result.output
    assert tables_in(trust_base, victim) == []
    assert set(comments(trust_base, base)) == {victim}  # nothing created either


def test_unix_socket_host_in_the_query_still_works() -> None:
    url = parse_url("postgresql+psycopg://app@/app_test?host=/run/postgresql")
    assert psycopg_connect_kwargs(url)["host"] == "/run/postgresql"


# ----------------------------------------------------------------- a secret in a URL option


def test_sslpassword_is_masked_in_every_output(trust_base: URL, project: Path) -> None:
    url = trust_base.update_query_dict({"sslpassword": SECRET, "sslmode": "disable"})
    env = child_env(url)
    outputs = [
        run_cli(*args, env=env, cwd=project)
        for args in (["config"], ["config", "--json"], ["url"], ["status"], ["status", "--json"])
    ]
    for result in outputs:
        assert result.returncode == 0, result.describe()
        assert "sslpassword=***" in result.stdout or '"***"' in result.stdout, result.describe()
    text = "".join(r.output for r in outputs)
    assert SECRET not in text and "s3cret" not in text


def test_pg_dump_never_gets_a_secret_on_its_command_line(
    trust_base: URL, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any local user can read a process's arguments in /proc: the password goes in PGPASSWORD,
    an sslpassword in a private service file; the dump itself still works."""
    base = trust_base.database
    assert base
    create_database(trust_base, f"{base}_src")
    execute(trust_base, "CREATE TABLE kept (x int)", database=f"{base}_src")
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def recording_run(args: list[str], **kwargs: Any) -> Any:
        seen.append((list(args), dict(kwargs.get("env") or {})))
        return real_run(args, **kwargs)

    monkeypatch.setattr(dump_cache.subprocess, "run", recording_run)
    url = trust_base.update_query_dict({"sslpassword": SECRET, "sslmode": "disable"})
    with Admin(url) as admin:
        major = admin.server_major
    path = dump_cache.write_dump(url, f"{base}_src", tmp_path / "dumps", "f" * 64, major)
    assert path.is_file() and path.stat().st_size > 0
    dumps = [(args, env) for args, env in seen if "--dbname" in args]
    assert dumps, f"pg_dump was not run: {seen}"
    for args, env in dumps:
        assert not [a for a in args if "s3cret" in a], args
        assert "PGSERVICEFILE" in env, (args, sorted(env))
        assert not Path(env["PGSERVICEFILE"]).exists()  # removed once the tool ran


# ------------------------------------------------- clean and `.creating` databases it never made


def test_clean_leaves_unmarked_creating_names_it_never_gives(
    trust_base: URL, project: Path
) -> None:
    """`clean` took every unmarked `<base>_<anything>.creating` for a crash's leftover and dropped
    it (a table with data, the base's own name, another base's). Only exactly one of this
    base's names (of this namespace) is a leftover of ours."""
    base = trust_base.database
    assert base
    naming = Naming(base)
    strangers = [
        f"{base}_mydata.creating",
        f"{base}.creating",
        f"{base}_other_gw0.creating",  # another namespace's (or base's): not this namespace
    ]
    ours = creating_name(naming.worker("gw3"))
    serial_ours = [
        creating_name(naming.per_test("master", 5)),
        creating_name(naming.per_test("master", 12)),
    ]
    for name in [*strangers, ours, *serial_ours]:
        create_database(trust_base, name)
    execute(trust_base, "CREATE TABLE precious (x int)", database=strangers[0])
    result = run_cli("clean", "--yes", "--json", env=child_env(trust_base), cwd=project)
    assert result.returncode == 0, result.describe()
    assert sorted(result.json()["dropped"]) == sorted([ours, *serial_ours])
    left = comments(trust_base, base)
    assert set(strangers) <= set(left) and not {ours, *serial_ours} & set(left)
    assert tables_in(trust_base, strangers[0]) == ["precious"]


def test_clean_leaves_a_creating_leftover_of_another_role(
    trust_base: URL, project: Path, trust_server: URL
) -> None:
    """A superuser has every role's privileges: "may drop it" no longer means "ours"."""
    base = trust_base.database
    assert base
    role = f"{base}_other"
    execute(trust_server, f'CREATE ROLE "{role}" LOGIN CREATEDB')
    name = creating_name(Naming(base).worker("gw1"))
    try:
        other = trust_server.set(username=role, database="postgres")
        with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(other)) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        result = run_cli("clean", "--yes", "--json", env=child_env(trust_base), cwd=project)
        assert result.returncode == 0, result.describe()
        assert name not in result.json()["dropped"]
        assert name in comments(trust_base, base)
    finally:
        execute(trust_server, f'DROP DATABASE IF EXISTS "{name}"')
        execute(trust_server, f'DROP ROLE "{role}"')


def test_clean_spares_a_scratch_build_between_create_and_comment(
    trust_base: URL, project: Path
) -> None:
    """A builder holds the build lock while its scratch database is still an unmarked
    `.creating`; `clean` took only the name lock and dropped the build from under it."""
    base = trust_base.database
    assert base
    naming = Naming(base)
    scratch = creating_name(naming.scratch("a" * 64))
    create_database(trust_base, scratch)  # as the builder's CREATE DATABASE left it
    with Admin(trust_base) as builder:
        assert builder.try_advisory_lock(template_lock_label(naming.template("a" * 64)))
        result = run_cli("clean", "--yes", "--json", env=child_env(trust_base), cwd=project)
        assert result.returncode == 0, result.describe()
        assert {"name": scratch, "reason": "a creation is in progress"} in result.json()["skipped"]
        assert scratch in comments(trust_base, base)
    result = run_cli("clean", "--yes", "--json", env=child_env(trust_base), cwd=project)
    assert result.json()["dropped"] == [scratch]  # a dead build's leftover still goes


def test_a_creation_dropped_from_under_its_creator_is_one_line(trust_base: URL) -> None:
    """COMMENT on a database that is gone is only a warning; the rename then failed with a
    driver traceback. Now: one line that says what happened."""
    base = trust_base.database
    assert base
    name = Naming(base).worker("gw0")

    class DroppedMeanwhile(Admin):
        def _execute(self, query: Any, params: Any = None) -> Any:
            text = query.as_string(self.conn) if not isinstance(query, str) else query
            if text.startswith("COMMENT ON DATABASE"):  # another session's clean, in between
                execute(trust_base, f'DROP DATABASE "{creating_name(name)}"')
            return super()._execute(query, params)

    marker = Marker("worker", base, "", "f" * 64, "2026-01-01T00:00:00+00:00", worker="gw0")
    with DroppedMeanwhile(trust_base) as admin, pytest.raises(FinreportTestdbError) as caught:
        admin.create_database(name, comment=marker.to_comment())
    message = str(caught.value)
    assert "was dropped by another session while it was being created" in message
    assert "\n" not in message
    assert comments(trust_base, base) == {}


# ---------------------------------------------------------------- outside any project


@pytest.mark.parametrize("args", [["url"], ["fingerprint"], ["prepare-template"]])
def test_commands_outside_a_project_start_no_server(tmp_path: Path, args: list[str]) -> None:
    """Like `clean` and `status`: with no project and no URL, say so; do not initdb and leave a
    server running for a directory that is not a project."""
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    env = child_env(None, TESTDB_CACHE_DIR=str(tmp_path / "cache"))
    result = run_cli(*args, env=env, cwd=nowhere)
    assert result.returncode == 1, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no project here" in lines[0], lines
    status = run_cli("server", "status", env=env, cwd=nowhere)
    assert status.returncode == 3, status.describe()


# ---------------------------------------------------------------- forged output lines


def test_control_characters_in_other_names_are_escaped(trust_base: URL, project: Path) -> None:
    base = trust_base.database
    assert base
    forged = f"{base}_zz\ndropping {base}_x (worker, namespace '')"
    escape = f"{base}_e\x1b[31mRED\x1b[0m"
    create_database(trust_base, forged)
    create_database(trust_base, escape)
    env = child_env(trust_base)
    for args in (["status"], ["clean", "--dry-run"]):
        result = run_cli(*args, env=env, cwd=project)
        assert result.returncode == 0, result.describe()
        assert "\x1b" not in result.output
        assert not [
            line for line in result.stdout.splitlines() if line.startswith(f"dropping {base}_x")
        ], result.stdout
        assert repr(escape) in result.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "-1d"])
def test_older_than_must_be_a_finite_duration(project: Path, value: str) -> None:
    result = run_cli(
        "clean",
        "--stale-templates",
        "--older-than",
        value,
        "--dry-run",
        env=child_env("postgresql+psycopg://u@127.0.0.1:1/x"),
        cwd=project,
    )
    assert result.returncode == 2, result.describe()
    assert "is not a duration" in result.stderr


def test_parse_url_message_for_identity_options_names_no_value() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_url("postgresql://u@h/db?password=s3cret%21", source="TESTDB_URL")
    assert "s3cret" not in str(caught.value) and "'password'" in str(caught.value)


def test_clean_never_reports_a_database_both_dropped_and_skipped(
    trust_base: URL, project: Path
) -> None:
    """`clean` printed `dropping X` from the plan, then `skipped X: in use` when the drop-time
    check refused it. It now lists what it dropped after the fact."""
    from .conftest import core

    with core(trust_base, project) as run_in_progress:
        run_in_progress.ensure_template()
        clone = run_in_progress.clone_for_worker("gw0")
        with psycopg.connect(
            autocommit=True, **psycopg_connect_kwargs(trust_base, database=clone.name)
        ):
            result = run_cli("clean", "--yes", env=child_env(trust_base), cwd=project)
    assert result.returncode == 0, result.describe()
    assert f"skipped {clone.name}: " in result.stdout
    assert f"dropping {clone.name}" not in result.stdout, result.stdout


def test_env_py_reading_an_unset_variable_is_told_about_export_url_as(
    trust_base: URL, project: Path
) -> None:
    env_py = project / "migrations" / "env.py"
    env_py.write_text('import os\nos.environ["APP_DB_URL"]\n' + env_py.read_text())
    result = run_cli("prepare-template", env=child_env(trust_base), cwd=project)
    assert result.returncode == 1, result.describe()
    assert 'export_url_as = ["APP_DB_URL"]' in result.stderr.strip().splitlines()[-1]
