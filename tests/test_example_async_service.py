"""examples/async_service end to end: issue 9's "done when", in real subprocesses.

The example has no finreport-testdb glue beyond one sessionmaker line in its conftest; its engine is
built at import time from DATABASE_URL (exported by the plugin), its env.py is the stock async one
edited only to read DATABASE_URL, its chain uses `autocommit_block()`, and 16 of its tests are
marked `fresh`. Both runs go through `postgresql+asyncpg://` to the scram-sha-256 server, whose
password holds every URL special character, and share one base name, so the template is built once:
first `-n 2`, then serially (`<base>_serial`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO_ROOT, drop_databases_with_prefix
from sqlalchemy.engine import URL
from test_plugin import password_variants

from finreport_testdb.settings import ENV_VARS
from finreport_testdb.urls import render_for_driver

EXAMPLE = REPO_ROOT / "examples" / "async_service"


def run_example(server_url: URL, *args: str) -> tuple[int, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not any(key in variables for variables in ENV_VARS.values())
        and not key.startswith(("TESTDB_", "PYTEST_"))
    }
    env["TESTDB_URL"] = render_for_driver(server_url)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return completed.returncode, completed.stdout + completed.stderr


def passed(output: str) -> int:
    """The number of passed tests from the final summary line; fails on any failure or error."""
    summary = output.strip().splitlines()[-1]
    assert re.fullmatch(r"=* ?\d+ passed(, \d+ warnings?)? in [\d.]+s( \(.*\))?( =+)?", summary), (
        output
    )
    return int(re.search(r"(\d+) passed", summary).group(1))  # type: ignore[union-attr]


def test_async_service_passes_with_two_workers_and_serially(
    scram_server: URL, base_name: str
) -> None:
    url = scram_server.set(drivername="postgresql+asyncpg", database=base_name)
    try:
        code_xdist, out_xdist = run_example(url, "-n", "2")
        code_serial, out_serial = run_example(url, "-q")
    finally:
        leftovers = drop_databases_with_prefix(scram_server, base_name)
    assert code_xdist == 0, out_xdist
    assert passed(out_xdist) >= 150
    assert re.search(
        rf"^testdb: gw0 cloned {base_name}_gw0 in \d+ ms, gw1 cloned ", out_xdist, re.M
    )
    assert code_serial == 0, out_serial
    assert passed(out_serial) == passed(out_xdist)
    assert f"{base_name}_serial" in out_serial
    assert base_name not in {name for name in leftovers}  # the base database itself: never made
    for variant in password_variants():
        assert variant not in out_xdist
        assert variant not in out_serial
