"""The template fingerprint: same inputs → same digest anywhere; any schema input changes it."""

from __future__ import annotations

import py_compile
import shutil
import textwrap
from pathlib import Path

import conftest
import pytest
from conftest import write_tiny_project
from sqlalchemy.engine import URL

from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.core.urls import render_for_driver
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import ConfigError
from finreport_testdb.migrators.alembic_migrator import AlembicMigrator
from finreport_testdb.migrators.migrator import hash_globs, hash_tree, project_glob


def migrator_for(root: Path) -> AlembicMigrator:
    return AlembicMigrator(root / "alembic.ini", project_root=root)


def fp(root: Path) -> str:
    return migrator_for(root).fingerprint()


def add_revision(root: Path, name: str, revision: str, down: str, body: str = "pass") -> None:
    (root / "migrations" / "versions" / name).write_text(
        textwrap.dedent(f'''
        revision = "{revision}"
        down_revision = "{down}"

        def upgrade():
            {body}

        def downgrade():
            pass
    ''')
    )


def databases_for(root: Path, server: URL) -> ProjectDatabases:
    settings = resolve_settings(
        {"url": render_for_driver(server.set(database="frt_fp"))}, cwd=root, environ={}
    )
    return ProjectDatabases.from_settings(settings)


def test_fingerprint_is_a_sha256_hex_digest(tiny_project: Path) -> None:
    digest = fp(tiny_project)
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_fingerprint_is_stable_across_calls(tiny_project: Path) -> None:
    assert fp(tiny_project) == fp(tiny_project)


def test_fingerprint_is_the_same_for_two_copies_in_different_directories(tmp_path: Path) -> None:
    a = write_tiny_project(tmp_path / "checkout-a")
    b = write_tiny_project(tmp_path / "elsewhere" / "checkout-b")
    assert fp(a) == fp(b)


def test_fingerprint_ignores_file_modification_times(tmp_path: Path) -> None:
    a = write_tiny_project(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)  # copytree keeps content; touch changes the mtimes
    for path in (b / "migrations").rglob("*.py"):
        path.touch()
    assert fp(a) == fp(b)


def test_fingerprint_changes_when_a_migration_file_changes(tiny_project: Path) -> None:
    before = fp(tiny_project)
    path = tiny_project / "migrations" / "versions" / "0002_entries.py"
    path.write_text(path.read_text().replace("Numeric(12, 2)", "Numeric(14, 2)"))
    assert fp(tiny_project) != before


def test_fingerprint_changes_when_a_migration_is_added(tiny_project: Path) -> None:
    before = fp(tiny_project)
    add_revision(tiny_project, "0003_more.py", "0003", "0002")
    assert fp(tiny_project) != before


def test_fingerprint_changes_when_env_py_changes(tiny_project: Path) -> None:
    before = fp(tiny_project)
    env = tiny_project / "migrations" / "env.py"
    env.write_text(env.read_text() + "\n# include_schemas=True\n")
    assert fp(tiny_project) != before


def test_fingerprint_changes_when_script_template_changes(tiny_project: Path) -> None:
    mako = tiny_project / "migrations" / "script.py.mako"
    mako.write_text("${message}\n")
    before = fp(tiny_project)
    mako.write_text("${message}\n# new template\n")
    assert fp(tiny_project) != before


def test_fingerprint_changes_when_an_alembic_ini_option_changes(tiny_project: Path) -> None:
    before = fp(tiny_project)
    ini = tiny_project / "alembic.ini"
    ini.write_text(ini.read_text() + "version_table = custom_version\n")
    assert fp(tiny_project) != before


def test_fingerprint_ignores_the_url_in_alembic_ini(tiny_project: Path) -> None:
    """sqlalchemy.url is machine-local: a developer's URL must not change the template."""
    before = fp(tiny_project)
    ini = tiny_project / "alembic.ini"
    ini.write_text(ini.read_text().replace("sqlalchemy.url =", "sqlalchemy.url = postgresql://x/y"))
    assert fp(tiny_project) == before


def test_fingerprint_ignores_other_ini_sections(tiny_project: Path) -> None:
    before = fp(tiny_project)
    ini = tiny_project / "alembic.ini"
    ini.write_text(ini.read_text() + "\n[loggers]\nkeys = root\n")
    assert fp(tiny_project) == before


def test_fingerprint_ignores_pycache_and_pyc_files(tiny_project: Path) -> None:
    before = fp(tiny_project)
    cache = tiny_project / "migrations" / "versions" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "0001_accounts.cpython-311.pyc").write_bytes(b"\x00compiled")
    (tiny_project / "migrations" / "stray.pyc").write_bytes(b"\x00compiled")
    assert fp(tiny_project) == before


def test_two_heads_is_config_error_naming_the_heads(tiny_project: Path) -> None:
    add_revision(tiny_project, "0003_branch.py", "0003", "0001")
    with pytest.raises(ConfigError, match=r"2 heads \(0002, 0003\).*alembic merge heads"):
        fp(tiny_project)


def test_empty_script_directory_is_config_error(tiny_project: Path) -> None:
    for path in (tiny_project / "migrations" / "versions").iterdir():
        path.unlink()
    with pytest.raises(ConfigError, match="no revisions"):
        fp(tiny_project)


def test_missing_alembic_ini_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"alembic\.ini does not exist.*TESTDB_ALEMBIC_CONFIG"):
        fp(tmp_path)


def test_bad_script_location_is_config_error(tiny_project: Path) -> None:
    ini = tiny_project / "alembic.ini"
    ini.write_text(ini.read_text().replace("%(here)s/migrations", "%(here)s/nowhere"))
    with pytest.raises(ConfigError, match="script directory"):
        fp(tiny_project)


def test_script_location_override_is_used(tiny_project: Path) -> None:
    shutil.copytree(tiny_project / "migrations", tiny_project / "other")
    add_revision(tiny_project, "0003_more.py", "0003", "0002")  # only in migrations/
    overridden = AlembicMigrator(
        tiny_project / "alembic.ini", script_location="other", project_root=tiny_project
    )
    assert overridden.fingerprint() != fp(tiny_project)


# -- extra globs ----------------------------------------------------------------------------------


def test_hash_globs_changes_with_matched_file_content(tmp_path: Path) -> None:
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "a.sql").write_text("INSERT 1")
    before = hash_globs(tmp_path, ["seed/*.sql"])
    (tmp_path / "seed" / "a.sql").write_text("INSERT 2")
    assert hash_globs(tmp_path, ["seed/*.sql"]) != before


def test_hash_globs_pattern_matching_nothing_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pattern 'seed/\*\.sql' matches no file"):
        hash_globs(tmp_path, ["seed/*.sql"])


def test_hash_tree_is_independent_of_location(tmp_path: Path) -> None:
    for d in ("x", "y/z"):
        (tmp_path / d / "sub").mkdir(parents=True)
        (tmp_path / d / "sub" / "f.txt").write_text("same")
    assert hash_tree(tmp_path / "x") == hash_tree(tmp_path / "y" / "z")


def test_template_fingerprint_includes_fingerprint_extra(tmp_path: Path, trust_server: URL) -> None:
    root = write_tiny_project(
        tmp_path / "p", pyproject_extra='fingerprint_extra = ["seed/*.sql"]\n'
    )
    (root / "seed").mkdir()
    (root / "seed" / "rows.sql").write_text("INSERT INTO accounts (name) VALUES ('fees');")
    before = databases_for(root, trust_server).fingerprint
    (root / "seed" / "rows.sql").write_text("INSERT INTO accounts (name) VALUES ('tax');")
    assert databases_for(root, trust_server).fingerprint != before


def test_template_fingerprint_extra_glob_matching_nothing_is_config_error(
    tmp_path: Path, trust_server: URL
) -> None:
    root = write_tiny_project(
        tmp_path / "p", pyproject_extra='fingerprint_extra = ["seed/*.sql"]\n'
    )
    with pytest.raises(
        ConfigError, match=r"fingerprint_extra pattern 'seed/\*\.sql' matches no file"
    ):
        _ = databases_for(root, trust_server).fingerprint


def test_template_fingerprint_changes_with_the_server_major(
    tiny_project: Path, trust_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's major version is an input: a template from PG 15 is never reused on PG 16."""
    databases = databases_for(tiny_project, trust_server)
    real_major = databases.server_major
    assert real_major >= 10
    on_this_server = databases.fingerprint
    monkeypatch.setattr(ProjectDatabases, "server_major", property(lambda self: real_major + 1))
    assert databases_for(tiny_project, trust_server).fingerprint != on_this_server


def test_template_fingerprint_same_for_two_copies(tmp_path: Path, trust_server: URL) -> None:
    a = write_tiny_project(tmp_path / "a")
    b = write_tiny_project(tmp_path / "b")
    assert databases_for(a, trust_server).fingerprint == databases_for(b, trust_server).fingerprint


# -- what Alembic loads, whatever the path shape (trust round 4, item 1) ------------------------


def symlinked_versions(root: Path, elsewhere: Path) -> Path:
    """The monorepo layout: `migrations/versions` is a symlink to a directory elsewhere."""
    versions = root / "migrations" / "versions"
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    versions.rename(elsewhere)
    versions.symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


def test_fingerprint_changes_when_a_revision_is_appended_to_a_symlinked_versions_directory(
    tiny_project: Path, tmp_path: Path
) -> None:
    """Trust round 4, item 1: `Path.rglob` does not descend into a symlinked `versions/`, so an
    appended revision left the fingerprint unchanged and the old template was reused."""
    shared = symlinked_versions(tiny_project, tmp_path / "monorepo" / "versions")
    before = fp(tiny_project)
    add_revision(tiny_project, "0003_more.py", "0003", "0002")
    assert (shared / "0003_more.py").is_file()
    assert fp(tiny_project) != before


def test_fingerprint_changes_when_a_revision_is_edited_through_a_symlinked_versions_directory(
    tiny_project: Path, tmp_path: Path
) -> None:
    """Trust round 4, item 1: editing a revision that lives behind a symlinked `versions/`."""
    symlinked_versions(tiny_project, tmp_path / "monorepo" / "versions")
    before = fp(tiny_project)
    path = tiny_project / "migrations" / "versions" / "0002_entries.py"
    path.write_text(path.read_text().replace("Numeric(12, 2)", "Numeric(14, 2)"))
    assert fp(tiny_project) != before


def test_symlinked_versions_directory_fingerprints_like_a_real_one(
    tmp_path: Path,
) -> None:
    """Where the revisions really lie does not matter, only what Alembic reads: the same files
    behind a symlink give the same fingerprint as in place (so machines agree)."""
    real = write_tiny_project(tmp_path / "real")
    linked = write_tiny_project(tmp_path / "linked")
    symlinked_versions(linked, tmp_path / "monorepo" / "versions")
    assert fp(real) == fp(linked)


def test_a_kept_migrator_sees_a_revision_appended_through_a_symlink(
    tiny_project: Path, tmp_path: Path
) -> None:
    """Trust round 4, item 1 (sibling): the loaded script directory is cached by a signature of
    the migration files, which also used rglob: one migrator kept across the change reported
    the old head and chain."""
    symlinked_versions(tiny_project, tmp_path / "monorepo" / "versions")
    migrator = migrator_for(tiny_project)
    assert migrator.target_heads() == {"0002"}
    add_revision(tiny_project, "0003_more.py", "0003", "0002")
    assert migrator.target_heads() == {"0003"}
    chain = migrator.revision_chain()
    assert chain is not None and chain.head == "0003"


def test_chain_lineage_covers_files_in_a_symlinked_directory(
    tiny_project: Path, tmp_path: Path
) -> None:
    """Trust round 4, item 1 (sibling): the lineage hash (what an extend base must share) also
    walked the script directory with rglob; a helper env.py imports from a symlinked directory
    is an input like any other."""
    shared = tmp_path / "monorepo" / "helpers"
    shared.mkdir(parents=True)
    (shared / "naming.py").write_text("CONVENTION = 'ix_%(column_0_label)s'\n")
    (tiny_project / "migrations" / "helpers").symlink_to(shared, target_is_directory=True)
    before = migrator_for(tiny_project).revision_chain()
    (shared / "naming.py").write_text("CONVENTION = 'idx_%(column_0_label)s'\n")
    after = migrator_for(tiny_project).revision_chain()
    assert before is not None and after is not None
    assert after.revisions == before.revisions
    assert after.lineage != before.lineage


@pytest.mark.parametrize("spelling", ["inside-by-dotdot", "outside"])
def test_fingerprint_covers_every_version_location(
    spelling: str, tiny_project: Path, tmp_path: Path
) -> None:
    """Trust round 4, item 1 (sibling): a version location was skipped when its path *spelled*
    one inside the script directory (`migrations/../shared`), so its revisions were never hashed."""
    if spelling == "outside":
        location, option = tmp_path / "shared_versions", str(tmp_path / "shared_versions")
    else:
        location, option = tiny_project / "shared", "%(here)s/migrations/../shared"
    location.mkdir()
    ini = tiny_project / "alembic.ini"
    ini.write_text(
        ini.read_text()
        + f"path_separator = space\nversion_locations = %(here)s/migrations/versions {option}\n"
    )
    (location / "0003_more.py").write_text(
        'revision = "0003"\ndown_revision = "0002"\n\ndef upgrade():\n    pass\n'
    )
    before = fp(tiny_project)
    assert migrator_for(tiny_project).target_heads() == {"0003"}
    (location / "0003_more.py").write_text(
        'revision = "0003"\ndown_revision = "0002"\n\ndef upgrade():\n    print("changed")\n'
    )
    assert fp(tiny_project) != before


def test_a_version_location_that_does_not_exist_is_skipped_as_alembic_does(
    tiny_project: Path,
) -> None:
    """Guard: every version location is walked now; a missing one has no files (Alembic skips
    it), it is not an error."""
    ini = tiny_project / "alembic.ini"
    plain = ini.read_text() + "path_separator = space\n"
    ini.write_text(plain + "version_locations = %(here)s/migrations/versions\n")
    before = fp(tiny_project)
    ini.write_text(plain + "version_locations = %(here)s/migrations/versions %(here)s/not-yet\n")
    assert migrator_for(tiny_project).target_heads() == {"0002"}
    assert fp(tiny_project) == before


def test_fingerprint_changes_with_a_symlinked_revision_files_target(
    tiny_project: Path, tmp_path: Path
) -> None:
    """Guard (worked before): a revision file that is itself a symlink is hashed by content."""
    target = tmp_path / "monorepo" / "0003_more.py"
    target.parent.mkdir(parents=True)
    target.write_text('revision = "0003"\ndown_revision = "0002"\n\ndef upgrade():\n    pass\n')
    (tiny_project / "migrations" / "versions" / "0003_more.py").symlink_to(target)
    before = fp(tiny_project)
    target.write_text(target.read_text().replace("pass", "print('changed')"))
    assert fp(tiny_project) != before


def test_fingerprint_covers_sourceless_revisions(tiny_project: Path) -> None:
    """Trust round 4, item 1 (sibling): with `sourceless = true` Alembic loads `.pyc` revisions,
    which the tree hash skips as caches; the revision files Alembic loaded are hashed too."""
    versions = tiny_project / "migrations" / "versions"
    ini = tiny_project / "alembic.ini"
    ini.write_text(ini.read_text() + "sourceless = true\n")

    def compile_0002(numeric: str) -> None:
        source = versions / "0002_entries.py"
        source.write_text(
            textwrap.dedent(conftest.TINY_REVISIONS["0002_entries.py"]).replace(
                "Numeric(12, 2)", numeric
            )
        )
        py_compile.compile(str(source), cfile=str(versions / "0002_entries.pyc"), doraise=True)
        source.unlink()

    compile_0002("Numeric(12, 2)")
    before = fp(tiny_project)
    assert migrator_for(tiny_project).target_heads() == {"0002"}
    compile_0002("Numeric(14, 2)")
    assert fp(tiny_project) != before


def test_fingerprint_extra_double_star_follows_symlinked_directories_inside_the_project(
    tmp_path: Path,
) -> None:
    """Trust round 4, item 1 (sibling): `**` in fingerprint_extra (and seed) did not descend
    into a symlinked directory, so an edit behind it kept the fingerprint."""
    (tmp_path / "shared" / "views").mkdir(parents=True)
    (tmp_path / "shared" / "views" / "balances.sql").write_text("CREATE VIEW v AS SELECT 1;")
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "base.sql").write_text("SELECT 1;")
    (tmp_path / "sql" / "views").symlink_to(tmp_path / "shared" / "views")
    before = hash_globs(tmp_path, ["sql/**/*.sql"])
    (tmp_path / "shared" / "views" / "balances.sql").write_text("CREATE VIEW v AS SELECT 2;")
    assert hash_globs(tmp_path, ["sql/**/*.sql"]) != before


def test_glob_counts_a_file_reached_through_two_paths_once(tmp_path: Path) -> None:
    """A seed file reachable directly and through a symlinked directory runs once, not twice."""
    (tmp_path / "seed" / "common").mkdir(parents=True)
    (tmp_path / "seed" / "common" / "rows.sql").write_text("INSERT 1;")
    (tmp_path / "seed" / "alias").symlink_to(tmp_path / "seed" / "common")
    matches = project_glob(tmp_path, "seed/**/*.sql", what="seed")
    assert [p.relative_to(tmp_path).as_posix() for p in matches] == ["seed/alias/rows.sql"]


def test_glob_double_star_does_not_enter_a_symlinked_directory_outside_the_project(
    tmp_path: Path,
) -> None:
    """A `**` walk never leaves the project: a symlinked directory leading outside is not
    entered (a single-star pattern naming it is refused, as before)."""
    project, outside = tmp_path / "project", tmp_path / "outside"
    (project / "seed").mkdir(parents=True)
    outside.mkdir()
    (project / "seed" / "ok.sql").write_text("SELECT 1;")
    (outside / "evil.sql").write_text("SELECT 2;")
    (project / "seed" / "out").symlink_to(outside)
    matches = project_glob(project, "seed/**/*.sql", what="seed")
    assert [p.relative_to(project).as_posix() for p in matches] == ["seed/ok.sql"]
    with pytest.raises(ConfigError, match="leads outside the project root"):
        project_glob(project, "seed/out/*.sql", what="seed")
