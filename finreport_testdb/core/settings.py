"""One settings object, resolved once, remembering where each value came from.

Precedence: overrides (CLI flags / pytest options) → `TESTDB_*` environment → `[tool.testdb]` →
defaults. `DATABASE_URL` is only a fallback for `url` in a project that opted in: alone it never
makes the tool create databases. SQLAlchemy is imported only when resolving.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .names import auto_namespace, validate_base_name, validate_namespace

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SOURCE_DEFAULT = "default"
SOURCE_OVERRIDE = "command line"
FALLBACK_URL_VAR = "DATABASE_URL"


@dataclass(frozen=True)
class Setting:
    """A `Settings` field and `[tool.testdb]` key, read from `TESTDB_<NAME>` unless `env_var` says.
    `kind` says how a raw value is coerced; `takes`, what it takes (for errors). `pytest` and
    `cli` (a command; `testdb`: the group) give it an option, `--testdb-<name>` / `--<name>`."""

    name: str
    kind: str  # text, name, url, list, bool, seconds
    default: Any
    takes: str = ""
    help: str = ""
    metavar: str | None = None
    pytest: bool = False
    cli: str = ""
    env_var: str = ""

    @property
    def env(self) -> str:
        return self.env_var or f"TESTDB_{self.name.upper()}"

    def flag(self, prefix: str = "") -> str:
        negated = "no-" if self.kind == "bool" and self.default else ""
        return f"--{prefix}{negated}{self.name.replace('_', '-')}"


# fmt: off
SETTINGS = (
    Setting("url", "url", None, help="Server and base database (overrides TESTDB_URL).",
            metavar="URL", pytest=True, cli="testdb"),
    Setting("namespace", "name", "", "a short name such as ci_shard_1",
            "Namespace for worker databases, or 'auto'.", "NS", pytest=True, cli="testdb"),
    Setting("alembic_config", "text", "alembic.ini", "a path such as alembic.ini",
            "alembic.ini to use.", "PATH", cli="testdb"),
    Setting("script_location", "text", None, "a directory such as migrations"),
    Setting("maintenance_db", "name", "postgres", "a database name such as postgres",
            "Database to connect to for CREATE/DROP.", "NAME", cli="testdb"),
    Setting("fingerprint_extra", "list", (),
            "globs relative to the project root such as seed/*.sql"),
    Setting("seed", "list", (), "globs such as seed/*.sql or functions such as app.seed:load"),
    Setting("lock_timeout", "seconds", 600.0),
    Setting("base_name", "name", None, "a database name such as app_test"),  # None: derived
    Setting("reuse", "bool", False, pytest=True,
            help="Keep worker databases and reuse them next run while the fingerprint matches."),
    Setting("keep", "bool", False, help="Keep worker databases after the run.", pytest=True),
    # The dump cache, off unless set. Not TESTDB_CACHE_DIR: that names the embedded server's cache.
    Setting("cache_dir", "text", None, "a directory such as .testdb-cache",
            "Dump cache to restore templates from and save them to (overrides "
            "TESTDB_DUMP_CACHE_DIR).", "DIR", True, "prepare-template", "TESTDB_DUMP_CACHE_DIR"),
    Setting("metadata", "text", None, "a reference such as app.models:Base.metadata"),
    Setting("drift_check", "bool", True, pytest=True, cli="prepare-template",
            help="Do not compare the built template with the models (the metadata setting)."),
    # In a project that opted in; none otherwise (the plugin does nothing there). `[]` opts out.
    Setting("export_url_as", "list", ("DATABASE_URL",),
            "environment variable names such as DATABASE_URL",
            "Comma-separated environment variables set to the current test database's URL "
            "(e.g. DATABASE_URL), before conftest.py and test modules are imported.", "VARS",
            pytest=True),
    # None: the configured URL's, else the one driver [project] dependencies name, else psycopg.
    Setting("driver", "text", None, "a driver name such as asyncpg"),
)
# fmt: on
SETTING = {s.name: s for s in SETTINGS}
#: setting name -> its environment variables (first one set wins).
ENV_VARS: dict[str, tuple[str, ...]] = {s.name: (s.env,) for s in SETTINGS}

#: lock_timeout's bounds: PostgreSQL's resolution (`0` waits forever), and a day (beyond: a typo).
MIN_LOCK_TIMEOUT = 0.001
MAX_LOCK_TIMEOUT = 86400.0
_OPT_IN = "a [tool.testdb] table, a TESTDB_* variable or a --testdb-* option"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
#: `postgresql+psycopg:...`, `postgres:...` with or without `//`.
_URL_SCHEME = re.compile(r"\s*postgres(?:ql)?(?:\+\w+)?:", re.IGNORECASE)
_CONNINFO_KEY = re.compile(
    r"\b(?:host|hostaddr|port|user|password|passfile|dbname|sslpassword|service)\s*=", re.IGNORECASE
)


@dataclass(frozen=True)
class Settings:
    """Resolved settings. `sources[name]` says where each value came from."""

    url: URL | None
    namespace: str
    alembic_config: Path
    script_location: str | None
    maintenance_db: str
    fingerprint_extra: tuple[str, ...]
    seed: tuple[str, ...]
    lock_timeout: float
    base_name: str
    reuse: bool
    keep: bool
    export_url_as: tuple[str, ...]
    project_root: Path
    pyproject: Path | None
    sources: Mapping[str, str] = field(default_factory=dict)
    has_tool_table: bool = False  # the project has a [tool.testdb] table: it opted in
    cache_dir: Path | None = None
    metadata: str | None = None
    drift_check: bool = True
    opted_in: bool = False  # a [tool.testdb] table, a TESTDB_* setting variable or an override
    driver: str | None = "psycopg"  # None: a configured `postgresql://` URL, kept as it is

    @property
    def base_database(self) -> str:
        """The base name all managed databases derive from."""
        return self.url.database if self.url is not None and self.url.database else self.base_name

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value for humans, source) rows; the URL is masked."""
        from .urls import render_for_humans

        rows: list[tuple[str, str, str]] = []
        for name in SETTING:
            value = getattr(self, name)
            if name == "url":
                shown = render_for_humans(value) if value is not None else "(embedded server)"
            elif name == "driver" and value is None:
                shown = "(none: the url's plain postgresql://, SQLAlchemy's default)"
            elif isinstance(value, tuple):
                shown = ", ".join(value) or "(none)"
            else:
                shown = "(none)" if value is None else str(value)
            rows.append((name, shown, self.sources.get(name, SOURCE_DEFAULT)))
        opted = "yes" if self.opted_in else "no (DATABASE_URL alone is ignored)"
        return [
            *rows,
            ("base_database", self.base_database, "derived"),
            ("opted_in", opted, "derived: " + _OPT_IN),
            ("project_root", str(self.project_root), "derived"),
        ]


def find_pyproject(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        try:
            if candidate.is_file():
                return candidate
        except OSError as exc:  # e.g. a directory we may not search: not "no project here"
            raise ConfigError(
                f"cannot look for {candidate}: {exc.strerror or exc}; fix that directory's "
                "permissions or run testdb from a directory you own"
            ) from None
    return None


def _read_pyproject(path: Path | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The `[tool.testdb]` table (None: the project has none) and the `[project]` table."""
    if path is None:
        return None, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read {path}: it is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8, as TOML requires"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix the file's TOML syntax") from None
    project = data.get("project")
    project = project if isinstance(project, dict) else {}
    table = data.get("tool", {}).get("testdb")
    if table is None:
        return None, project
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.testdb] in {path} must be a table; see the README for its keys")
    unknown = sorted(set(table) - set(SETTING))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in [tool.testdb] of {path}; "
            f"known keys: {', '.join(SETTING)}"
        )
    return table, project


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    """Turn a raw value (env string, TOML value, CLI value) into the setting's type."""
    name, kind = setting.name, setting.kind
    if value is None:
        return None
    if kind == "list":
        if isinstance(value, str):
            value = [part.strip() for part in re.split(r"[,\n]", value) if part.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(_checked_text(setting, v, source) for v in value)
        example = '["DATABASE_URL"]' if name == "export_url_as" else '["seed/*.sql"]'
        raise ConfigError(f"{name} from {source} must be a list of strings, e.g. {example}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ConfigError(f"{name} from {source} is {value!r}: use true or false")
    if kind == "seconds":
        try:
            # A bool is an int to Python: `lock_timeout = true` must not mean one second.
            seconds = math.nan if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):
            seconds = math.nan
        if not MIN_LOCK_TIMEOUT <= seconds <= MAX_LOCK_TIMEOUT:  # False for nan
            raise ConfigError(
                f"lock_timeout from {source} is {value!r}: use a positive number of seconds from "
                f"{MIN_LOCK_TIMEOUT} to {MAX_LOCK_TIMEOUT:.0f} (one day)"
            )
        return seconds
    if not isinstance(value, str):
        raise ConfigError(f"{name} from {source} must be a string, not {type(value).__name__}")
    return value if kind == "url" else _checked_text(setting, value, source)


def _checked_text(setting: Setting, text: str, source: str) -> str:
    """Refuse, without echoing it, a NUL character (paths and libpq cut the value there) and a
    URL or connection string in the wrong setting (`testdb config` would show its password)."""
    name = setting.name
    if "\x00" in text:
        raise ConfigError(f"{name} from {source} contains a NUL character; remove it")
    looks_like = "a URL" if "://" in text or _URL_SCHEME.match(text) else None
    if not looks_like and setting.kind == "name" and _CONNINFO_KEY.search(text):
        looks_like = "a connection string"
    if looks_like:
        raise ConfigError(
            f"{name} from {source} looks like {looks_like}; it takes {setting.takes} "
            "(the server's URL goes in url / TESTDB_URL)"
        )
    if name == "maintenance_db" and not text.strip():
        raise ConfigError(f"{name} from {source} is empty; it takes {setting.takes}")
    return text


def opts_in(overrides: Mapping[str, Any], environ: Mapping[str, str], *, has_table: bool) -> bool:
    """Whether a project has opted in (`_OPT_IN`); DATABASE_URL alone never opts it in."""
    return has_table or any(
        overrides.get(s.name) is not None or environ.get(s.env) for s in SETTINGS
    )


def resolve_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting once. An override of None is not given; `flags` names the option
    each came from (`--url`), so an error points at what the user typed."""
    from .export import valid_variable_names
    from .urls import parse_url

    if cwd is None:
        try:
            cwd = Path.cwd()
        except FileNotFoundError:
            raise ConfigError(
                "the current directory no longer exists (deleted or moved away); cd into your "
                "project and run again"
            ) from None
    cwd = cwd.resolve()
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    pyproject = find_pyproject(cwd)
    project_root = pyproject.parent if pyproject else cwd
    found_table, project = _read_pyproject(pyproject)
    table = found_table or {}
    opted_in = opts_in(overrides, environ, has_table=found_table is not None)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        raw, source = s.default, SOURCE_DEFAULT
        if overrides.get(s.name) is not None:
            flag = f" {flags[s.name]}" if flags and s.name in flags else ""
            raw, source = overrides[s.name], SOURCE_OVERRIDE + flag
        elif environ.get(s.env):
            raw, source = environ[s.env], f"env {s.env}"
        elif s.name in table:
            raw, source = table[s.name], f"{pyproject} [tool.testdb]"
        values[s.name] = _coerce(s, raw, source)
        sources[s.name] = source

    if values["url"] is None and opted_in and environ.get(FALLBACK_URL_VAR):
        values["url"] = environ[FALLBACK_URL_VAR]
        sources["url"] = f"env {FALLBACK_URL_VAR} (fallback)"
    url = parse_url(values["url"], source=sources["url"]) if values["url"] else None
    if url is not None and url.database:
        validate_base_name(url.database, source=f"the database name in {sources['url']}")
    values["url"], values["driver"] = _resolve_driver(values["driver"], url, project, sources)
    if sources["export_url_as"] == SOURCE_DEFAULT and not opted_in:
        values["export_url_as"] = ()  # the plugin exports nothing in such a project anyway
        sources["export_url_as"] = f"{SOURCE_DEFAULT} (none: the project has not opted in)"

    if values["base_name"] is None:
        name = project.get("name") if isinstance(project.get("name"), str) else None
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name or project_root.name).strip("_").lower()
        values["base_name"] = f"{slug or 'app'}_test"
        sources["base_name"] = "derived from the project name"
    validate_base_name(values["base_name"], source=f"base_name from {sources['base_name']}")

    if values["namespace"] == "auto":
        values["namespace"] = auto_namespace(project_root)
        sources["namespace"] += " (auto: git branch + checkout path)"
    validate_namespace(values["namespace"], source=f"the namespace from {sources['namespace']}")

    values["alembic_config"] = _under(project_root, values["alembic_config"])
    cache_dir = values["cache_dir"]
    values["cache_dir"] = _under(project_root, os.path.expanduser(cache_dir)) if cache_dir else None
    values["export_url_as"] = valid_variable_names(
        values["export_url_as"], sources["export_url_as"]
    )
    return Settings(
        **values,
        project_root=project_root,
        pyproject=pyproject,
        sources=sources,
        has_tool_table=found_table is not None,
        opted_in=opted_in,
    )


def _under(root: Path, path: str) -> Path:
    """A relative path setting is relative to the project root, wherever testdb runs."""
    return Path(path) if Path(path).is_absolute() else (root / path).resolve()


#: `[project] dependencies` names (PEP 503-normalised) -> the driver they install.
_DRIVER_PACKAGES = {
    name: name.split("-")[0]
    for name in ("psycopg", "psycopg-binary", "psycopg-c", "psycopg2", "psycopg2-binary")
} | {"psycopg2cffi": "psycopg2cffi", "asyncpg": "asyncpg", "pg8000": "pg8000"}
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _declared_driver(project: Mapping[str, Any]) -> str | None:
    """The one PostgreSQL driver `[project] dependencies` name; None for none or several."""
    dependencies = project.get("dependencies")
    if not isinstance(dependencies, list):
        return None
    names = (_REQUIREMENT_NAME.match(r) for r in dependencies if isinstance(r, str))
    packages = {re.sub(r"[-_.]+", "-", match.group(1)).lower() for match in names if match}
    found = {_DRIVER_PACKAGES[package] for package in packages if package in _DRIVER_PACKAGES}
    return found.pop() if len(found) == 1 else None


def _resolve_driver(
    value: str | None, url: URL | None, project: Mapping[str, Any], sources: dict[str, str]
) -> tuple[URL | None, str | None]:
    """The driver of the URLs handed out, and the URL with it applied: the explicit one (refused
    if the URL names another), else the URL's own, else (embedded server) the one the project
    depends on, else psycopg. Not the installed packages: `finreport-testdb[async]` installs
    asyncpg for the async fixtures whatever the app uses."""
    from .urls import ASYNC_DRIVERS, SYNC_DRIVERS, with_driver

    drivers = SYNC_DRIVERS + ASYNC_DRIVERS
    if value is not None:
        if value not in drivers:
            raise ConfigError(
                f"driver from {sources['driver']} is {value!r}, not a driver finreport-testdb "
                f"knows; use one of {', '.join(drivers)} (the name alone, e.g. asyncpg)"
            )
        if url is not None and url.drivername != "postgresql" and url.get_driver_name() != value:
            raise ConfigError(
                f"driver from {sources['driver']} is {value!r} but the url from "
                f"{sources['url']} names driver {url.get_driver_name()!r}; keep one of them"
            )
        return (with_driver(url, value) if url is not None else None), value
    if url is not None:
        if url.drivername == "postgresql":
            sources["driver"] = f"none in the url from {sources['url']}"
            return url, None
        sources["driver"] = f"the url from {sources['url']}"
        return url, url.get_driver_name()
    declared = _declared_driver(project)
    if declared is not None:
        sources["driver"] = "derived from [project] dependencies"
        return None, declared
    sources["driver"] = f"{SOURCE_DEFAULT} (psycopg: testdb's own driver)"
    return None, "psycopg"
