"""The template fingerprint: same inputs → same digest anywhere; any schema input changes it."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import write_tiny_project
from sqlalchemy.engine import URL

from finreport_testdb.alembic_migrator import AlembicMigrator
from finreport_testdb.errors import ConfigError
from finreport_testdb.manager import ProjectDatabases
from finreport_testdb.migrator import hash_globs, hash_tree
from finreport_testdb.settings import resolve_settings
from finreport_testdb.urls import render_for_driver


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
