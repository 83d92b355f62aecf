"""settings.py: precedence overrides → environment → [tool.testdb] → defaults, and `sources`.

Every test resolves against its own throwaway project and an explicit `environ`, so the real
environment and the repository's own pyproject.toml never leak in.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import SPECIAL_PASSWORD, write_tiny_project
from sqlalchemy.engine import URL

from finreport_testdb.core.names import validate_namespace
from finreport_testdb.core.settings import SOURCE_DEFAULT, SOURCE_OVERRIDE, resolve_settings
from finreport_testdb.core.urls import render_for_driver
from finreport_testdb.errors import ConfigError, UnsafeDatabaseName

OVERRIDE_URL = "postgresql+psycopg://o@override/override_db"
TESTDB_URL = "postgresql+psycopg://t@testdb-env/testdb_env_db"
DATABASE_URL = "postgresql+asyncpg://d@database-env/database_env_db"
TOML_URL = "postgresql+psycopg://p@toml/toml_db"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_tiny_project(tmp_path / "proj", pyproject_extra=f'url = "{TOML_URL}"\n')


def table_source(project: Path) -> str:
    return f"{project / 'pyproject.toml'} [tool.testdb]"


def test_override_beats_environment_and_pyproject(project: Path) -> None:
    s = resolve_settings(
        {"url": OVERRIDE_URL},
        cwd=project,
        environ={"TESTDB_URL": TESTDB_URL, "DATABASE_URL": DATABASE_URL},
    )
    assert s.url is not None and s.url.database == "override_db"
    assert s.sources["url"] == SOURCE_OVERRIDE


def test_testdb_url_beats_database_url(project: Path) -> None:
    s = resolve_settings(
        cwd=project, environ={"TESTDB_URL": TESTDB_URL, "DATABASE_URL": DATABASE_URL}
    )
    assert s.url is not None and s.url.database == "testdb_env_db"
    assert s.sources["url"] == "env TESTDB_URL"


def test_database_url_never_outranks_the_table_url(project: Path) -> None:
    """Issue 10 item 11: DATABASE_URL is only a fallback, below [tool.testdb] url."""
    s = resolve_settings(cwd=project, environ={"DATABASE_URL": DATABASE_URL})
    assert s.url is not None and s.url.database == "toml_db"
    assert s.sources["url"] == table_source(project)


def test_database_url_is_the_fallback_of_an_opted_in_project(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p")  # an empty [tool.testdb] table: opted in, no url
    s = resolve_settings(cwd=root, environ={"TESTDB_URL": "", "DATABASE_URL": DATABASE_URL})
    assert s.url is not None and s.url.database == "database_env_db"
    assert s.url.drivername == "postgresql+asyncpg"  # the configured driver is kept
    assert s.sources["url"] == "env DATABASE_URL (fallback)"
    assert s.opted_in


def test_database_url_alone_neither_opts_in_nor_configures(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "plain"\n')
    (root / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    s = resolve_settings(cwd=root, environ={"DATABASE_URL": DATABASE_URL})
    assert s.url is None
    assert not s.opted_in
    opted = resolve_settings(
        cwd=root, environ={"DATABASE_URL": DATABASE_URL, "TESTDB_NAMESPACE": "ci"}
    )
    assert opted.opted_in and opted.url is not None
    assert opted.sources["url"] == "env DATABASE_URL (fallback)"
    rows = {name: value for name, value, _ in s.describe()}
    assert rows["url"] == "(embedded server)"
    assert rows["opted_in"].startswith("no")
    assert {name: value for name, value, _ in opted.describe()}["opted_in"] == "yes"


def test_export_url_as_from_env_table_and_errors(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p", pyproject_extra='export_url_as = ["DATABASE_URL"]\n')
    assert resolve_settings(cwd=root, environ={}).export_url_as == ("DATABASE_URL",)
    s = resolve_settings(cwd=root, environ={"TESTDB_EXPORT_URL_AS": "APP_DB, OTHER_DB"})
    assert s.export_url_as == ("APP_DB", "OTHER_DB")
    with pytest.raises(ConfigError, match=r"'DATABASE-URL', not an environment variable"):
        resolve_settings(cwd=root, environ={"TESTDB_EXPORT_URL_AS": "DATABASE-URL"})
    with pytest.raises(ConfigError, match=r"'TESTDB_URL', which testdb reads itself"):
        resolve_settings(cwd=root, environ={"TESTDB_EXPORT_URL_AS": "TESTDB_URL"})


def test_environment_beats_pyproject(project: Path) -> None:
    s = resolve_settings(
        cwd=project, environ={"TESTDB_NAMESPACE": "envns", "TESTDB_URL": TESTDB_URL}
    )
    assert s.namespace == "envns"
    assert s.sources["namespace"] == "env TESTDB_NAMESPACE"


def test_pyproject_beats_defaults(project: Path) -> None:
    s = resolve_settings(cwd=project, environ={})
    assert s.url is not None and s.url.database == "toml_db"
    assert s.sources["url"] == table_source(project)
    assert s.has_tool_table


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "proj")
    s = resolve_settings(cwd=root, environ={})
    assert s.url is None  # → embedded server
    assert s.namespace == ""
    assert s.alembic_config == root / "alembic.ini"
    assert s.maintenance_db == "postgres"
    assert s.lock_timeout == 600.0
    for name in ("url", "namespace", "alembic_config", "maintenance_db", "lock_timeout"):
        assert s.sources[name] == SOURCE_DEFAULT


def test_none_override_means_not_given(project: Path) -> None:
    s = resolve_settings(
        {"url": None, "namespace": None}, cwd=project, environ={"TESTDB_URL": TESTDB_URL}
    )
    assert s.sources["url"] == "env TESTDB_URL"


def test_settings_found_from_a_subdirectory(project: Path) -> None:
    sub = project / "src" / "pkg"
    sub.mkdir(parents=True)
    s = resolve_settings(cwd=sub, environ={})
    assert s.project_root == project.resolve()
    assert s.alembic_config == project.resolve() / "alembic.ini"


def test_relative_alembic_config_is_resolved_against_project_root(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p", pyproject_extra='alembic_config = "db/alembic.ini"\n')
    s = resolve_settings(cwd=root, environ={})
    assert s.alembic_config == root.resolve() / "db" / "alembic.ini"


def test_base_database_is_the_url_database(project: Path) -> None:
    s = resolve_settings(cwd=project, environ={})
    assert s.base_database == "toml_db"


def test_base_name_derived_from_project_name_without_url(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p")
    s = resolve_settings(cwd=root, environ={})
    assert s.base_database == "tiny_test"
    assert s.sources["base_name"] == "derived from the project name"


def test_unknown_tool_testdb_key_is_config_error_naming_it(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p", pyproject_extra='urll = "postgresql://x/y"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) urll in \[tool\.testdb\]"):
        resolve_settings(cwd=root, environ={})


def test_broken_pyproject_is_config_error(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p", pyproject_extra='url = "unterminated\n')
    with pytest.raises(ConfigError, match="TOML"):
        resolve_settings(cwd=root, environ={})


def test_namespace_auto_is_stable_and_valid(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p", pyproject_extra='namespace = "auto"\n')
    first = resolve_settings(cwd=root, environ={})
    second = resolve_settings(cwd=root, environ={})
    assert first.namespace == second.namespace
    assert first.namespace not in ("", "auto")
    assert validate_namespace(first.namespace) == first.namespace
    assert "auto" in first.sources["namespace"]


def test_namespace_auto_differs_between_checkouts(tmp_path: Path) -> None:
    a = write_tiny_project(tmp_path / "a")
    b = write_tiny_project(tmp_path / "b")
    ns_a = resolve_settings({"namespace": "auto"}, cwd=a, environ={}).namespace
    ns_b = resolve_settings({"namespace": "auto"}, cwd=b, environ={}).namespace
    assert ns_a != ns_b


def test_namespace_auto_uses_git_branch(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "-b", "feature/Ledger-42"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=root, check=True)
    ns = resolve_settings({"namespace": "auto"}, cwd=root, environ={}).namespace
    assert ns.startswith("featureledge_")
    assert validate_namespace(ns) == ns


def test_bad_namespace_is_rejected(project: Path) -> None:
    with pytest.raises(UnsafeDatabaseName, match=r"'a/b' is not allowed"):
        resolve_settings({"namespace": "a/b"}, cwd=project, environ={})


def test_bad_namespace_error_names_its_source(project: Path) -> None:
    with pytest.raises(UnsafeDatabaseName, match="env TESTDB_NAMESPACE"):
        resolve_settings(cwd=project, environ={"TESTDB_NAMESPACE": "x y"})


def test_bad_base_name_in_url_is_rejected(project: Path) -> None:
    with pytest.raises(UnsafeDatabaseName, match="';'"):
        resolve_settings({"url": "postgresql://h/app;drop"}, cwd=project, environ={})


def test_invalid_url_error_names_its_source(project: Path) -> None:
    with pytest.raises(ConfigError, match="env TESTDB_URL"):
        resolve_settings(cwd=project, environ={"TESTDB_URL": "mysql://h/app"})


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("false", False), ("off", False)]
)
def test_boolean_from_environment(project: Path, value: str, expected: bool) -> None:
    assert resolve_settings(cwd=project, environ={"TESTDB_REUSE": value}).reuse is expected


def test_bad_boolean_is_config_error(project: Path) -> None:
    with pytest.raises(ConfigError, match="reuse from env TESTDB_REUSE is 'maybe'"):
        resolve_settings(cwd=project, environ={"TESTDB_REUSE": "maybe"})


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_bad_lock_timeout_is_config_error(project: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="lock_timeout"):
        resolve_settings(cwd=project, environ={"TESTDB_LOCK_TIMEOUT": value})


def test_fingerprint_extra_from_env_is_split_on_commas(project: Path) -> None:
    s = resolve_settings(cwd=project, environ={"TESTDB_FINGERPRINT_EXTRA": "a/*.sql, b.txt"})
    assert s.fingerprint_extra == ("a/*.sql", "b.txt")


def test_fingerprint_extra_must_be_list_of_strings(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p", pyproject_extra="fingerprint_extra = [1, 2]\n")
    with pytest.raises(ConfigError, match="list of strings"):
        resolve_settings(cwd=root, environ={})


def test_wrong_type_in_pyproject_is_config_error(tmp_path: Path) -> None:
    root = write_tiny_project(tmp_path / "p", pyproject_extra="namespace = 3\n")
    with pytest.raises(ConfigError, match=r"namespace .* must be a string"):
        resolve_settings(cwd=root, environ={})


def test_describe_masks_password_and_lists_sources(project: Path) -> None:
    rendered = render_for_driver(
        URL.create(
            "postgresql+psycopg",
            username="app",
            password=SPECIAL_PASSWORD,
            host="h",
            database="app_test",
        )
    )
    s = resolve_settings(cwd=project, environ={"TESTDB_URL": rendered})
    assert s.url is not None and s.url.password == SPECIAL_PASSWORD
    rows = {name: (value, source) for name, value, source in s.describe()}
    assert rows["url"] == ("postgresql+psycopg://app:***@h/app_test", "env TESTDB_URL")
    assert rows["base_database"] == ("app_test", "derived")
    assert SPECIAL_PASSWORD not in repr(s.describe())


# --------------------------------------------------------------------------- export_url_as


@pytest.mark.parametrize(
    "name",
    [
        # libpq's (and the PostgreSQL tools'): they steer testdb's own connections too
        "PGOPTIONS",
        "PGSERVICE",
        "PGSSLMODE",
        "PGPASSWORD",
        "pghost",
        "PG_COLOR",
        # the loader's, the interpreter's, pytest's and testdb's own
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTEST_ADDOPTS",
        "TESTDB_CACHE_DIR",
        "_TESTDB_PARENT",
        # the shell's and the system's
        "PATH",
        "HOME",
        "SHELL",
        "USER",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "IFS",
        "XDG_CACHE_HOME",
    ],
)
def test_export_url_as_refuses_names_other_programs_read(tmp_path: Path, name: str) -> None:
    """Trust round 4, item 4: PGOPTIONS/PGSERVICE/PGSSLMODE broke testdb's own connections and put
    the URL with its password into an error line and the server's log, LD_PRELOAD made the loader
    print pieces of it, PATH/PYTHONPATH/HOME were replaced silently. Each is refused in one line
    naming the variable and the fix, from the table and from the environment alike."""
    root = write_tiny_project(tmp_path / "p", pyproject_extra=f'export_url_as = ["{name}"]\n')
    with pytest.raises(ConfigError) as table:
        resolve_settings(cwd=root, environ={})
    with pytest.raises(ConfigError) as env:
        resolve_settings(cwd=root, environ={"TESTDB_EXPORT_URL_AS": f"APP_DB,{name}"})
    for exc in (table.value, env.value):
        message = str(exc)
        assert "\n" not in message
        assert f"contains {name!r}, which " in message
        assert "export to the variable your app reads instead, e.g. DATABASE_URL" in message
    assert "env TESTDB_EXPORT_URL_AS" in str(env.value)


@pytest.mark.parametrize("name", ["DATABASE_URL", "APP_DATABASE_URL", "PG_DSN", "PG_URL", "MYPATH"])
def test_export_url_as_takes_the_apps_own_names(tmp_path: Path, name: str) -> None:
    """Trust round 4, item 4: the refusal is by what reads a name, not a guess at its spelling:
    an app's PG_DSN (PG + "_", not libpq's PG<letters>) is still exported."""
    root = write_tiny_project(tmp_path / "p", pyproject_extra=f'export_url_as = ["{name}"]\n')
    assert resolve_settings(cwd=root, environ={}).export_url_as == (name,)


def test_export_url_as_error_never_quotes_what_may_be_a_secret(tmp_path: Path) -> None:
    """Trust round 4, item 4: an entry that is not a variable name (a connection string typed into
    the wrong setting) is described by its position, never quoted."""
    root = write_tiny_project(tmp_path / "p")
    with pytest.raises(ConfigError, match="contains entry 2 \\(not shown\\)") as caught:
        resolve_settings(cwd=root, environ={"TESTDB_EXPORT_URL_AS": "APP_DB,app:s3cret@db/x"})
    assert "s3cret" not in str(caught.value)


def test_export_url_as_counts_a_name_listed_twice_once(tmp_path: Path) -> None:
    """Trust round 4, item 4: a name listed twice left the test URL in the environment after the
    session (the second save saved the URL the first had exported)."""
    extra = 'export_url_as = ["DATABASE_URL", "APP_DB", "DATABASE_URL"]\n'
    root = write_tiny_project(tmp_path / "p", pyproject_extra=extra)
    assert resolve_settings(cwd=root, environ={}).export_url_as == ("DATABASE_URL", "APP_DB")


def test_export_url_as_defaults_to_database_url_in_an_opted_in_project(tmp_path: Path) -> None:
    """Trust round 4, item 5: with `export_url_as` forgotten, a shell DATABASE_URL naming a
    developer's database reached the tests and env.py. In a project that opted in it defaults to
    ["DATABASE_URL"]; `[]` opts out; a project that has not opted in exports nothing."""
    opted = write_tiny_project(tmp_path / "opted")
    s = resolve_settings(cwd=opted, environ={"DATABASE_URL": DATABASE_URL})
    assert s.export_url_as == ("DATABASE_URL",)
    assert s.sources["export_url_as"] == SOURCE_DEFAULT
    assert {name: value for name, value, _ in s.describe()}["export_url_as"] == "DATABASE_URL"

    out = write_tiny_project(tmp_path / "out", pyproject_extra="export_url_as = []\n")
    assert resolve_settings(cwd=out, environ={}).export_url_as == ()
    assert resolve_settings({"export_url_as": ""}, cwd=opted, environ={}).export_url_as == ()

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "pyproject.toml").write_text('[project]\nname = "plain"\n')
    assert resolve_settings(cwd=plain, environ={"DATABASE_URL": DATABASE_URL}).export_url_as == ()


# --------------------------------------------------------------------------- driver


def test_driver_setting_from_table_and_environment(tmp_path: Path) -> None:
    """Trust round 4, item 9: the embedded server's URL always said +psycopg, so an asyncpg app was
    exported a psycopg URL. `driver` (or TESTDB_DRIVER) chooses it."""
    root = write_tiny_project(tmp_path / "p", pyproject_extra='driver = "asyncpg"\n')
    s = resolve_settings(cwd=root, environ={})
    assert (s.driver, s.sources["driver"]) == ("asyncpg", table_source(root))
    env = resolve_settings(cwd=root, environ={"TESTDB_DRIVER": "psycopg_async"})
    assert (env.driver, env.sources["driver"]) == ("psycopg_async", "env TESTDB_DRIVER")


def test_driver_goes_into_a_url_that_names_none_and_must_agree_with_one_that_does(
    tmp_path: Path,
) -> None:
    """Trust round 4, item 9: `postgresql://` (no driver) takes the setting's; a URL naming
    another driver is refused in one line (which of the two is meant?)."""
    root = write_tiny_project(tmp_path / "p", pyproject_extra='driver = "asyncpg"\n')
    plain = resolve_settings(cwd=root, environ={"TESTDB_URL": "postgresql://u:pw@h/app_test"})
    assert plain.url is not None and plain.url.drivername == "postgresql+asyncpg"
    assert plain.url.password == "pw"
    same = resolve_settings(cwd=root, environ={"TESTDB_URL": "postgresql+asyncpg://u@h/app_test"})
    assert same.driver == "asyncpg"
    with pytest.raises(ConfigError) as caught:
        resolve_settings(cwd=root, environ={"TESTDB_URL": "postgresql+psycopg://u:pw@h/app_test"})
    message = str(caught.value)
    assert "'asyncpg'" in message and "'psycopg'" in message and "keep one of them" in message
    assert "u:pw" not in message


@pytest.mark.parametrize("value", ["postgresql+asyncpg", "mysqldb", "ASYNCPG", ""])
def test_unknown_driver_is_a_one_line_error_listing_the_known_ones(
    tmp_path: Path, value: str
) -> None:
    """Trust round 4, item 9: the driver is checked against the list urls.py knows."""
    root = write_tiny_project(tmp_path / "p", pyproject_extra=f'driver = "{value}"\n')
    with pytest.raises(ConfigError) as caught:
        resolve_settings(cwd=root, environ={})
    message = str(caught.value)
    assert "\n" not in message and f"is {value!r}, not a driver" in message
    assert "psycopg, psycopg2, pg8000, psycopg2cffi, asyncpg, psycopg_async" in message


@pytest.mark.parametrize(
    ("dependencies", "expected"),
    [
        ('["SQLAlchemy[asyncio]>=2.0", "asyncpg>=0.29"]', "asyncpg"),
        ('["psycopg2-binary==2.9.9"]', "psycopg2"),
        ('["psycopg[binary]>=3.1"]', "psycopg"),
        ('["asyncpg", "psycopg2-binary"]', "psycopg"),  # two: no guess, the default
        ("[]", "psycopg"),
    ],
)
def test_embedded_server_driver_is_the_one_the_project_depends_on(
    tmp_path: Path, dependencies: str, expected: str
) -> None:
    """Trust round 4, item 9: with no driver set and no URL, the one PostgreSQL driver the
    project's [project] dependencies name, else psycopg; a configured URL keeps its own."""
    root = tmp_path / "p"
    write_tiny_project(root)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "app"\ndependencies = {dependencies}\n\n[tool.testdb]\n'
    )
    assert resolve_settings(cwd=root, environ={}).driver == expected
    configured = resolve_settings(cwd=root, environ={"TESTDB_URL": "postgresql+pg8000://u@h/db"})
    assert configured.driver == "pg8000"
    plain = resolve_settings(cwd=root, environ={"TESTDB_URL": "postgresql://u@h/db"})
    assert plain.driver is None and plain.url is not None and plain.url.drivername == "postgresql"
