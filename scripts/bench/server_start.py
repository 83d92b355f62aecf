"""Workload 6: embedded server start, whole process, in fresh cache dirs.

- cold, initdb: empty cache dir and an empty private initdb cache (a small Python process calling
  `EmbeddedServer.start()`, because the CLI has no switch for the initdb cache location);
- cold, from the cached initdb copy: `testdb server start` with TESTDB_CACHE_DIR set to a fresh dir
  (the initdb cache is filled by then);
- warm: `testdb server start` again, the server already running.
Every server started here is stopped and its directories removed.
"""

from __future__ import annotations

import secrets
import shutil
import sys
from pathlib import Path

from .common import BIN, REPO, Series, log, run

_START = """
import sys, time
from pathlib import Path
from finreport_testdb.embedded import EmbeddedServer
server = EmbeddedServer(Path(sys.argv[1]), initdb_cache_dir=Path(sys.argv[2]))
server.start()
print(server.last_start_action)
"""


def _base_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path("/tmp")


def run_server(reps: int) -> dict[str, Series]:
    initdb = Series("cold start: initdb (fresh cache dir, empty initdb cache)")
    copied = Series("cold start: copy of the cached initdb (fresh cache dir)")
    warm = Series("warm start: already running")
    testdb = str(BIN / "testdb")
    tag = secrets.token_hex(3)
    base = _base_dir()
    for rep in range(reps):
        initdb_cache = base / f"finreport-bench-{tag}-initdb{rep}"
        dirs = [base / f"finreport-bench-{tag}-a{rep}", base / f"finreport-bench-{tag}-b{rep}"]
        try:
            env = {"PATH": str(BIN) + ":/usr/local/bin:/usr/bin:/bin"}
            wall, proc = run(
                [sys.executable, "-c", _START, str(dirs[0]), str(initdb_cache)], env=env, cwd=REPO
            )
            assert proc.stdout.strip() == "initdb", proc.stdout
            initdb.add(wall)
            run([testdb, "server", "stop"], env={**env, "TESTDB_CACHE_DIR": str(dirs[0])}, cwd=REPO)
            wall, proc = run(
                [sys.executable, "-c", _START, str(dirs[1]), str(initdb_cache)], env=env, cwd=REPO
            )
            assert proc.stdout.strip() == "copied", proc.stdout
            copied.add(wall)
            cli_env = {**env, "TESTDB_CACHE_DIR": str(dirs[1])}
            wall, proc = run([testdb, "server", "start"], env=cli_env, cwd=REPO)
            warm.add(wall)
            log(
                f"server: repetition {rep + 1}/{reps}: initdb {initdb.values[-1]:.2f} s, "
                f"copy {copied.values[-1]:.2f} s, warm {warm.values[-1]:.2f} s"
            )
        finally:
            for d in dirs:
                if d.exists():
                    run(
                        [testdb, "server", "stop"],
                        env={**env, "TESTDB_CACHE_DIR": str(d)},
                        cwd=REPO,
                        check=False,
                    )
                    shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(initdb_cache, ignore_errors=True)
    return {"initdb": initdb, "copied": copied, "warm": warm}
