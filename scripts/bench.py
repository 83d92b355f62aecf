#!/usr/bin/env python3
"""Benchmarks for finreport-testdb, side by side in one run (GitHub issue 5).

Runs six workloads against the embedded server (default; started if needed, in the bench's own
cache dir) or against --url, prints a markdown table (median and min-max of the repetitions) and,
for a full run, writes docs/benchmarks.md, docs/benchmarks.png and docs/benchmarks.json.

  1 provisioning   per-worker clone vs `alembic upgrade head` (shipped 33 revs, synthetic 100),
                   FILE_COPY vs WAL_LOG
  2 template       `testdb prepare-template` cold vs warm, whole process
  3 suite          an 800-test finance suite: serial+migrations, naive -n 2, plugin -n 2,
                   plugin -n 2 with fresh_database for 10 %
  4 isolation      db_session / fresh_database / TRUNCATE reset per test vs a bare connection
  5 peer           the same suite with pytest-postgresql's noproc + postgresql fixtures (-n 2)
  6 server         embedded server cold start (initdb), from the cached initdb copy, warm
  7 templates      a missing template: full build vs extend by one revision vs restore from the
                   dump cache (shipped 33 revs, synthetic 200)
  9 commits        tests that commit through the app's own engine: the default isolation (undo
                   after the test) vs the same tests rolling back themselves vs rollback isolation
                   vs `fresh` with and without the warm pool, serial, on this run's server and on
                   the disk cluster (--disk-url)

--scenario real-app runs instead workload 8 (issue 9): examples/async_service with its original
set-up (create_all per worker + TRUNCATE per test) vs finreport-testdb (rollback, fresh where
marked), -n 2, side by side, plus the same on the disk cluster (--disk-url) for the fresh reset cost.

It creates (or reuses) .venv-bench with `pip install -e .[test] matplotlib pytest-postgresql
py-spy` and re-executes itself there (--no-venv runs in the current interpreter). Every database it
creates starts with a unique `bench_<hex>` prefix and is dropped at the end; servers it starts for
workload 6 are stopped and their directories removed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-bench"
VENV_PACKAGES = ["-e", f"{REPO}[test]", "matplotlib", "pytest-postgresql", "py-spy"]


def ensure_venv() -> None:
    """Re-exec in .venv-bench, creating or updating it first."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    stamp = VENV / ".bench-installed"
    if not python.exists():
        print(f"==> creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not stamp.exists() or (REPO / "pyproject.toml").stat().st_mtime > stamp.stat().st_mtime:
        print("==> installing the bench dependencies into .venv-bench", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *VENV_PACKAGES], check=True)
        stamp.touch()
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "--quick runs every workload smaller (suite of 120 tests in modes a and c, 3 "
            "repetitions, fewer isolation tests) so it finishes in under 3 minutes on 2 cores; it "
            "prints the table and writes its page and chart to a directory under /tmp (printed at "
            "the end), never to docs/. A full run (the default) takes about 10 minutes on an idle 2-core machine, 25 on a busy one, and "
            "writes docs/benchmarks.md, docs/benchmarks.png and docs/benchmarks.json."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url", help="benchmark this server (superuser URL) instead of the embedded one"
    )
    p.add_argument("--quick", action="store_true", help="small and fast; see below")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 5; quick 3)")
    p.add_argument("--tests", type=int, help="size of the generated suite (default 800; quick 120)")
    p.add_argument(
        "--only",
        default="12345679",
        help="workloads to run, e.g. 134 (default all: 12345679; 5 without 3 runs the suite in modes c and e only)",
    )
    p.add_argument("--out", type=Path, help="where to write the page, chart and JSON")
    p.add_argument(
        "--cache-dir", type=Path, help="embedded server cache dir (default: the bench's own)"
    )
    p.add_argument("--no-venv", action="store_true", help="run in the current interpreter")
    p.add_argument(
        "--scenario",
        choices=["finance", "real-app"],
        default="finance",
        help="finance: workloads 1-7 and 9 (default); real-app: workload 8 on examples/async_service, "
        "written to benchmarks-real-app.{md,json} (docs/, or /tmp with --quick)",
    )
    p.add_argument(
        "--disk-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="the disk-backed server for workloads 8 and 9 (superuser URL; '' skips it in 8)",
    )
    p.add_argument(
        "--render-only",
        type=Path,
        metavar="JSON",
        help="measure nothing: re-render the page and chart from a previous run's JSON "
        "(e.g. after editing scripts/bench/ANALYSIS.md)",
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.no_venv:
        ensure_venv()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench.common import log, machine_info, open_server
    from bench.report import (
        build,
        console_table,
        default_out,
        write_chart,
        write_json,
        write_markdown,
    )

    if args.render_only:
        from bench.report import read_json

        results, meta = read_json(args.render_only)
        out = args.out or args.render_only.parent
        name = args.render_only.stem
        report = build(results, meta)
        print(console_table(report))
        chart = out / f"{name}.png"
        write_chart(report, chart)
        write_markdown(report, out / f"{name}.md", chart.name)
        return 0
    if args.scenario == "real-app":
        args.only = "8"
    reps = args.reps or (3 if args.quick else 5)
    tests = args.tests or (120 if args.quick else 800)
    only = set(args.only)
    started = time.monotonic()
    command = (
        "scripts/bench.py " + " ".join(shlex.quote(a) for a in argv) if argv else "scripts/bench.py"
    )
    server = open_server(args.url, args.cache_dir)
    log(
        f"server: PostgreSQL {server.version}, data dir on {server.data_fs}, prefix {server.prefix}"
    )
    meta = {
        "command": command.replace(args.url, "<URL>") if args.url else command,
        "scenario": args.scenario,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "reps": reps,
        "tests": tests,
        "machine": machine_info(server),
    }
    results: dict[str, object] = {}
    try:
        if "1" in only:
            from bench.provisioning import run_provisioning

            results["provisioning"] = run_provisioning(
                server, max(reps, 5) if not args.quick else reps, 100
            )
        if "2" in only:
            from bench.template_cli import run_template

            results["template"] = run_template(server, reps)
        if "3" in only or "5" in only:
            from bench.suite import run_suite

            modes = ("ac" if args.quick else "abcd") if "3" in only else "c"
            if "5" in only and not args.quick:
                modes += "e"
            suite = run_suite(server, reps, tests, modes)
            meta["plugin_lines"] = suite.pop("plugin_lines")
            results["suite"] = suite
        if "4" in only:
            from bench.isolation import run_isolation

            n, n_fresh = (60, 20) if args.quick else (200, 60)
            results["isolation"] = run_isolation(server, reps, n, n_fresh)
        if "9" in only:
            from bench.commits import run_commits
            from bench.common import open_server as open_disk

            disk = open_disk(args.disk_url, None)
            label = "tmpfs" if "tmpfs" in server.data_fs else "run's server"
            try:
                results["commits"] = run_commits(
                    [
                        (label, server, 60 if args.quick else 200, 30 if args.quick else 100),
                        ("disk", disk, 60 if args.quick else 200, 20 if args.quick else 40),
                    ],
                    min(reps, 2 if args.quick else 3),
                )
            finally:
                disk.drop_prefixed()
        if "6" in only:
            from bench.server_start import run_server

            results["server"] = run_server(2 if args.quick else reps)
        if "7" in only:
            from bench.templates_across_runs import run_templates

            results["templates"] = run_templates(server, reps)
        if "8" in only:
            from bench.real_app import run_real_app

            real = run_real_app(server, 1 if args.quick else reps, args.disk_url or None)
            meta["plugin_lines"] = real.pop("plugin_lines")
            meta["tests"] = real["tests"].get("t", meta["tests"])
            results["real_app"] = real
    finally:
        dropped = server.drop_prefixed()
        log(f"dropped {len(dropped)} database(s) this run created")
        if server.embedded and server.started_here:
            from finreport_testdb.embedded import EmbeddedServer

            assert server.cache_dir is not None
            EmbeddedServer(server.cache_dir).stop()
            log("stopped the embedded server this run started")
    load = os.getloadavg()
    meta["loadavg_at_end"] = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    meta["seconds"] = time.monotonic() - started
    report = build(results, meta)
    print(console_table(report))
    out = args.out or default_out(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    name = "benchmarks-quick" if args.quick else "benchmarks"
    if args.scenario == "real-app":
        name += "-real-app"
    chart = out / f"{name}.png"
    write_chart(report, chart)
    write_markdown(report, out / f"{name}.md", chart.name if chart.exists() else None)
    write_json(results, meta, out / f"{name}.json")
    log(
        f"wrote {out / (name + '.md')}, {chart.name} and {name}.json in {meta['seconds'] / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
