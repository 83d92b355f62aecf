"""The dump cache: a template saved as a file keyed by its fingerprint, restored on a cold server,
so a CI machine with an empty server and a kept cache directory skips the migrations.

A file is a 512-byte JSON header (fingerprint, server major, sha256 and size of the payload), then
`pg_dump --format=custom` (pg_restore rejects a file that is not a dump).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL

from ..core.private_paths import write_risk
from ..core.urls import SECRET_OPTIONS, psycopg_connect_kwargs, redact
from ..errors import DumpCacheError

TOOL = "finreport-testdb"
FORMAT = 1
HEADER_SIZE = 512


def dump_path(cache_dir: Path, fingerprint: str) -> Path:
    return cache_dir / f"testdb-{fingerprint}.dump"


def find_client_bindir(major: int) -> Path:
    """The directory of pg_dump and pg_restore of the server's major (no other restores into it)."""
    from ..embedded.binaries import bindir_candidates

    env = os.environ.get("TESTDB_PG_BINDIR", "").strip()
    candidates = [Path(os.path.expanduser(env))] if env else []
    for candidate in dict.fromkeys([*candidates, *bindir_candidates("pg_dump")]):
        tools = [candidate / "pg_dump", candidate / "pg_restore"]
        if all(os.access(t, os.X_OK) for t in tools) and _client_major(tools[0]) == major:
            return candidate
    raise DumpCacheError(
        f"no pg_dump/pg_restore of PostgreSQL {major} (the server's major version) found; install "
        f"them (apt-get install postgresql-client-{major}) or set TESTDB_PG_BINDIR to their "
        "directory, or drop cache_dir"
    )


def _client_major(binary: Path) -> int | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\d+", out.stdout)  # "pg_dump (PostgreSQL) 15.4": the major
    return int(match.group()) if match else None


def _run(
    args: list[str], url: URL, database: str, *, stdin: Any = None, stdout: Any = subprocess.DEVNULL
) -> None:
    """Run a client tool on `database` with no secret on its command line, which any local user
    can read in /proc: the password goes in PGPASSWORD, and secret options libpq has no variable
    for (`sslpassword`) in a private service file that exists while the tool runs."""
    options: dict[str, Any] = psycopg_connect_kwargs(url, database=database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if (password := options.pop("password", None)) is not None:
        env["PGPASSWORD"] = password
    secrets = {key: str(options.pop(key)) for key in SECRET_OPTIONS if key in options}
    if secrets and ("service" in options or any("\n" in value for value in secrets.values())):
        raise DumpCacheError(
            "cannot hand sslpassword to pg_dump/pg_restore without putting it on a command line "
            "(the URL also names a service, or the value spans lines); drop cache_dir for this URL"
        )
    with tempfile.TemporaryDirectory(prefix="testdb-service-") as private:  # 0700
        if secrets:
            service_file = Path(private) / "pg_service.conf"
            service_file.touch(mode=0o600)
            lines = "".join(f"{key}={value}\n" for key, value in secrets.items())
            service_file.write_text(f"[testdb]\n{lines}")
            env["PGSERVICEFILE"] = str(service_file)
            options["service"] = "testdb"
        conninfo = make_conninfo(**{k: str(v) for k, v in options.items()})
        result = subprocess.run(
            [*args, "--dbname", conninfo],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
        )
    if result.returncode != 0:
        reason = redact(result.stderr.decode(errors="replace").strip(), url)
        first = reason.splitlines()[0] if reason else f"exit status {result.returncode}"
        raise DumpCacheError(f"{Path(args[0]).name} failed: {first}")


def _payload_digest(file: IO[bytes]) -> tuple[str, int]:
    """sha256 and size of what follows the header."""
    file.seek(HEADER_SIZE)
    h, size = hashlib.sha256(), 0
    while chunk := file.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def write_dump(
    url: URL, database: str, cache_dir: Path, fingerprint: str, server_major: int
) -> Path:
    """Dump `database` to the cache under `fingerprint`, atomically (temporary file + rename)."""
    bindir = find_client_bindir(server_major)
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_trusted(cache_dir, kind="directory")  # a dump written there must stay ours
        fd, tmp_name = tempfile.mkstemp(prefix=".testdb-", suffix=".tmp", dir=cache_dir)
    except OSError as exc:
        raise DumpCacheError(
            f"cannot write to the dump cache {cache_dir} ({exc.strerror}); fix its permissions "
            "or point cache_dir elsewhere"
        ) from None
    tmp, final = Path(tmp_name), dump_path(cache_dir, fingerprint)
    try:
        with os.fdopen(fd, "w+b") as out:
            out.seek(HEADER_SIZE)  # the header goes there once the payload's digest is known
            dump = [str(bindir / "pg_dump"), "--format=custom", "--compress=0", "--no-owner"]
            _run(dump, url, database, stdout=out)
            sha256, size = _payload_digest(out)
            header = {"tool": TOOL, "format": FORMAT, "fingerprint": fingerprint}
            header |= {"server_major": server_major, "sha256": sha256, "size": size}
            out.seek(0)
            out.write((json.dumps(header, sort_keys=True) + "\n").encode().ljust(HEADER_SIZE))
            out.flush()
            os.fsync(out.fileno())
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
    server), and a checksum anyone can compute proves nothing."""
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


def restore_dump(path: Path, url: URL, database: str, fingerprint: str, server_major: int) -> None:
    """Restore into the existing empty `database` a trusted dump of this fingerprint and major."""
    _check_trusted(path.parent, kind="directory")
    _check_trusted(path, kind="file")
    problem = None
    try:
        with path.open("rb") as f:
            raw = f.read(HEADER_SIZE)
            data = json.loads(raw.decode().strip()) if len(raw) == HEADER_SIZE else None
            data = data if isinstance(data, dict) else {}
            if (data.get("tool"), data.get("format")) != (TOOL, FORMAT):
                problem = "it is not a testdb dump"
            elif data["fingerprint"] != fingerprint:
                problem = f"it holds fingerprint {str(data['fingerprint'])[:12]}"
            elif data["server_major"] != server_major:
                problem = f"it was made by PostgreSQL {data['server_major']}"
            elif _payload_digest(f) != (data["sha256"], data["size"]):
                problem = "its checksum does not match (truncated or corrupt)"
    except OSError as exc:
        problem = f"it cannot be read ({exc.strerror})"
    except (ValueError, KeyError, TypeError):  # UnicodeDecodeError and JSON's errors included
        problem = "its header is damaged"
    if problem is not None:
        raise DumpCacheError(
            f"dump file {path} refused: {problem}; building the template instead (a fresh dump "
            "then replaces the file)"
        )
    bindir = find_client_bindir(server_major)
    restore = [str(bindir / "pg_restore"), "--no-owner", "--exit-on-error", "--single-transaction"]
    with path.open("rb") as f:
        f.seek(HEADER_SIZE)
        _run(restore, url, database, stdin=f)
