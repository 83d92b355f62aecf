"""The `testdb` CLI against real servers: click's CliRunner in-process, plus a few end-to-end runs
of the installed console script. Exit codes: 0 ok, 1 failure (one `error:` line), 2 usage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from conftest import clean_environ, database_names, run_testdb, write_tiny_project
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from finreport_testdb.cli.main import main
from finreport_testdb.core.admin import Admin
from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver, render_for_humans
from finreport_testdb.databases import ProjectDatabases

#: Server-independent behaviour runs against the scram server only (tmpfs, fsync off); the trust
#: server (the machine's cluster: disk, fsync on) costs 0.5-2 s per CREATE/DROP DATABASE, so only
#: the core behaviours, the tests without this mark, run on both servers.
scram_only = pytest.mark.parametrize("server", ["scram"], indirect=True)


COUNTING_REVISION = '''
    """counts its runs in the project directory: a migration side effect the tests can see"""
    from pathlib import Path

    revision = "0003"
    down_revision = "0002"

    def upgrade():
        log = Path(__file__).resolve().parents[2] / "migration-runs.log"
        with log.open("a") as f:
            f.write("ran\\n")

    def downgrade():
        pass
'''

FAILING_REVISION = '''
    """fails"""
    from alembic import op

    revision = "0003"
    down_revision = "0002"

    def upgrade():
        op.execute("SELECT 1")
        raise RuntimeError("posting rules are inconsistent")

    def downgrade():
        pass
'''

Run = Callable[..., Result]


def add_revision(project: Path, filename: str, body: str) -> None:
    (project / "migrations" / "versions" / filename).write_text(textwrap.dedent(body))


def migration_runs(project: Path) -> int:
    log = project / "migration-runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def project(tiny_project: Path) -> Path:
    add_revision(tiny_project, "0003_count.py", COUNTING_REVISION)
    return tiny_project


@pytest.fixture
def run(project: Path, base_url: URL, monkeypatch: pytest.MonkeyPatch) -> Run:
    """`run(*args)`: the CLI in the tiny project, with TESTDB_URL pointing at the test's base."""
    clean_environ(monkeypatch)
    monkeypatch.chdir(project)
    monkeypatch.setenv("TESTDB_URL", render_for_driver(base_url))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=True)

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def create_unmarked(server: URL, name: str) -> None:
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database="postgres")
    ) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def one_error_line(result: Result) -> str:
    """A failure: exit 1, exactly one `error:` line on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- help and usage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["prepare-template"],
        ["clean"],
        ["status"],
        ["url"],
        ["config"],
        ["server"],
        ["server", "start"],
        ["server", "stop"],
        ["server", "status"],
    ],
    ids=lambda c: " ".join(c) or "main",
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


@scram_only
def test_namespace_and_all_namespaces_is_usage_error(run: Run) -> None:
    result = run("clean", "--namespace", "x", "--all-namespaces")
    assert result.exit_code == 2
    assert "use either --namespace or --all-namespaces" in result.stderr


@scram_only
def test_templates_and_stale_templates_is_usage_error(run: Run) -> None:
    assert run("clean", "--templates", "--stale-templates").exit_code == 2


@scram_only
def test_unknown_option_is_usage_error(run: Run) -> None:
    assert run("status", "--colour").exit_code == 2


# -- prepare-template -----------------------------------------------------------------------------


def test_prepare_template_builds_and_says_so(run: Run, project: Path, base_name: str) -> None:
    result = ok(run("prepare-template"))
    assert re.fullmatch(
        rf"built template {base_name}_tpl_[0-9a-f]{{12}} \(fingerprint [0-9a-f]{{12}}\) "
        r"in \d+\.\d\d s\n",
        result.stdout,
    ), result.stdout
    assert migration_runs(project) == 1


def test_second_prepare_template_is_up_to_date_and_does_no_work(run: Run, project: Path) -> None:
    ok(run("prepare-template"))
    result = ok(run("prepare-template"))
    assert re.search(
        r"is up to date \(fingerprint [0-9a-f]{12}\): nothing to do \(\d+\.\d\d s\)", result.stdout
    ), result.stdout
    assert migration_runs(project) == 1


@scram_only
def test_prepare_template_rebuild_migrates_again(run: Run, project: Path) -> None:
    ok(run("prepare-template"))
    assert ok(run("prepare-template", "--rebuild")).stdout.startswith("built template ")
    assert migration_runs(project) == 2


@scram_only
def test_prepare_template_json(run: Run, base_name: str, server: URL) -> None:
    first = json.loads(ok(run("prepare-template", "--json")).stdout)
    second = json.loads(ok(run("prepare-template", "--json")).stdout)
    assert first["action"] == "built" and second["action"] == "reused"
    assert first["template"] == second["template"]
    assert first["template"] == f"{base_name}_tpl_{first['fingerprint'][:12]}"
    assert len(first["fingerprint"]) == 64
    assert isinstance(first["seconds"], float) and first["total_seconds"] >= first["seconds"]
    assert database_names(server, base_name) == {first["template"]}


@scram_only
def test_prepare_template_migration_failure_shows_revision_and_traceback(
    run: Run, project: Path, server: URL, base_name: str
) -> None:
    add_revision(project, "0003_count.py", FAILING_REVISION)
    result = run("prepare-template")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "0003_count.py" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: migration failed in revision 0003 (0003_count.py)")
    assert "posting rules are inconsistent" in last
    assert result.stdout == ""
    assert database_names(server, base_name) == set()


@scram_only
def test_missing_alembic_ini_is_clear_error(run: Run, project: Path) -> None:
    (project / "alembic.ini").unlink()
    line = one_error_line(run("prepare-template"))
    assert "alembic.ini does not exist" in line
    assert "TESTDB_ALEMBIC_CONFIG" in line


@scram_only
def test_alembic_config_option_is_used(run: Run, project: Path) -> None:
    (project / "alembic.ini").rename(project / "db.ini")
    ok(run("--alembic-config", "db.ini", "prepare-template"))


@scram_only
def test_unsafe_base_name_is_clear_error_and_creates_nothing(
    run: Run, server: URL, base_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESTDB_URL", render_for_driver(server.set(database=f"{base_name};x")))
    line = one_error_line(run("prepare-template"))
    assert "contains ';'" in line
    assert "env TESTDB_URL" in line
    assert database_names(server, base_name) == set()


@scram_only
def test_server_down_is_one_line_error_naming_host_and_port(run: Run, base_name: str) -> None:
    line = one_error_line(
        run("--url", f"postgresql+psycopg://app@127.0.0.1:1/{base_name}", "prepare-template")
    )
    assert "127.0.0.1:1" in line
    assert "cannot connect to PostgreSQL" in line


# -- clean ----------------------------------------------------------------------------------------


@pytest.fixture
def worker(run: Run, project: Path, base_url: URL, base_name: str) -> str:
    """A built template and the marked worker database <base>_gw0 (made through the core API)."""
    databases = ProjectDatabases.from_settings(
        resolve_settings({"url": render_for_driver(base_url)}, cwd=project, environ={})
    )
    databases.ensure_template()
    return databases.clone_for_worker("gw0").name


@scram_only
def test_clean_dry_run_drops_nothing(run: Run, worker: str, server: URL, base_name: str) -> None:
    before = database_names(server, base_name)
    result = ok(run("clean", "--dry-run"))
    assert f"would drop {worker} (worker, namespace '')" in result.stdout
    assert "dry run: 1 database(s) would be dropped" in result.stdout
    assert database_names(server, base_name) == before


def test_clean_lists_dropped_and_skipped_with_reason(
    run: Run, worker: str, server: URL, base_name: str
) -> None:
    create_unmarked(server, f"{base_name}_gw7")
    result = ok(run("clean"))
    assert f"dropping {worker} (worker, namespace '')" in result.stdout
    assert (
        f"skipped {base_name}_gw7: no testdb ownership marker (not created by testdb)"
        in result.stdout
    )
    assert "dropped 1 database(s)" in result.stdout
    remaining = database_names(server, base_name)
    assert worker not in remaining and f"{base_name}_gw7" in remaining


@scram_only
def test_clean_json(run: Run, worker: str, server: URL, base_name: str) -> None:
    create_unmarked(server, f"{base_name}_gw7")
    data = json.loads(ok(run("clean", "--json")).stdout)
    assert data["dropped"] == [worker]
    assert data["dry_run"] is False
    assert {
        "name": f"{base_name}_gw7",
        "reason": "no testdb ownership marker (not created by testdb)",
    } in data["skipped"]


@scram_only
def test_clean_json_dry_run_lists_would_drop(run: Run, worker: str) -> None:
    data = json.loads(ok(run("clean", "--json", "--dry-run")).stdout)
    assert data["would_drop"] == [worker] and data["dropped"] == []


@scram_only
def test_clean_namespace_option(
    run: Run, worker: str, project: Path, base_url: URL, server: URL, base_name: str
) -> None:
    ok(run("--namespace", "ci_a", "prepare-template"))
    ProjectDatabases.from_settings(
        resolve_settings(
            {"url": render_for_driver(base_url), "namespace": "ci_a"}, cwd=project, environ={}
        )
    ).clone_for_worker("gw0")
    result = ok(run("clean", "--namespace", "ci_a"))
    assert f"dropping {base_name}_ci_a_gw0 (worker, namespace 'ci_a')" in result.stdout
    assert f"skipped {worker}: namespace ''" in result.stdout
    remaining = database_names(server, base_name)
    assert worker in remaining and f"{base_name}_ci_a_gw0" not in remaining


@scram_only
def test_clean_all_namespaces_and_templates_drops_everything_marked(
    run: Run, worker: str, server: URL, base_name: str
) -> None:
    ok(run("clean", "--all-namespaces", "--templates"))
    assert database_names(server, base_name) == set()


@scram_only
def test_clean_bad_namespace_is_error(run: Run) -> None:
    line = one_error_line(run("clean", "--namespace", "a/b"))
    assert "'a/b' is not allowed" in line


@scram_only
def test_clean_with_nothing_to_do(run: Run) -> None:
    assert "dropped 0 database(s)" in ok(run("clean")).stdout


# -- status ---------------------------------------------------------------------------------------


def test_status_json_lists_managed_databases_up_to_date(
    run: Run, worker: str, base_name: str, server: URL
) -> None:
    create_unmarked(server, f"{base_name}_gw7")
    data = json.loads(ok(run("status", "--json")).stdout)
    rows = {row["name"]: row for row in data["databases"]}
    assert set(rows) == {worker, f"{base_name}_tpl_{data['current_fingerprint'][:12]}"}
    assert all(row["up_to_date"] is True for row in rows.values())
    assert rows[worker]["role"] == "worker" and rows[worker]["worker"] == "gw0"
    assert rows[worker]["size_bytes"] > 0 and rows[worker]["connections"] == 0
    assert data["unmanaged_lookalikes"] == [f"{base_name}_gw7"]
    assert "***" in data["server"] or server.password is None


@scram_only
def test_status_marks_databases_of_an_old_fingerprint(run: Run, worker: str, project: Path) -> None:
    path = project / "migrations" / "versions" / "0002_entries.py"
    path.write_text(path.read_text().replace("Numeric(12, 2)", "Numeric(14, 2)"))
    data = json.loads(ok(run("status", "--json")).stdout)
    assert [row["up_to_date"] for row in data["databases"]] == [False, False]


@scram_only
def test_status_table(run: Run, worker: str) -> None:
    out = ok(run("status")).stdout
    assert "NAME" in out and "CURRENT" in out and "CONNS" in out
    line = next(line for line in out.splitlines() if line.startswith(worker))
    assert line.split()[1:3] == ["worker", "-"] and " yes " in line


@scram_only
def test_status_without_databases(run: Run) -> None:
    assert "no managed databases" in ok(run("status")).stdout


# -- url and config -------------------------------------------------------------------------------


@scram_only
def test_url_is_masked_by_default(run: Run, server: URL, base_name: str) -> None:
    out = ok(run("url", "--worker", "gw3")).stdout.strip()
    assert out == render_for_humans(server.set(database=f"{base_name}_gw3"))
    assert str(server.password) not in out


@scram_only
def test_url_show_password_is_intact(run: Run, server: URL, base_name: str) -> None:
    out = ok(run("url", "--worker", "gw3", "--show-password")).stdout.strip()
    url = make_url(out)
    assert url.password == server.password
    assert url.database == f"{base_name}_gw3"
    assert url.drivername == server.drivername


@scram_only
def test_url_default_worker_and_master(run: Run, base_name: str) -> None:
    assert make_url(ok(run("url")).stdout.strip()).database == f"{base_name}_gw0"
    assert (
        make_url(ok(run("url", "--worker", "master")).stdout.strip()).database
        == f"{base_name}_serial"
    )


@scram_only
def test_url_with_namespace(run: Run, base_name: str) -> None:
    out = ok(run("--namespace", "ci_1", "url", "--worker", "gw2")).stdout
    assert make_url(out.strip()).database == f"{base_name}_ci_1_gw2"


@scram_only
def test_url_bad_worker_is_error(run: Run) -> None:
    assert "worker id 'gw3;'" in one_error_line(run("url", "--worker", "gw3;"))


@scram_only
def test_config_shows_sources_and_masks_password(run: Run, server: URL, base_name: str) -> None:
    out = ok(run("--namespace", "ci_9", "config")).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "env TESTDB_URL" in rows["url"]
    assert f":***@127.0.0.1:{server.port}/{base_name}" in rows["url"]
    assert "command line" in rows["namespace"] and "ci_9" in rows["namespace"]
    assert "default" in rows["maintenance_db"]
    assert str(server.password) not in out


@scram_only
def test_config_json(run: Run, project: Path, base_name: str) -> None:
    data = json.loads(
        ok(run("--url", f"postgresql+asyncpg://app:pw@h/{base_name}", "config", "--json")).stdout
    )
    assert data["url"] == {
        "value": f"postgresql+asyncpg://app:***@h/{base_name}",
        "source": "command line --url",
    }
    assert data["alembic_config"]["value"] == str(project.resolve() / "alembic.ini")
    assert data["base_database"] == {"value": base_name, "source": "derived"}


@scram_only
def test_config_bad_pyproject_key_is_error(run: Run, project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.testdb]\nnamspace = "x"\n')
    assert "unknown key(s) namspace" in one_error_line(run("config"))


# -- end to end: the installed console script ------------------------------------------------------


def test_console_script_prepares_then_reuses(project: Path, base_url: URL) -> None:
    first = run_testdb(["prepare-template"], project, render_for_driver(base_url))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("built template ")
    second = run_testdb(["prepare-template"], project, render_for_driver(base_url))
    assert second.returncode == 0, second.stderr
    assert "is up to date" in second.stdout
    assert migration_runs(project) == 1


def test_console_script_server_down(tmp_path: Path) -> None:
    project = write_tiny_project(tmp_path / "p")
    done = run_testdb(["status"], project, "postgresql+psycopg://app:pw@127.0.0.1:1/frt_down")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "127.0.0.1:1" in lines[0]


def test_console_script_usage_error_exits_2(tmp_path: Path) -> None:
    project = write_tiny_project(tmp_path / "p")
    done = run_testdb(
        ["clean", "--namespace", "x", "--all-namespaces"],
        project,
        "postgresql://app@127.0.0.1:1/frt_usage",
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr


@scram_only
def test_cli_creates_templates_only_in_its_own_base(run: Run, server: URL, base_name: str) -> None:
    ok(run("prepare-template"))
    with Admin(server) as admin:
        ours = [d.name for d in admin.list_databases() if d.name.startswith(base_name)]
    assert len(ours) == 1 and ours[0].startswith(f"{base_name}_tpl_")


def test_help_imports_no_database_library() -> None:
    """`testdb --help` stays about as cheap as importing click: SQLAlchemy, psycopg, Alembic and
    the manager are imported only by the commands that use them."""
    probe = textwrap.dedent(
        """
        import sys
        from finreport_testdb.cli.main import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = ("sqlalchemy", "psycopg", "alembic", "finreport_testdb.databases")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "Template-cloned PostgreSQL databases" in done.stdout
    assert done.stdout.rstrip().endswith("[]"), done.stdout
