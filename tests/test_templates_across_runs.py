"""Issue 11 against real servers: extend, restore from the dump cache, drift check, bounded GC.

Revisions of the test chain raise when `FRT_NO_MIGRATION` names them, so a test proves which
revisions ran (extend: only the new one; restore: none) by forbidding the others.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from conftest import database_names
from psycopg import sql
from sqlalchemy.engine import URL

from finreport_testdb.cli.main import main
from finreport_testdb.core.marker import ROLE_TEMPLATE, owned_marker
from finreport_testdb.core.template import TemplateResult
from finreport_testdb.core.urls import psycopg_connect_kwargs, render_for_driver
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import DriftError
from finreport_testdb.templates.dump_cache import DumpCacheError, dump_path, find_client_bindir

scram_only = pytest.mark.parametrize("server", ["scram"], indirect=True)

MakeDatabases = Callable[..., ProjectDatabases]

GUARD = """
import os
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}

def upgrade():
    if "{rev}" in os.environ.get("FRT_NO_MIGRATION", "").split(","):
        raise RuntimeError("revision {rev} must not run here")
    op.create_table("t{rev}", sa.Column("id", sa.Integer, primary_key=True))

def downgrade():
    pass
"""


def write_revision(project: Path, rev: str, down: str | None, extra: str = "") -> None:
    path = project / "migrations" / "versions" / f"{rev}_t.py"
    path.write_text(GUARD.format(rev=rev, down=down) + extra)


@pytest.fixture
def project(tiny_project: Path) -> Path:
    """The tiny project with its chain replaced by guarded revisions 0001, 0002."""
    for path in (tiny_project / "migrations" / "versions").glob("*.py"):
        path.unlink()
    write_revision(tiny_project, "0001", None)
    write_revision(tiny_project, "0002", "0001")
    return tiny_project


def tables(url: URL) -> set[str]:
    with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(url)) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def template_marker(server: URL, name: str, base: str) -> object:
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database="postgres")
    ) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    return owned_marker(name, row[0] if row else None, base)


# -- extend -------------------------------------------------------------------------------------


def test_appended_revision_extends_and_runs_only_it(
    make_databases: MakeDatabases,
    project: Path,
    server: URL,
    base_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = make_databases(project).ensure_template()
    assert first.action == "built"
    write_revision(project, "0003", "0002")
    monkeypatch.setenv("FRT_NO_MIGRATION", "0001,0002")
    databases = make_databases(project)
    result = databases.ensure_template()
    assert (result.action, result.source, result.revisions) == ("extended", first.name, 1)
    assert result.describe() == f"extended from {first.name} by 1 revision"
    assert result.name == f"{base_name}_tpl_{databases.fingerprint[:12]}"
    marker = template_marker(server, result.name, base_name)
    assert marker is not None and marker.head == "0003" and marker.ready  # type: ignore[attr-defined]
    clone = databases.clone_for_worker("gw0")
    assert tables(clone.url) == {"alembic_version", "t0001", "t0002", "t0003"}
    assert database_names(server, base_name) == {first.name, result.name, clone.name}


@scram_only
def test_extend_picks_the_longest_prefix(
    make_databases: MakeDatabases, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_databases(project).ensure_template()
    write_revision(project, "0003", "0002")
    middle = make_databases(project).ensure_template()
    write_revision(project, "0004", "0003")
    write_revision(project, "0005", "0004")
    monkeypatch.setenv("FRT_NO_MIGRATION", "0001,0002,0003")
    result = make_databases(project).ensure_template()
    assert (result.action, result.source, result.revisions) == ("extended", middle.name, 2)


@scram_only
def test_edited_old_revision_builds_from_empty(
    make_databases: MakeDatabases, project: Path
) -> None:
    make_databases(project).ensure_template()
    write_revision(project, "0001", None, extra="\n# edited\n")
    write_revision(project, "0003", "0002")
    assert make_databases(project).ensure_template().action == "built"


@scram_only
def test_no_extend_with_a_seed_or_full(make_databases: MakeDatabases, project: Path) -> None:
    (project / "seed.sql").write_text("INSERT INTO t0001 DEFAULT VALUES;\n")
    make_databases(project, seed="seed.sql").ensure_template()
    write_revision(project, "0003", "0002")
    # a seed runs after the migrations: on an extended clone it would insert its rows twice
    assert make_databases(project, seed="seed.sql").ensure_template().action == "built"
    make_databases(project).ensure_template()  # no seed: a template with a recorded chain
    write_revision(project, "0004", "0003")
    assert make_databases(project).ensure_template(full=True).action == "built"


@scram_only
def test_concurrent_extenders_build_once(
    make_databases: MakeDatabases, project: Path, server: URL, base_name: str
) -> None:
    first = make_databases(project).ensure_template()
    write_revision(project, "0003", "0002")
    contenders = [make_databases(project) for _ in range(3)]
    results: list[TemplateResult] = []
    errors: list[BaseException] = []

    def go(databases: ProjectDatabases) -> None:
        try:
            results.append(databases.ensure_template())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(d,)) for d in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.action for r in results) == ["extended", "reused", "reused"]
    assert database_names(server, base_name) == {first.name, results[0].name}


# -- a symlinked versions directory (trust round 4, item 1) ------------------------------------


def columns(url: URL, table: str) -> set[str]:
    with psycopg.connect(autocommit=True, **psycopg_connect_kwargs(url)) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {r[0] for r in rows}


def link_versions_elsewhere(project: Path, elsewhere: Path) -> Path:
    """The monorepo layout: `migrations/versions` is a symlink to a directory elsewhere."""
    versions = project / "migrations" / "versions"
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    versions.rename(elsewhere)
    versions.symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


@scram_only
def test_revision_appended_behind_a_symlinked_versions_directory_extends_the_template(
    cli: Callable[..., dict[str, object] | str],
    make_databases: MakeDatabases,
    project: Path,
    tmp_path: Path,
) -> None:
    """Trust round 4, item 1: with `migrations/versions` a symlink, appending a revision left the
    fingerprint unchanged; `prepare-template` said "up to date" and the tests ran on the old
    schema (UndefinedColumn)."""
    shared = link_versions_elsewhere(project, tmp_path / "monorepo" / "versions")
    built = cli("prepare-template", "--json")
    assert isinstance(built, dict) and built["action"] == "built"
    (shared / "0003_note.py").write_text(
        GUARD.format(rev="0003", down="0002").replace(
            'op.create_table("t0003", sa.Column("id", sa.Integer, primary_key=True))',
            'op.add_column("t0001", sa.Column("note", sa.Text))',
        )
    )
    extended = cli("prepare-template", "--json")
    assert isinstance(extended, dict)
    assert extended["fingerprint"] != built["fingerprint"]
    assert (extended["action"], extended["source"], extended["revisions"]) == (
        "extended",
        built["template"],
        1,
    )
    clone = make_databases(project).clone_for_worker("gw0")
    assert clone.template == extended["template"]
    assert "note" in columns(clone.url, "t0001")


@scram_only
def test_revision_edited_behind_a_symlinked_versions_directory_builds_a_new_template(
    cli: Callable[..., dict[str, object] | str],
    make_databases: MakeDatabases,
    project: Path,
    tmp_path: Path,
) -> None:
    """Trust round 4, item 1: editing an existing revision through the symlink is a new schema
    too: not "up to date", and not an extend of the old template."""
    link_versions_elsewhere(project, tmp_path / "monorepo" / "versions")
    built = cli("prepare-template", "--json")
    assert isinstance(built, dict) and built["action"] == "built"
    edited = project / "migrations" / "versions" / "0002_t.py"
    edited.write_text(
        edited.read_text().replace(
            'sa.Column("id", sa.Integer, primary_key=True))',
            'sa.Column("id", sa.Integer, primary_key=True), sa.Column("memo", sa.Text))',
        )
    )
    rebuilt = cli("prepare-template", "--json")
    assert isinstance(rebuilt, dict) and rebuilt["action"] == "built"
    assert rebuilt["fingerprint"] != built["fingerprint"]
    clone = make_databases(project).clone_for_worker("gw0")
    assert "memo" in columns(clone.url, "t0002")


# -- restore --------------------------------------------------------------------------------


def test_restore_from_the_cache_runs_no_migration(
    make_databases: MakeDatabases,
    project: Path,
    server: URL,
    base_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    built = make_databases(project, cache_dir=str(cache)).ensure_template()
    assert built.action == "built"
    assert [p.name for p in cache.iterdir()] == [f"testdb-{built.fingerprint}.dump"]
    make_databases(project).drop_database(built.name)  # a fresh server, as far as we know
    monkeypatch.setenv("FRT_NO_MIGRATION", "0001,0002")
    databases = make_databases(project, cache_dir=str(cache))
    restored = databases.ensure_template()
    assert restored.action == "restored"
    assert restored.source == str(dump_path(cache, built.fingerprint))
    assert restored.notes == ()
    clone = databases.clone_for_worker("gw0")
    assert tables(clone.url) == {"alembic_version", "t0001", "t0002"}


@scram_only
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", "checksum does not match"),
        ("truncate", "checksum does not match"),
        ("foreign", "it holds fingerprint"),
        ("garbage", "not a testdb dump"),
    ],
)
def test_corrupt_or_foreign_dump_is_refused_and_replaced(
    make_databases: MakeDatabases,
    project: Path,
    server: URL,
    base_name: str,
    tmp_path: Path,
    damage: str,
    reason: str,
) -> None:
    cache = tmp_path / "cache"
    old = make_databases(project, cache_dir=str(cache)).ensure_template()
    write_revision(project, "0003", "0002")
    databases = make_databases(project, cache_dir=str(cache))
    path = dump_path(cache, databases.fingerprint)
    if damage == "foreign":
        shutil.copy(dump_path(cache, old.fingerprint), path)
    elif damage == "garbage":
        path.write_text("not a dump\n")
    else:
        good = make_databases(project, cache_dir=str(cache), drift_check=False)
        good.ensure_template(full=True)
        data = bytearray(path.read_bytes())
        if damage == "flip":
            data[-10] ^= 0xFF
        else:
            del data[len(data) // 2 :]
        path.write_bytes(bytes(data))
        good.drop_database(good.template_name)
    make_databases(project).drop_database(old.name)  # no extend base: the dump is the only way
    result = databases.ensure_template()
    assert result.action == "built"
    assert len(result.notes) == 1 and reason in result.notes[0]
    assert "refused" in result.notes[0] and str(path) in result.notes[0]
    # nothing lost: the template is there, and the file now holds a good dump of it
    assert database_names(server, base_name) == {result.name}
    databases.drop_database(result.name)
    again = make_databases(project, cache_dir=str(cache)).ensure_template()
    assert again.action == "restored"


def test_no_matching_client_binaries_is_a_clear_error() -> None:
    with pytest.raises(DumpCacheError, match=r"PostgreSQL 99 .*postgresql-client-99"):
        find_client_bindir(99)


# -- drift check ----------------------------------------------------------------------------

MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("t0001", metadata, sa.Column("id", sa.Integer, primary_key=True){extra})
sa.Table("t0002", metadata, sa.Column("id", sa.Integer, primary_key=True))
"""


@scram_only
def test_drift_check_fails_the_build_on_a_missing_column(
    make_databases: MakeDatabases, project: Path, server: URL, base_name: str
) -> None:
    (project / "frt_models_drift.py").write_text(
        MODELS.format(extra=', sa.Column("email", sa.Text)')
    )
    databases = make_databases(project, metadata="frt_models_drift:metadata")
    with pytest.raises(DriftError) as info:
        databases.ensure_template()
    assert "column t0001.email is in the models but not in the migrations" in str(info.value)
    assert "--no-drift-check" in str(info.value)
    assert database_names(server, base_name) == set()  # no template, no scratch left
    skipped = make_databases(project, metadata="frt_models_drift:metadata", drift_check=False)
    assert skipped.ensure_template().action == "built"


@scram_only
def test_drift_check_passes_when_models_match(make_databases: MakeDatabases, project: Path) -> None:
    (project / "frt_models_ok.py").write_text(MODELS.format(extra=""))
    assert make_databases(project, metadata="frt_models_ok:metadata").ensure_template().built


# -- last use and bounded GC ------------------------------------------------------------------


def _three_templates(make_databases: MakeDatabases, project: Path) -> list[TemplateResult]:
    out = [make_databases(project).ensure_template()]
    for rev, down in (("0003", "0002"), ("0004", "0003")):
        write_revision(project, rev, down)
        out.append(make_databases(project).ensure_template())
    return out


@scram_only
def test_keep_one_leaves_one_template_per_base(
    make_databases: MakeDatabases, project: Path, server: URL, base_name: str
) -> None:
    made = _three_templates(make_databases, project)
    databases = make_databases(project)
    plan = databases.plan_clean(stale_templates=True, keep=1)
    assert sorted(d.name for d in plan.drop) == sorted(r.name for r in made[:2])
    databases.clean(plan)
    assert database_names(server, base_name) == {made[2].name}


@scram_only
def test_keep_and_older_than_spare_recent_templates(
    make_databases: MakeDatabases, project: Path, tmp_path: Path
) -> None:
    made = _three_templates(make_databases, project)
    databases = make_databases(project)
    plan = databases.plan_clean(stale_templates=True, keep=2)
    assert [d.name for d in plan.drop] == [made[0].name]  # the oldest stale one
    plan = databases.plan_clean(stale_templates=True, older_than=3600)
    assert plan.drop == []
    assert {n for n, r in plan.skipped if "--older-than" in r} == {made[0].name, made[1].name}


@scram_only
def test_keep_zero_still_spares_a_template_a_run_holds(
    make_databases: MakeDatabases, project: Path, server: URL, base_name: str
) -> None:
    made = _three_templates(make_databases, project)
    (project / "migrations" / "versions" / "0004_t.py").unlink()
    held = make_databases(project)  # the middle chain (0001-0003): a run in progress uses it
    assert held.hold_template() == made[1].name
    write_revision(project, "0004", "0003")
    databases = make_databases(project)
    assert databases.template_name == made[2].name
    plan = databases.plan_clean(stale_templates=True, keep=0)
    assert [d.name for d in plan.drop] == [made[0].name]
    assert (made[1].name, "template in use by a run in progress") in plan.skipped
    databases.clean(plan)
    assert database_names(server, base_name) == {made[1].name, made[2].name}


@scram_only
def test_reuse_records_the_last_use(
    make_databases: MakeDatabases, project: Path, server: URL, base_name: str
) -> None:
    databases = make_databases(project)
    name = databases.ensure_template().name
    with psycopg.connect(
        autocommit=True, **psycopg_connect_kwargs(server, database="postgres")
    ) as conn:
        marker = template_marker(server, name, base_name)
        stale = json.loads(marker.to_comment())  # type: ignore[attr-defined]
        stale["used_at"] = "2000-01-01T00:00:00+00:00"
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(json.dumps(stale))
            )
        )
    assert databases.ensure_template().action == "reused"
    used = template_marker(server, name, base_name).used_at  # type: ignore[attr-defined]
    assert used is not None and not used.startswith("2000")


@scram_only
def test_prepare_hints_at_clean_when_stale_templates_pile_up(
    make_databases: MakeDatabases, project: Path
) -> None:
    for index in range(3, 8):
        write_revision(project, f"{index:04d}", f"{index - 1:04d}")
        result = make_databases(project).ensure_template()
    assert len(result.notes) == 1
    assert "hint: 4 templates" in result.notes[0]
    assert "testdb clean --stale-templates --keep" in result.notes[0]


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli(
    project: Path, base_url: URL, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, object] | str]:
    monkeypatch.chdir(project)
    for var in ("TESTDB_NAMESPACE", "TESTDB_DUMP_CACHE_DIR", "DATABASE_URL", "TESTDB_METADATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TESTDB_URL", render_for_driver(base_url))

    def invoke(*args: str) -> dict[str, object] | str:
        result = CliRunner().invoke(main, list(args), catch_exceptions=True)
        assert result.exit_code == 0, (result.output, result.exception)
        return json.loads(result.stdout) if "--json" in args else result.stdout

    return invoke


@scram_only
def test_cli_reports_restored_then_extended(
    cli: Callable[..., dict[str, object] | str],
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = str(tmp_path / "cache")
    built = cli("prepare-template", "--cache-dir", cache, "--json")
    assert isinstance(built, dict) and built["action"] == "built"
    assert cli("fingerprint").strip() == built["fingerprint"]  # type: ignore[union-attr]
    cli("clean", "--templates", "--yes")
    monkeypatch.setenv("FRT_NO_MIGRATION", "0001,0002")
    restored = cli("prepare-template", "--cache-dir", cache, "--json")
    assert isinstance(restored, dict) and restored["action"] == "restored"
    write_revision(project, "0003", "0002")
    text = cli("prepare-template", "--cache-dir", cache)
    assert isinstance(text, str)
    assert (
        text.startswith("extended template ") and f"from {built['template']} by 1 revision" in text
    )


@scram_only
def test_cli_clean_keep_and_bad_duration(
    cli: Callable[..., dict[str, object] | str], project: Path
) -> None:
    cli("prepare-template")
    write_revision(project, "0003", "0002")
    cli("prepare-template")
    out = cli("clean", "--stale-templates", "--keep", "1", "--yes", "--json")
    assert isinstance(out, dict) and len(out["dropped"]) == 1  # type: ignore[arg-type]
    bad = CliRunner().invoke(main, ["clean", "--stale-templates", "--older-than", "soon"])
    assert bad.exit_code == 2 and "use e.g. 90s, 30m, 12h, 7d or 2w" in bad.output
    lone = CliRunner().invoke(main, ["clean", "--keep", "1"])
    assert (
        lone.exit_code == 2 and "--keep and --older-than go with --stale-templates" in lone.output
    )


def test_template_chain_marker_is_compact(
    make_databases: MakeDatabases, project: Path, server: URL, base_name: str
) -> None:
    """The marker holds the head and one digest, whatever the chain's length."""
    for index in range(3, 40):
        write_revision(project, f"{index:04d}", f"{index - 1:04d}")
    result = make_databases(project).ensure_template()
    marker = template_marker(server, result.name, base_name)
    assert marker is not None and marker.role == ROLE_TEMPLATE  # type: ignore[attr-defined]
    assert len(marker.to_comment()) < 600  # type: ignore[attr-defined]
