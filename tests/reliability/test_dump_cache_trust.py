"""Trust in the dump cache of templates across runs: a dump another OS user planted in the
dump cache was restored (pg_restore runs whatever SQL a dump holds), a directory in the way of
the dump crashed the build, and a metadata module that fails on import gave a traceback. Real
servers; each test failed before its fix."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from finreport_testdb.embedded import EmbeddedServer
from finreport_testdb.errors import EmbeddedServerError

from .conftest import child_env, mounted_tmpfs, run_cli


def prepare(url: URL, project: Path, *extra: str, **env: str) -> dict[str, object]:
    result = run_cli("prepare-template", "--json", *extra, env=child_env(url, **env), cwd=project)
    assert result.returncode == 0, result.describe()
    data = result.json()
    assert isinstance(data, dict)
    return data


def test_a_dump_only_another_user_could_have_written_is_never_restored(
    trust_base: URL, project: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "dumps"
    env = {"TESTDB_DUMP_CACHE_DIR": str(cache)}
    assert prepare(trust_base, project, **env)["action"] == "built"  # writes the dump
    (dump,) = cache.glob("*.dump")
    nobody = pwd.getpwnam("nobody").pw_uid
    for planted in ("other-owner", "writable-dir"):
        assert run_cli("clean", "--templates", "--yes", env=child_env(trust_base), cwd=project)
        if planted == "other-owner":
            os.chown(dump, nobody, -1)
        else:
            os.chown(dump, os.getuid(), -1)
            cache.chmod(0o777)
        result = prepare(trust_base, project, **env)
        assert result["action"] == "built", result  # not "restored"
        notes = " ".join(map(str, result["notes"]))  # type: ignore[call-overload]
        assert "refused" in notes, notes
        assert ("uid" in notes) if planted == "other-owner" else ("writable by others" in notes)


def test_a_directory_in_the_way_of_the_dump_is_a_note(
    trust_base: URL, project: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "dumps"
    env = {"TESTDB_DUMP_CACHE_DIR": str(cache)}
    fingerprint = run_cli("fingerprint", env=child_env(trust_base), cwd=project).stdout.strip()
    (cache / f"testdb-{fingerprint}.dump").mkdir(parents=True)
    result = prepare(trust_base, project, **env)
    assert result["action"] == "built"
    assert "cannot put the dump" in " ".join(map(str, result["notes"]))  # type: ignore[call-overload]


def test_a_metadata_module_that_fails_on_import_is_one_line(trust_base: URL, project: Path) -> None:
    (project / "broken_models.py").write_text("raise RuntimeError('no config here')\n")
    for reference in ("broken_models:metadata", ".models:metadata"):
        env = child_env(trust_base, TESTDB_METADATA=reference)
        result = run_cli("prepare-template", env=env, cwd=project)
        assert result.returncode == 1, result.describe()
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot be loaded" in lines[0], lines
        assert "Traceback" not in result.output


def test_a_password_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / "password").write_bytes(b"\xff\xfe not ours")
    with pytest.raises(EmbeddedServerError, match=r"not UTF-8 text\); delete it"):
        _ = EmbeddedServer(cache).password


def test_a_read_only_cache_dir_is_one_line(project: Path) -> None:
    """An existing cache dir on a read-only file system: one line, not an OSError traceback."""
    with mounted_tmpfs("1m") as mountpoint:
        (mountpoint / "cache").mkdir(mode=0o755)  # exists, then the file system turns read-only
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        env = child_env(None, TESTDB_CACHE_DIR=str(mountpoint / "cache"))
        result = run_cli("server", "start", env=env, cwd=project)
    assert result.returncode == 1, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TESTDB_CACHE_DIR" in lines[0], lines
    assert "Traceback" not in result.output
