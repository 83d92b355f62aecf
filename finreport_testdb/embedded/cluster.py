"""Building and configuring a cluster: initdb or a copy of the initdb cache, pg_hba.conf, our
settings file, and the superuser password, set in single-user mode. The caller holds the start
lock."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Literal

from ..errors import EmbeddedServerError
from .binaries import major
from .layout import cache_base, check_private_dir, give, make_dirs, write_owned
from .passwords import scram_verifier
from .process import HOST, SUPERUSER, Runner

log = logging.getLogger("finreport_testdb.embedded")

StartAction = Literal["running", "started", "copied", "initdb"]
"""What `start()` had to do: found it running, started an existing cluster, copied the initdb
cache, or ran initdb."""

_SETTINGS_FILE = "finreport_testdb.conf"
_INCLUDE_LINE = f"include_if_exists = '{_SETTINGS_FILE}'"
_HBA = """\
# Written by finreport-testdb: SCRAM password logins only, loopback and local socket.
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""
# max_prepared_transactions: apps that use two-phase commit can be tested; a prepared transaction
# a test leaves behind is rolled back with the rest of what it committed.
_SETTINGS = """\
# Written by finreport-testdb on every start; edits are overwritten.
listen_addresses = {host}
port = {port}
unix_socket_directories = {socket_dir}
unix_socket_permissions = 0700
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
max_prepared_transactions = 20
shared_buffers = 128MB
log_min_messages = warning
password_encryption = 'scram-sha-256'
"""


def prepare_cluster(run: Runner, bindir: Path, version: str) -> StartAction:
    """Make data/ a complete cluster of `version` with our pg_hba.conf and password; a new one
    is built in data.new and renamed, so data/ never holds half a cluster. Says which it was."""
    layout, run_as, target = run.layout, run.run_as, run.layout.data_dir
    action: StartAction = "started"
    if (target / "PG_VERSION").is_file():
        found = (target / "PG_VERSION").read_text().strip()
        if found != major(version):
            raise EmbeddedServerError(
                f"{target} was created by PostgreSQL {found} but {bindir} holds PostgreSQL "
                f"{version}; set TESTDB_PG_BINDIR to PostgreSQL {found} binaries or delete {target}"
            )
    else:
        for leftover in (target, layout.staging_dir):
            if leftover.exists():
                log.debug("removing %s: not a complete cluster", leftover)
                shutil.rmtree(leftover)
        target, pristine = layout.staging_dir, layout.initdb_cache_dir / major(version) / SUPERUSER
        if layout.initdb_cache_dir.parent == cache_base():
            check_private_dir(cache_base(), "cache base")
        for level in (layout.initdb_cache_dir, pristine.parent, pristine):
            check_private_dir(level, "initdb cache", run_as)  # copied into the new cluster
        if (pristine / "PG_VERSION").is_file():
            shutil.copytree(pristine, target, symlinks=True)
            action = "copied"
        else:
            _initdb(run, bindir)
            _store_pristine(target, pristine)
            action = "initdb"
    if run_as is not None and target.stat().st_uid != run_as.pw_uid:
        give(target, run_as, tree=True)
    os.chmod(target, 0o700)
    # initdb trusts local logins; this file, written before any start, allows SCRAM only.
    write_owned(target / "pg_hba.conf", _HBA, run_as)
    apply_password(run, target, bindir)
    if target != layout.data_dir:
        os.rename(target, layout.data_dir)
    return action


def _initdb(run: Runner, bindir: Path) -> None:
    """No password: the pristine copy is shared across projects, so each gets its own later."""
    target, run_as = run.layout.staging_dir, run.run_as
    argv = [str(bindir / "initdb"), "-D", str(target), "-U", SUPERUSER, "--auth=trust"]
    for locale in ("--locale=C.UTF-8", "--no-locale"):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(mode=0o700)  # ours, then the server user's: it may not write in ours
        give(target, run_as)
        code, out = run([*argv, "-E", "UTF8", "--no-sync", locale])
        if code == 0:
            return
        if "locale" not in out.lower() or locale == "--no-locale":
            raise run.failed("initdb failed", out)
        log.debug("initdb: C.UTF-8 locale unavailable, retrying with --no-locale")


def _store_pristine(source: Path, pristine: Path) -> None:
    """Best effort: the cache only saves time, so failing to fill it must not fail a start."""
    scratch = pristine.parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        make_dirs(pristine.parent)
        shutil.copytree(source, scratch, symlinks=True)
        os.rename(scratch, pristine)  # atomic: a concurrent filler may win, fine
    except (OSError, EmbeddedServerError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        log.debug("could not fill the initdb cache %s: %s", pristine, exc)


def apply_password(run: Runner, data_dir: Path, bindir: Path) -> None:
    """Single-user mode instead of a login: works on a stopped cluster whose current password
    nobody knows (initdb cache copy, password changed), so every start sets it."""
    verifier = scram_verifier(run.password, SUPERUSER)
    statement = f"ALTER ROLE \"{SUPERUSER}\" PASSWORD '{verifier}';\n"
    argv = [str(bindir / "postgres"), "--single", "-D", str(data_dir), "-c", "exit_on_error=on"]
    code, out = run([*argv, "postgres"], stdin=statement)
    if code != 0:
        raise run.failed("could not set the superuser password", out)


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def write_settings(run: Runner, port: int) -> None:
    """Rewritten on every start (the port may change, and the cache dir may have moved), and
    included from postgresql.conf."""
    conf, run_as = run.layout.data_dir / "postgresql.conf", run.run_as
    text = conf.read_text(encoding="utf-8")
    if _INCLUDE_LINE not in text.splitlines():
        write_owned(conf, text.rstrip("\n") + f"\n\n{_INCLUDE_LINE}\n", run_as)
    socket_dir = _quote_conf(str(run.layout.socket_dir))
    settings = _SETTINGS.format(host=_quote_conf(HOST), port=port, socket_dir=socket_dir)
    write_owned(run.layout.data_dir / _SETTINGS_FILE, settings, run_as)


def recorded_port(data_dir: Path) -> int | None:
    try:
        text = (data_dir / _SETTINGS_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else None
