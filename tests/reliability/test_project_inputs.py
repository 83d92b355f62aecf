"""Inputs a project controls (alembic.ini, env.py, the current
directory, `[tool.testdb]` values, seed and fingerprint_extra globs) fail with one line naming the
problem and the fix, no traceback, and never print a password or reach files outside the project.
Each test runs the real `testdb` CLI (or pytest) against a real server and fails on the code before
the fix (verified by reverting it), unless its docstring says it guards a case that already worked.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import SPECIAL_PASSWORD
from sqlalchemy.engine import URL

from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.errors import ConfigError

from .conftest import (
    TESTDB,
    Result,
    child_env,
    comments,
    inner_pytest,
    leaks,
    run,
    run_cli,
    write_project,
    write_tests,
)
from .test_hostile_input import error_line

#: A value that must never be echoed back: it stands for a secret in a file or setting.
SECRET = "S3cretValue"
SECRET_URL = f"postgresql://app:{SECRET}@db.example.com/app"


def set_testdb(project: Path, *lines: str) -> None:
    """Put `lines` (`key = value`) at the top of the project's [tool.testdb] table, replacing
    those keys' lines the project already has."""
    pyproject = project / "pyproject.toml"
    keys = {line.split("=", 1)[0].strip() for text in lines for line in text.splitlines()}
    kept = [
        line
        for line in pyproject.read_text().splitlines(keepends=True)
        if line.split("=", 1)[0].strip() not in keys
    ]
    text = "".join(kept)
    pyproject.write_text(text.replace("[tool.testdb]\n", "[tool.testdb]\n" + "".join(lines), 1))


def one_clean_error(result: Result, *fragments: str) -> str:
    """Exit 1, one `error: ...` line holding every fragment, nothing on stdout, no traceback."""
    assert result.returncode == 1, result.describe()
    line = error_line(result.stderr)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing from: {line}"
    assert result.stdout == "", result.describe()
    assert "Traceback" not in result.output, result.describe()
    return line


def nothing_created(server: URL) -> None:
    assert comments(server, str(server.database)) == {}


# ------------------------------------------------------------------------------ 1: alembic.ini

NOT_UTF8_INI = b"[alembic]\nscript_location = %(here)s/migrations\nfoo = \xff\xfe\n"


@pytest.mark.parametrize("command", ["prepare-template", "fingerprint"])
def test_alembic_ini_that_is_not_utf8_is_one_line(
    command: str, scram_base: URL, project: Path
) -> None:
    (project / "alembic.ini").write_bytes(NOT_UTF8_INI)
    result = run_cli(command, env=child_env(scram_base), cwd=project)
    one_clean_error(
        result, f"cannot read Alembic config {project / 'alembic.ini'}", "not utf-8", "save it as"
    )
    nothing_created(scram_base)


def test_status_with_an_alembic_ini_that_is_not_utf8_warns_in_one_line(
    scram_base: URL, project: Path
) -> None:
    (project / "alembic.ini").write_bytes(NOT_UTF8_INI)
    result = run_cli("status", env=child_env(scram_base), cwd=project)
    assert result.returncode == 0, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: current fingerprint unknown: "), lines
    assert "alembic.ini" in lines[0] and "not utf-8" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("ini_line", "option"),
    [
        (f"script_location = %(nosuch)s/{SECRET}", "script_location"),
        (f"secret_option = pa%{SECRET}", "secret_option"),  # a lone '%'
    ],
    ids=["unknown-key", "lone-percent"],
)
@pytest.mark.parametrize("command", ["prepare-template", "fingerprint"])
def test_alembic_ini_bad_interpolation_is_one_line_without_the_value(
    command: str, ini_line: str, option: str, scram_base: URL, project: Path
) -> None:
    """configparser's own message repeats the raw value (which may hold a secret): ours names
    the option and the fix only."""
    location = "" if option == "script_location" else "script_location = %(here)s/migrations\n"
    (project / "alembic.ini").write_text(f"[alembic]\n{location}{ini_line}\n")
    result = run_cli(command, env=child_env(scram_base), cwd=project)
    line = one_clean_error(result, "alembic.ini", f"option {option!r}", "[alembic]", "write %%")
    assert SECRET not in result.output, line
    nothing_created(scram_base)


def test_alembic_ini_line_that_does_not_parse_is_named_by_number_not_echoed(
    scram_base: URL, project: Path
) -> None:
    """A line with no `=` used to be quoted back (a URL written without `=` would print its
    password): the error gives its line number."""
    (project / "alembic.ini").write_text(
        f"[alembic]\nscript_location = %(here)s/migrations\n{SECRET}\n"
    )
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(result, "alembic.ini", "line(s) 3", "INI syntax")
    assert SECRET not in result.output
    nothing_created(scram_base)


def test_percent_sign_in_the_ini_url_is_ignored_like_the_url_itself(
    scram_base: URL, project: Path
) -> None:
    """Guard (worked before): testdb replaces the file's sqlalchemy.url before anything reads it,
    so a '%' there (a placeholder, an unescaped password) is not refused."""
    (project / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\n"
        "sqlalchemy.url = postgresql://u:pa%ss@nowhere/db\n"
    )
    result = run_cli("prepare-template", "--json", env=child_env(scram_base), cwd=project)
    assert result.returncode == 0, result.describe()
    assert result.json()["action"] == "built"


@pytest.mark.parametrize("how", ["here", "script-location-setting"])
def test_project_directory_with_a_percent_sign_builds(
    how: str, scram_base: URL, tmp_path: Path
) -> None:
    """A checkout in `.../100%/...`: %(here)s and the script_location setting are values for
    configparser's interpolation, where a bare '%' used to fail with a traceback."""
    project = write_project(tmp_path / "100%" / "project")
    env = child_env(scram_base)
    if how == "script-location-setting":
        (project / "alembic.ini").write_text("[alembic]\nscript_location = elsewhere\n")
        env["TESTDB_SCRIPT_LOCATION"] = "migrations"
    result = run_cli("prepare-template", "--json", env=env, cwd=project)
    assert result.returncode == 0, result.describe()
    assert result.json()["action"] == "built"


def test_alembic_option_alembic_cannot_use_is_one_line(scram_base: URL, project: Path) -> None:
    (project / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\ntruncate_slug_length = abc\n"
    )
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(result, "alembic.ini", "invalid literal for int()", "fix that option")
    nothing_created(scram_base)


def test_dangling_symlink_among_the_migrations_is_one_line(scram_base: URL, project: Path) -> None:
    link = project / "migrations" / "versions" / "0009_gone.py"
    link.symlink_to(project / "no-such-file.py")
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(result, f"cannot read migration file {link}", "fix or remove it")
    nothing_created(scram_base)


# ------------------------------------------------------------------------------ 2: current dir


def test_deleted_current_directory_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    result = run(
        ["sh", "-c", 'cd "$1" && rmdir "$1" && exec "$2" config', "sh", str(gone), TESTDB],
        env=child_env(),
        cwd=tmp_path,
    )
    one_clean_error(result, "the current directory no longer exists", "cd into your project")


def test_unsearchable_directory_above_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory on the way up that may not be searched (EACCES from stat): a ConfigError, not
    a PermissionError traceback and not a silent "no project here". (Tests run as root, who may
    search everything: the error is injected.)"""
    project = write_project(tmp_path / "project")
    real_is_file = Path.is_file

    def is_file(path: Path) -> bool:
        if path == project / "pyproject.toml":
            raise PermissionError(13, "Permission denied")
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    with pytest.raises(ConfigError, match=r"cannot look for .*pyproject\.toml: Permission denied"):
        resolve_settings({}, cwd=project, environ={})


# ------------------------------------------------------------------------------ 3: env.py


def test_syntax_error_in_env_py_is_one_line(scram_base: URL, project: Path) -> None:
    """Like a broken revision file: the file, the line and the fix; also in a pytest session."""
    env_py = project / "migrations" / "env.py"
    lines = env_py.read_text().count("\n")
    with env_py.open("a") as fh:
        fh.write("x = = 1\n")
    write_tests(project, "def test_db(db_session):\n    pass\n")
    env = child_env(scram_base)
    result = run_cli("prepare-template", env=env, cwd=project)
    one_clean_error(
        result,
        f"cannot load env.py {env_py}",
        "SyntaxError",
        f"(line {lines + 1})",
        "fix that file",
    )
    session = inner_pytest("-p", "no:xdist", "tests", env=env, cwd=project)
    assert session.returncode in (1, 4), session.describe()
    assert f"testdb: cannot load env.py {env_py}" in session.output, session.describe()
    assert "Traceback" not in session.output and "passed" not in session.stdout
    nothing_created(scram_base)


def test_syntax_error_in_a_module_env_py_imports_names_that_file(
    scram_base: URL, project: Path
) -> None:
    helper = project / "env_helper.py"
    helper.write_text("VALUE = (\n")
    env_py = project / "migrations" / "env.py"
    env_py.write_text("import env_helper\n" + env_py.read_text())
    (project / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nprepend_sys_path = .\n"
    )
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(result, f"cannot load {helper}", "SyntaxError", "(line 1)", "fix that file")
    nothing_created(scram_base)


def test_failing_import_at_the_top_of_env_py_is_one_line(scram_base: URL, project: Path) -> None:
    env_py = project / "migrations" / "env.py"
    env_py.write_text("import no_such_module_round3\n" + env_py.read_text())
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(
        result,
        f"cannot load env.py {env_py}",
        "No module named 'no_such_module_round3'",
        "(line 1)",
        "prepend_sys_path",
    )
    nothing_created(scram_base)


def test_missing_env_py_names_the_expected_path(scram_base: URL, project: Path) -> None:
    env_py = project / "migrations" / "env.py"
    env_py.unlink()
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(
        result, f"env.py is missing: expected {env_py}", "restore it", "script_location"
    )
    nothing_created(scram_base)


LAZY_IMPORT = {
    "0004_lazy.py": '''
        """imports a missing module inside upgrade()"""
        revision = "0004"
        down_revision = "0003"

        def upgrade():
            import no_such_module_in_upgrade  # noqa: F401
    '''
}


def test_import_error_inside_a_migration_still_names_the_revision(
    scram_base: URL, tmp_path: Path
) -> None:
    """Guard (worked before): only env.py's own imports become the one-line error; a migration
    that fails is still "migration failed in revision ..." with its traceback."""
    project = write_project(tmp_path / "project", revisions=LAZY_IMPORT)
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    assert result.returncode == 1, result.describe()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: migration failed in revision 0004 (0004_lazy.py): "), last
    assert "Traceback" in result.stderr
    nothing_created(scram_base)


# ------------------------------------------------------------------------------ 4: globs


@pytest.mark.parametrize("setting", ["seed", "fingerprint_extra"])
@pytest.mark.parametrize("how", ["dotdot", "symlink-file", "symlink-dir"])
def test_globs_never_reach_outside_the_project(
    how: str, setting: str, scram_base: URL, tmp_path: Path
) -> None:
    """`..` or a symlink inside the project must not make the template run (seed) or hash
    (fingerprint_extra) a file outside it; nothing is built."""
    project = write_project(tmp_path / "project")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.sql").write_text("CREATE TABLE reached_outside (x int);\n")
    if how == "dotdot":
        pattern = "../outside/evil.sql"
    elif how == "symlink-file":
        (project / "seed").mkdir()
        (project / "seed" / "ok.sql").write_text("SELECT 1;\n")
        (project / "seed" / "evil.sql").symlink_to(outside / "evil.sql")
        pattern = "seed/*.sql"
    else:
        (project / "seed").symlink_to(outside)
        pattern = "seed/*.sql"
    set_testdb(project, f'{setting} = ["{pattern}"]\n')
    for command in ("prepare-template", "fingerprint"):
        result = run_cli(command, env=child_env(scram_base), cwd=project)
        one_clean_error(
            result,
            f"{setting} pattern {pattern!r}",
            "outside the project root",
            "keep",
            "inside the project",
        )
    nothing_created(scram_base)


def test_dotdot_that_stays_inside_the_project_still_works(scram_base: URL, project: Path) -> None:
    """Guard (worked before): the resolved file decides, not the spelling of the pattern."""
    (project / "seed").mkdir()
    (project / "seed" / "rows.sql").write_text("CREATE TABLE seeded (x int);\n")
    set_testdb(project, 'seed = ["seed/../seed/*.sql"]\n')
    result = run_cli("prepare-template", "--json", env=child_env(scram_base), cwd=project)
    assert result.returncode == 0, result.describe()
    assert result.json()["action"] == "built"


def test_seed_file_that_is_not_utf8_is_named(scram_base: URL, project: Path) -> None:
    (project / "seed").mkdir()
    (project / "seed" / "latin1.sql").write_bytes(b"SELECT 1; -- caf\xe9\n")
    set_testdb(project, 'seed = ["seed/*.sql"]\n')
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(result, "seed file seed/latin1.sql is not UTF-8", "save it as UTF-8")
    nothing_created(scram_base)


@pytest.mark.parametrize(
    ("init", "reason"),
    [("VALUE = (\n", "SyntaxError"), ("raise RuntimeError('broken package')\n", "RuntimeError")],
    ids=["syntax-error", "raises"],
)
def test_seed_function_in_a_broken_package_is_one_line(
    init: str, reason: str, scram_base: URL, project: Path
) -> None:
    """Finding `pkg.mod` imports `pkg`: its failure is named, not a traceback."""
    package = project / "seedpkg"
    package.mkdir()
    (package / "__init__.py").write_text(init)
    (package / "rows.py").write_text("def load(connection):\n    pass\n")
    set_testdb(project, 'seed = ["seedpkg.rows:load"]\n')
    result = run_cli("prepare-template", env=child_env(scram_base), cwd=project)
    one_clean_error(
        result, "seed 'seedpkg.rows:load'", "importing the package", reason, "fix that package"
    )
    nothing_created(scram_base)


# ------------------------------------------------------------------------------ 5: numbers


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("lock_timeout = true\n", ["lock_timeout", "True", "positive number of seconds"]),
        # guard: false (= 0) was refused by the bounds
        ("lock_timeout = false\n", ["lock_timeout", "False", "positive number of seconds"]),
    ],
    ids=["lock-timeout-true", "lock-timeout-false"],
)
def test_booleans_are_not_numbers(line: str, fragments: list[str], project: Path) -> None:
    set_testdb(project, line)
    one_clean_error(run_cli("config", env=child_env(), cwd=project), *fragments)


# ------------------------------------------------------------------------------ 6: URLs misplaced


def _url_with(password: str) -> str:
    return URL.create(
        "postgresql", username="app", password=password, host="db.example.com"
    ).render_as_string(hide_password=False)


@pytest.mark.parametrize("where", ["toml", "env", "flag"])
@pytest.mark.parametrize(
    ("value", "looks_like"),
    [
        (_url_with(SPECIAL_PASSWORD), "a URL"),
        (_url_with(SECRET), "a URL"),
        (f"postgres:app:{SECRET}@db.example.com/app", "a URL"),
        (f"host=db.example.com password={SECRET} dbname=app", "a connection string"),
    ],
    ids=["url-special-password", "url", "scheme-without-slashes", "conninfo"],
)
def test_maintenance_db_holding_a_url_is_refused_without_echoing_it(
    where: str, value: str, looks_like: str, project: Path
) -> None:
    env = child_env()
    args = []
    if where == "toml":
        set_testdb(project, f"maintenance_db = {json.dumps(value)}\n")
    elif where == "env":
        env["TESTDB_MAINTENANCE_DB"] = value
    else:
        args = ["--maintenance-db", value]
    for command in (["config"], ["prepare-template"]):
        result = run_cli(*args, *command, env=env, cwd=project)
        one_clean_error(
            result,
            "maintenance_db from ",
            f"looks like {looks_like}; it takes a database name such as postgres",
        )
        assert not leaks(result.output), result.describe()
        assert SECRET not in result.output and "db.example.com" not in result.output


@pytest.mark.parametrize(
    "setting", ["base_name", "namespace", "alembic_config", "script_location", "cache_dir"]
)
def test_other_settings_holding_a_url_are_refused_without_echoing_it(
    setting: str, project: Path
) -> None:
    """`base_name` and `namespace` errors used to quote the value; paths would have been shown
    by `testdb config` as they are."""
    set_testdb(project, f'{setting} = "{SECRET_URL}"\n')
    result = run_cli("config", env=child_env(), cwd=project)
    one_clean_error(result, f"{setting} from ", "looks like a URL", "TESTDB_URL")
    assert SECRET not in result.output


@pytest.mark.parametrize(
    "setting", ["alembic_config", "script_location", "cache_dir", "maintenance_db", "base_name"]
)
def test_nul_character_in_a_setting_is_one_line(setting: str, project: Path) -> None:
    """TOML can spell a NUL (`\\u0000`): paths failed with "embedded null byte" tracebacks and
    libpq silently cut the maintenance database's name at it."""
    set_testdb(project, f'{setting} = "a\\u0000b"\n')
    for command in ("config", "fingerprint"):
        result = run_cli(command, env=child_env(), cwd=project)
        one_clean_error(result, f"{setting} from ", "contains a NUL character; remove it")


def test_empty_maintenance_db_is_refused(project: Path) -> None:
    """An empty name makes libpq connect to the database named like the user instead."""
    set_testdb(project, 'maintenance_db = ""\n')
    result = run_cli("config", env=child_env(), cwd=project)
    one_clean_error(result, "maintenance_db from ", "is empty", "such as postgres")


def test_pyproject_that_is_not_utf8_is_one_line(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_bytes(pyproject.read_bytes().replace(b'"tiny"', b'"tiny\xff"'))
    result = run_cli("config", env=child_env(), cwd=project)
    one_clean_error(result, f"cannot read {pyproject}", "not UTF-8", "save it as UTF-8")


def test_settings_that_worked_still_work(project: Path) -> None:
    """Guard: ordinary values pass the new checks (a seed function, metadata, globs)."""
    set_testdb(
        project,
        textwrap.dedent(
            """\
            maintenance_db = "template1"
            metadata = "app.models:Base.metadata"
            fingerprint_extra = ["migrations/*.py"]
            export_url_as = ["DATABASE_URL"]
            """
        ),
    )
    result = run_cli("config", "--json", env=child_env(), cwd=project)
    assert result.returncode == 0, result.describe()
    assert result.json()["maintenance_db"]["value"] == "template1"
