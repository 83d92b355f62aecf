"""Building and configuring a cluster: initdb or a copy of the initdb cache, pg_hba.conf, our
settings file, and the superuser password set in single-user mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import EmbeddedServerError
from .binaries import _major
from .layout import _HOST, StartAction, _make_dirs, _RunAs
from .passwords import scram_verifier
from .process import ProcessControl, _failure_reason

log = logging.getLogger("finreport_testdb.embedded")

_SETTINGS_FILE = "finreport_testdb.conf"
_PWCHECK_FILE = "finreport_testdb.pwcheck"
_INCLUDE_LINE = f"include_if_exists = '{_SETTINGS_FILE}'"
_HBA = """\
# Written by finreport-testdb: SCRAM password logins only, loopback and local socket.
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class ClusterBuilder(ProcessControl):
    """Cluster creation and configuration for `EmbeddedServer`."""

    def _materialize(
        self, bindir: Path, version: str, run_as: _RunAs | None, password: str
    ) -> StartAction:
        """Build the cluster in data.new and rename it into place, so `data/` always means a
        complete cluster with our password and config, even after a crash mid-way."""
        staging = self.cache_dir / "data.new"
        if staging.exists():
            shutil.rmtree(staging)
        pristine = self.initdb_cache_dir / _major(version) / self.superuser
        self._check_initdb_cache(pristine, run_as)
        action: StartAction
        if (pristine / "PG_VERSION").is_file():
            copy_started = time.monotonic()
            shutil.copytree(pristine, staging, symlinks=True)
            log.debug("copied %s in %.3f s", pristine, time.monotonic() - copy_started)
            action = "copied"
        else:
            self._initdb(bindir, staging, run_as)
            self._store_pristine(staging, pristine)
            action = "initdb"
        if run_as is not None:
            self._give_tree(staging, run_as)
        os.chmod(staging, 0o700)
        self._write_owned(staging / "pg_hba.conf", _HBA, run_as)
        self._ensure_include(staging, run_as)
        self._apply_password(staging, bindir, run_as, password)
        os.rename(staging, self.data_dir)
        return action

    def _initdb(self, bindir: Path, target: Path, run_as: _RunAs | None) -> None:
        # initdb needs *a* password for --auth=scram-sha-256; the real one is set afterwards as a
        # verifier, so the pristine copy (shared across projects) carries no project's secret.
        started = time.monotonic()
        fd, pwfile = tempfile.mkstemp(prefix=".initdb-pw-", dir=self.cache_dir)
        try:
            os.write(fd, secrets.token_urlsafe(24).encode("ascii") + b"\n")
            os.close(fd)
            if run_as is not None:
                os.chown(pwfile, run_as.uid, run_as.gid)
            for locale_args in (["--locale=C.UTF-8"], ["--no-locale"]):
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir(mode=0o700)
                if run_as is not None:
                    os.chown(target, run_as.uid, run_as.gid)
                argv = [
                    str(bindir / "initdb"),
                    "-D",
                    str(target),
                    "-U",
                    self.superuser,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    *locale_args,
                    "--no-sync",
                ]
                code, out = self._run(argv, run_as, log_failure=True)
                if code == 0:
                    break
                if "locale" not in out.lower() or locale_args == ["--no-locale"]:
                    raise EmbeddedServerError(
                        f"initdb failed ({_failure_reason(out)}); see {self.log_path}"
                    )
                log.debug("initdb: C.UTF-8 locale unavailable, retrying with --no-locale")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pwfile)
        log.debug("initdb took %.3f s", time.monotonic() - started)

    def _store_pristine(self, source: Path, pristine: Path) -> None:
        """Best effort: the cache only saves time, so failing to fill it must not fail a start."""
        try:
            _make_dirs(pristine.parent, 0o711 if os.geteuid() == 0 else 0o700)
            scratch = pristine.parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
            shutil.copytree(source, scratch, symlinks=True)
            try:
                os.rename(scratch, pristine)  # atomic: a concurrent filler may win, fine
            except OSError:
                shutil.rmtree(scratch, ignore_errors=True)
        except (OSError, EmbeddedServerError) as exc:
            log.debug("could not fill the initdb cache %s: %s", pristine, exc)

    def _apply_password(
        self, data_dir: Path, bindir: Path, run_as: _RunAs | None, password: str
    ) -> None:
        """Single-user mode instead of a login: works on a stopped cluster whose current password
        nobody knows (initdb cache copy, password changed)."""
        statement = f"ALTER ROLE \"{self.superuser}\" PASSWORD '{scram_verifier(password, self.superuser)}';\n"
        argv = [
            str(bindir / "postgres"),
            "--single",
            "-D",
            str(data_dir),
            "-c",
            "exit_on_error=on",
            "postgres",
        ]
        code, out = self._run(argv, run_as, stdin=statement, log_failure=True)
        if code != 0:
            raise EmbeddedServerError(
                f"could not set the superuser password ({_failure_reason(out)}); "
                f"see {self.log_path}"
            )
        salt = secrets.token_hex(16)
        digest = hmac.new(bytes.fromhex(salt), password.encode(), hashlib.sha256).hexdigest()
        self._write_owned(data_dir / _PWCHECK_FILE, f"{salt}:{digest}\n", run_as)

    def _password_applied(self, password: str) -> bool:
        """A salted digest of the password last set in the cluster, so a changed password is
        noticed without a login attempt and without storing the password twice."""
        try:
            salt, _, digest = (self.data_dir / _PWCHECK_FILE).read_text().strip().partition(":")
            expected = hmac.new(bytes.fromhex(salt), password.encode(), hashlib.sha256).hexdigest()
        except (OSError, ValueError):
            return False
        return hmac.compare_digest(expected, digest)

    def _forget_password_check(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / _PWCHECK_FILE).unlink()

    def _ensure_include(self, data_dir: Path, run_as: _RunAs | None) -> None:
        conf = data_dir / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        if _INCLUDE_LINE not in text.splitlines():
            self._write_owned(conf, text.rstrip("\n") + f"\n\n{_INCLUDE_LINE}\n", run_as)

    def _write_settings(self, port: int, socket_dir: Path, run_as: _RunAs | None) -> None:
        """Rewritten on every start: the port may change, and the cache dir may have moved."""
        settings = {
            "listen_addresses": _quote_conf(_HOST),
            "port": str(port),
            "unix_socket_directories": _quote_conf(str(socket_dir)),
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            # Apps that use two-phase commit can be tested; a prepared transaction a test leaves
            # behind is rolled back with the rest of what it committed.
            "max_prepared_transactions": "20",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            "password_encryption": "'scram-sha-256'",
        }
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        header = "# Written by finreport-testdb on every start; edits are overwritten.\n"
        self._write_owned(self.data_dir / _SETTINGS_FILE, header + body, run_as)

    def _recorded_port(self) -> int | None:
        try:
            text = (self.data_dir / _SETTINGS_FILE).read_text(encoding="utf-8")
        except OSError:
            return None
        match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _check_data_version(self, version: str, bindir: Path) -> None:
        found = (self.data_dir / "PG_VERSION").read_text().strip()
        if found != _major(version):
            raise EmbeddedServerError(
                f"{self.data_dir} was created by PostgreSQL {found} but {bindir} holds "
                f"PostgreSQL {version}; set TESTDB_PG_BINDIR to PostgreSQL {found} binaries or "
                f"delete {self.data_dir}"
            )
