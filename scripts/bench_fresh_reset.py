#!/usr/bin/env python3
"""What `isolation="fresh"` costs per test: `ProjectDatabases.reset_worker` on this repo's 33-revision
finance schema, and the reset plus the first query through an app-style pooled engine (whose old
connection the pool listener replaces).

    .venv/bin/python scripts/bench_fresh_reset.py                 # the embedded server (tmpfs)
    .venv/bin/python scripts/bench_fresh_reset.py --url postgresql+psycopg://postgres@127.0.0.1:5432/x
    .venv/bin/python scripts/bench_fresh_reset.py --n 50 --json

Importable: `measure_fresh_reset(url, n)` returns the numbers as a dict (scripts/bench.py may call it).
Everything it creates lives under a unique base name and is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from finreport_testdb.core.settings import resolve_settings  # noqa: E402
from finreport_testdb.core.urls import render_for_driver, with_database  # noqa: E402
from finreport_testdb.databases import ProjectDatabases  # noqa: E402


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


def measure_fresh_reset(url: str | None, n: int = 30) -> dict[str, Any]:
    """Reset the worker database `n` times; `url` names a server (superuser-ish, CREATEDB) and is
    used for its host, port and credentials only (None = the embedded server)."""
    base = f"bench_reset_{os.getpid()}"
    overrides: dict[str, Any] = {"base_name": base}
    if url:
        from sqlalchemy.engine import make_url

        overrides["url"] = render_for_driver(with_database(make_url(url), base))
    settings = resolve_settings(overrides, cwd=REPO, environ={})
    with ProjectDatabases.from_settings(settings) as databases:
        template = databases.ensure_template()
        worker = databases.clone_for_worker("gw0")
        engine = create_engine(render_for_driver(databases.url_for(worker.name)))  # app-style pool
        resets: list[float] = []
        with_query: list[float] = []
        try:
            for _ in range(n):
                with engine.connect() as connection:  # a pooled connection the reset will kill
                    connection.execute(text("SELECT 1"))
                started = time.perf_counter()
                databases.reset_worker("gw0")
                reset_done = time.perf_counter()
                with engine.connect() as connection:
                    connection.execute(text("SELECT count(*) FROM currencies")).scalar()
                resets.append((reset_done - started) * 1000)
                with_query.append((time.perf_counter() - started) * 1000)
        finally:
            engine.dispose()
            for name in (worker.name, template.name):
                databases.drop_database(name)
        return {
            "server": databases.server_url.render_as_string(hide_password=True),
            "n": n,
            "reset_worker": _summary(resets),
            "reset_and_first_query": _summary(with_query),
            "template_build_s": round(template.seconds, 2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a server to measure (default: the embedded server)")
    parser.add_argument("--n", type=int, default=30, help="resets to time (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    result = measure_fresh_reset(args.url, args.n)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"server {result['server']}, {result['n']} resets")
        for key in ("reset_worker", "reset_and_first_query"):
            r = result[key]
            print(
                f"  {key:24} median {r['median_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms "
                f"(min {r['min_ms']:.1f}, max {r['max_ms']:.1f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
