"""The dump cache: a template saved as a file keyed by its fingerprint, restored on a cold server.

A CI machine starts with an empty server on every run; with the cache directory kept between runs
(actions/cache keyed by `testdb fingerprint`), restoring the dump replaces the whole migration.

File format: a 512-byte JSON header (tool, format, fingerprint, server major, sha256 and size of
the payload), then the payload, `pg_dump --format=custom` of the freshly built scratch database
(custom and plain SQL restored equally fast in our measurement, 0.07 s for the shipped chain; the
custom format lets pg_restore reject a file that is not a dump). Files are written to a temporary
name and renamed, so a reader sees a whole file or none; the checksum is verified before anything is
restored, and the restored database is verified against the migrator's head before it is promoted.

pg_dump/pg_restore must match the server's major version: we look for that major's binaries and
refuse (one line, with the fix) if none is found. The password reaches them via PGPASSWORD only,
never on a command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL

from ..core.private_paths import write_risk
from ..core.urls import SECRET_OPTIONS, psycopg_connect_kwargs, redact
from ..errors import DumpCacheError

log = logging.getLogger("finreport_testdb.templates.dump_cache")

TOOL = "finreport-testdb"
FORMAT = 1
HEADER_SIZE = 512
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DumpHeader:
    fingerprint: str
    server_major: int
    sha256: str
    size: int

    def to_bytes(self) -> bytes:
        data = {
            "tool": TOOL,
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "server_major": self.server_major,
            "sha256": self.sha256,
            "size": self.size,
        }
        raw = json.dumps(data, sort_keys=True).encode() + b"\n"
        return raw.ljust(HEADER_SIZE, b" ")


def dump_path(cache_dir: Path, fingerprint: str) -> Path:
    return cache_dir / f"testdb-{fingerprint}.dump"


# --------------------------------------------------------------------------- binaries


def _client_major(binary: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)*", out)
    return int(match.group(1)) if match else None


def _candidate_bindirs(major: int) -> Iterator[Path]:
    env = os.environ.get("TESTDB_PG_BINDIR", "").strip()
    if env:
        yield Path(os.path.expanduser(env))
    from ..embedded.binaries import DEBIAN_PG_ROOT, pg_config_bindir, pgserver_bindirs

    yield DEBIAN_PG_ROOT / str(major) / "bin"
    found = shutil.which("pg_dump")
    if found:
        yield Path(os.path.realpath(found)).parent
    pg_config = pg_config_bindir()
    if pg_config is not None:
        yield pg_config
    yield from pgserver_bindirs()


def find_client_bindir(major: int) -> Path:
    """A directory with pg_dump and pg_restore of the server's own major version."""
    seen: set[Path] = set()
    for candidate in _candidate_bindirs(major):
        if candidate in seen:
            continue
        seen.add(candidate)
        tools = [candidate / "pg_dump", candidate / "pg_restore"]
        if all(os.access(t, os.X_OK) for t in tools) and _client_major(tools[0]) == major:
            return candidate
    raise DumpCacheError(
        f"no pg_dump/pg_restore of PostgreSQL {major} (the server's major version) found; install "
        f"them (apt-get install postgresql-client-{major}) or set TESTDB_PG_BINDIR to their "
        "directory, or drop cache_dir"
    )


@contextmanager
def _connection(url: URL, database: str) -> Iterator[tuple[dict[str, str], str]]:
    """(environment, conninfo) for a client tool, with no secret on its command line (which any
    local user can read in /proc): the password goes in PGPASSWORD, and secret options libpq has
    no variable for (`sslpassword`) in a private service file that exists while the tool runs."""
    kwargs: dict[str, Any] = psycopg_connect_kwargs(url, database=database)
    password = kwargs.pop("password", None)
    secrets = {key: str(kwargs.pop(key)) for key in SECRET_OPTIONS if key in kwargs}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    if not secrets:
        yield env, make_conninfo(**{k: str(v) for k, v in kwargs.items()})
        return
    if "service" in kwargs or any("\n" in value for value in secrets.values()):
        raise DumpCacheError(
            "cannot hand sslpassword to pg_dump/pg_restore without putting it on a command line "
            "(the URL also names a service, or the value spans lines); drop cache_dir for this URL"
        )
    with tempfile.TemporaryDirectory(prefix="testdb-service-") as private:  # 0700
        service_file = Path(private) / "pg_service.conf"
        fd = os.open(service_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("[testdb]\n" + "".join(f"{k}={v}\n" for k, v in secrets.items()))
        env["PGSERVICEFILE"] = str(service_file)
        yield env, make_conninfo(service="testdb", **{k: str(v) for k, v in kwargs.items()})


def _run(
    args: list[str], url: URL, database: str, *, stdin: Any = None, stdout: Any = None
) -> None:
    with _connection(url, database) as (env, conninfo):
        result = subprocess.run(
            [*args, "--dbname", conninfo],
            stdin=stdin,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
        )
    if result.returncode != 0:
        reason = redact(result.stderr.decode(errors="replace").strip(), url)
        first = reason.splitlines()[0] if reason else f"exit status {result.returncode}"
        raise DumpCacheError(f"{Path(args[0]).name} failed: {first}")


# --------------------------------------------------------------------------- write and read


def write_dump(
    url: URL, database: str, cache_dir: Path, fingerprint: str, server_major: int
) -> Path:
    """Dump `database` to the cache under `fingerprint`, atomically (temporary file + rename)."""
    bindir = find_client_bindir(server_major)
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DumpCacheError(
            f"cannot write to the dump cache {cache_dir} ({exc.strerror}); fix its permissions "
            "or point cache_dir elsewhere"
        ) from None
    _check_trusted(cache_dir, kind="directory")  # a dump written there must stay ours
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".testdb-", suffix=".tmp", dir=cache_dir)
    except OSError as exc:
        raise DumpCacheError(
            f"cannot write to the dump cache {cache_dir} ({exc.strerror}); fix its permissions "
            "or point cache_dir elsewhere"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out:
            out.write(b" " * HEADER_SIZE)
            out.flush()
            _run(
                [str(bindir / "pg_dump"), "--format=custom", "--compress=0", "--no-owner"],
                url,
                database,
                stdout=out,
            )
            out.seek(HEADER_SIZE)
            h, size = hashlib.sha256(), 0
            while chunk := out.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
            out.seek(0)
            out.write(DumpHeader(fingerprint, server_major, h.hexdigest(), size).to_bytes())
            out.flush()
            os.fsync(out.fileno())
        final = dump_path(cache_dir, fingerprint)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise DumpCacheError(
                f"cannot put the dump at {final} ({exc.strerror}); remove what is in the way"
            ) from None
        return final
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_trusted(path: Path, *, kind: str) -> None:
    """Refuse a cache directory or dump file another OS user could have written (private_paths):
    pg_restore runs whatever SQL a dump holds (a planted one can run `COPY ... TO PROGRAM` on the
    server and give the template tables no migration creates), and a checksum anyone can compute
    proves nothing."""
    what = "dump cache" if kind == "directory" else "dump file"
    try:
        problem = write_risk(path, {os.geteuid()}, kind=kind, follow=False)
    except OSError as exc:
        raise DumpCacheError(f"{what} {path} cannot be checked ({exc.strerror})") from None
    if problem is not None:
        raise DumpCacheError(
            f"{what} {path} refused: it {problem}; a dump is only trusted from a directory and "
            "file of your own that nobody else can write (chmod go-w, or point cache_dir "
            "elsewhere); building the template instead"
        )


def read_header(path: Path, fingerprint: str, server_major: int) -> DumpHeader:
    """The verified header of `path`: ours, for this fingerprint and major, checksum intact, in
    a directory and a file only this user can have written."""
    _check_trusted(path.parent, kind="directory")
    _check_trusted(path, kind="file")
    problem = "it is not a testdb dump"
    try:
        with path.open("rb") as f:
            raw = f.read(HEADER_SIZE)
            data = json.loads(raw.decode().strip()) if len(raw) == HEADER_SIZE else None
            if isinstance(data, dict) and data.get("tool") == TOOL and data.get("format") == FORMAT:
                header = DumpHeader(
                    str(data["fingerprint"]),
                    int(data["server_major"]),
                    str(data["sha256"]),
                    int(data["size"]),
                )
                h, size = hashlib.sha256(), 0
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                if header.fingerprint != fingerprint:
                    problem = f"it holds fingerprint {header.fingerprint[:12]}"
                elif header.server_major != server_major:
                    problem = f"it was made by PostgreSQL {header.server_major}"
                elif size != header.size or h.hexdigest() != header.sha256:
                    problem = "its checksum does not match (truncated or corrupt)"
                else:
                    return header
    except OSError as exc:
        problem = f"it cannot be read ({exc.strerror})"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        problem = "its header is damaged"
    raise DumpCacheError(
        f"dump file {path} refused: {problem}; building the template instead (a fresh dump "
        "then replaces the file)"
    )


def restore_dump(
    path: Path, url: URL, database: str, fingerprint: str, server_major: int
) -> DumpHeader:
    """Restore the verified dump into the existing empty `database`."""
    header = read_header(path, fingerprint, server_major)
    bindir = find_client_bindir(server_major)
    with path.open("rb") as f:
        f.seek(HEADER_SIZE)
        _run(
            [
                str(bindir / "pg_restore"),
                "--no-owner",
                "--exit-on-error",
                "--single-transaction",
            ],
            url,
            database,
            stdin=f,
        )
    return header
