"""The shipped examples, as their users run them: with no marker, no isolation setting and (in
examples/async_service) no finreport-testdb wiring at all, every test passes with `-n 2` and
serially, on the trust server and on the scram server (issue 17's "done when").

- examples/async_service: an asyncpg service whose engine is built at import time from
  DATABASE_URL (exported by the plugin), the stock async env.py edited to read DATABASE_URL,
  migrations with `autocommit_block()`, an `xmin` guard, a deferred balance check, a background
  audit writer: every test commits for real and is undone after it.
- examples/finance_app: the repository's own 33-revision chain and the ORM app on top of it.

Each example runs twice per server on one base name, so its template is built once: first `-n 2`,
then serially (`<base>_serial`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, drop_databases_with_prefix
from sqlalchemy.engine import URL
from test_plugin import password_variants

from finreport_testdb.core.settings import ENV_VARS
from finreport_testdb.core.urls import render_for_driver

#: example -> (driver, number of tests)
EXAMPLES = {"async_service": ("asyncpg", 153), "finance_app": ("psycopg", 12)}


def run_example(example: str, server_url: URL, *args: str) -> tuple[int, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not any(key in variables for variables in ENV_VARS.values())
        and not key.startswith(("TESTDB_", "PYTEST_"))
        and key != "DATABASE_URL"
    }
    env["TESTDB_URL"] = render_for_driver(server_url)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", *args],
        cwd=REPO_ROOT / "examples" / example,
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


@pytest.mark.parametrize("example", sorted(EXAMPLES))
@pytest.mark.parametrize("server_kind", ["trust", "scram"])
def test_example_passes_with_two_workers_and_serially(
    example: str, server_kind: str, request: pytest.FixtureRequest, base_name: str
) -> None:
    server: URL = request.getfixturevalue(f"{server_kind}_server")
    driver, tests = EXAMPLES[example]
    url = server.set(drivername=f"postgresql+{driver}", database=base_name)
    try:
        code_xdist, out_xdist = run_example(example, url, "-n", "2")
        code_serial, out_serial = run_example(example, url, "-q")
    finally:
        leftovers = drop_databases_with_prefix(server, base_name)
    assert code_xdist == 0, out_xdist
    assert passed(out_xdist) == tests
    assert re.search(
        rf"^testdb: gw0 cloned {base_name}_gw0 in \d+ ms, gw1 cloned ", out_xdist, re.M
    )
    assert re.search(r"^testdb: undid what \d+ test\(s\) committed", out_xdist, re.M)
    assert code_serial == 0, out_serial
    assert passed(out_serial) == tests
    assert f"{base_name}_serial" in out_serial
    assert {name for name in leftovers if "_tpl_" not in name} == set()  # nothing else left
    for variant in password_variants():
        assert variant not in out_xdist
        assert variant not in out_serial
    for marked in ("pytest.mark.testdb", "testdb_isolation"):
        for path in (REPO_ROOT / "examples" / example).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".toml", ".ini", ".cfg"):
                assert marked not in path.read_text(), f"{path} carries {marked}"
