"""Turn the measured series into the markdown page, the PNG chart and the console table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .common import REPO, Series, fmt_series, fmt_value, ratio_series

HERE = Path(__file__).resolve().parent


def _goal_line(name: str, value: Series, ok: bool, goal: str) -> list[str]:
    med, rng = fmt_series(value)
    return [name, med, rng, goal, "**met**" if ok else "**missed**"]


def build(results: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Derive the ratios and the goal verdicts; everything a renderer needs."""
    rows: list[list[str]] = []  # workload, measure, median, range
    goals: list[list[str]] = []
    chart: dict[str, list[tuple[str, Series]]] = {}

    prov = results.get("provisioning")
    if prov:
        for key in (
            "migrate_shipped",
            "migrate_synthetic",
            "clone_api_shipped",
            "clone_api_synthetic",
            "raw_FILE_COPY_shipped",
            "raw_WAL_LOG_shipped",
            "raw_FILE_COPY_synthetic",
            "raw_WAL_LOG_synthetic",
            "cycle_FILE_COPY",
            "cycle_WAL_LOG",
        ):
            if key in prov:
                rows.append(["1 provisioning", prov[key].name, *fmt_series(prov[key])])
        r_api = ratio_series(
            "migrate shipped / clone_for_worker", prov["migrate_shipped"], prov["clone_api_shipped"]
        )
        r_raw = ratio_series(
            "migrate shipped / bare CREATE DATABASE (FILE_COPY)",
            prov["migrate_shipped"],
            prov["raw_FILE_COPY_shipped"],
        )
        r_syn = ratio_series(
            "migrate synthetic / clone_for_worker (its template)",
            prov["migrate_synthetic"],
            prov["clone_api_synthetic"],
        )
        r_strat = ratio_series(
            "WAL_LOG / FILE_COPY, bare CREATE DATABASE",
            prov["raw_WAL_LOG_shipped"],
            prov["raw_FILE_COPY_shipped"],
        )
        r_cycle = ratio_series(
            "WAL_LOG / FILE_COPY, create+connect+query+drop",
            prov["cycle_WAL_LOG"],
            prov["cycle_FILE_COPY"],
        )
        for r in (r_api, r_raw, r_syn, r_strat, r_cycle):
            rows.append(["1 provisioning", f"ratio: {r.name}", *fmt_series(r)])
        goals.append(
            [
                "1",
                *_goal_line(
                    "clone ≥ 25x cheaper than migrating the shipped chain (clone_for_worker)",
                    r_api,
                    r_api.median >= 25,
                    "≥ 25x",
                ),
            ]
        )
        chart["Provisioning (one database)"] = [
            ("migrate 33 revs", prov["migrate_shipped"]),
            ("migrate 100 revs", prov["migrate_synthetic"]),
            ("clone_for_worker", prov["clone_api_shipped"]),
            ("clone_for_worker (100-rev tpl)", prov["clone_api_synthetic"]),
            ("CREATE ... FILE_COPY", prov["raw_FILE_COPY_shipped"]),
            ("CREATE ... WAL_LOG", prov["raw_WAL_LOG_shipped"]),
        ]

    tpl = results.get("template")
    if tpl:
        for key in ("cold", "warm", "cold_inner", "warm_inner", "noop", "click"):
            if key in tpl:
                rows.append(["2 template", tpl[key].name, *fmt_series(tpl[key])])
        pct = Series(
            "warm / cold, whole process",
            [w / c * 100 for w, c in zip(tpl["warm"].values, tpl["cold"].values, strict=False)],
            unit="%",
        )
        pct_inner = Series(
            "warm / cold, ensure_template alone",
            [
                w / c * 100
                for w, c in zip(tpl["warm_inner"].values, tpl["cold_inner"].values, strict=False)
            ],
            unit="%",
        )
        rows.append(["2 template", pct.name, *fmt_series(pct)])
        rows.append(["2 template", pct_inner.name, *fmt_series(pct_inner)])
        goals.append(
            [
                "2",
                *_goal_line(
                    "warm prepare-template ≤ 5 % of cold (whole process)",
                    pct,
                    pct.median <= 5,
                    "≤ 5 %",
                ),
            ]
        )
        if "click" in tpl:
            # Issue 13: best of the repetitions each, as the issue asks; the per-repetition
            # ratios (same repetition, side by side) show the spread.
            best = tpl["noop"].lo / tpl["click"].lo
            help_ratio = ratio_series("testdb --help / import click", tpl["noop"], tpl["click"])
            rows.append(["2 template", help_ratio.name, *fmt_series(help_ratio)])
            goals.append(
                [
                    "2",
                    "testdb --help within 1.5x of import click (best of each)",
                    f"{best:.2f}x",
                    f"{tpl['noop'].lo * 1000:.0f} ms / {tpl['click'].lo * 1000:.0f} ms",
                    "≤ 1.5x",
                    "**met**" if best <= 1.5 else "**missed**",
                ]
            )

    suite = results.get("suite")
    if suite:
        walls, setups = suite["walls"], suite["setups"]
        for key, s in walls.items():
            rows.append(["3 suite", f"{s.name}: wall", *fmt_series(s)])
            rows.append(
                ["3 suite", f"{s.name}: DB set-up (critical path)", *fmt_series(setups[key])]
            )
            rows.append(
                [
                    "3 suite",
                    f"{s.name}: fixtures per test (setup+teardown)",
                    *fmt_series(suite["fixture_ms"][key]),
                ]
            )
            if "cores" in suite:
                rows.append(
                    [
                        "3 suite",
                        f"{s.name}: cores the pytest processes got (CPU s / wall s)",
                        *fmt_series(suite["cores"][key]),
                    ]
                )
                rows.append(
                    [
                        "3 suite",
                        f"{s.name}: machine load average (1 min) right after",
                        *fmt_series(suite["load"][key]),
                    ]
                )
        ratios = {}
        for num, den in (("a", "c"), ("b", "c"), ("d", "c"), ("e", "c"), ("a", "b")):
            if num in walls and den in walls:
                r = ratio_series(f"({num}) / ({den}) wall", walls[num], walls[den])
                ratios[(num, den)] = r
                rows.append(["3 suite", f"ratio: {r.name}", *fmt_series(r)])
        if "c" in walls:
            share = Series(
                "(c) DB set-up / (c) wall",
                [s / w * 100 for s, w in zip(setups["c"].values, walls["c"].values, strict=False)],
                unit="%",
            )
            rows.append(["3 suite", share.name, *fmt_series(share)])
            if ("a", "c") in ratios:
                goals.append(
                    [
                        "3",
                        *_goal_line(
                            "(a)/(c) on 2 cores",
                            ratios[("a", "c")],
                            ratios[("a", "c")].median >= 1.85,
                            "≥ 1.85",
                        ),
                    ]
                )
            goals.append(
                [
                    "3",
                    *_goal_line(
                        "DB set-up share of (c)'s wall time", share, share.median <= 3, "≤ 3 %"
                    ),
                ]
            )
        if ("e", "c") in ratios:
            rows.append(
                [
                    "5 peer",
                    "pytest-postgresql per-test fixtures / testdb db_session per-test fixtures",
                    *fmt_series(
                        ratio_series("", suite["fixture_ms"]["e"], suite["fixture_ms"]["c"])
                    ),
                ]
            )
        short = {
            "a": "(a) serial + migrations",
            "b": "(b) -n 2, migrate per worker",
            "c": "(c) -n 2, testdb db_session",
            "d": "(d) -n 2, testdb + 10 % fresh",
            "e": "(e) -n 2, pytest-postgresql",
        }
        chart["Suite wall time"] = [(short[k], s) for k, s in walls.items()]

    iso = results.get("isolation")
    if iso:
        s = iso["series"]
        for key in (
            "bare",
            "commit",
            "db_session",
            "db_session_fixture",
            "fresh_fixture",
            "fresh_phases",
            "fresh",
            "truncate",
        ):
            if key in s:
                rows.append(["4 isolation", s[key].name, *fmt_series(s[key])])
        seeds = iso.get("seeds", {})
        if seeds:
            rows.append(
                [
                    "4 isolation",
                    f"seed rows (currencies+roles+permissions+grants) before / after the TRUNCATE tests ({seeds.get('tables')} tables)",
                    f"{seeds.get('seed_rows_before')} → {seeds.get('seed_rows_after')}",
                    "(currencies re-seeded by the fixture)",
                ]
            )
        goals.append(
            [
                "4",
                *_goal_line(
                    "db_session overhead per test vs a bare connection",
                    s["db_session"],
                    s["db_session"].median <= 1.0,
                    "≤ 1 ms",
                ),
            ]
        )
        goals.append(
            [
                "4",
                *_goal_line(
                    "fresh_database per test (clone_for_test + drop_database)",
                    s["fresh_fixture"],
                    s["fresh_fixture"].median <= 35,
                    "≤ 35 ms (tmpfs)",
                ),
            ]
        )
        chart["Per-test isolation cost (vs bare connection)"] = [
            *([("commit, undone (default)", s["commit"])] if "commit" in s else []),
            ("db_session (rollback)", s["db_session"]),
            ("fresh_database (clone+drop)", s["fresh_fixture"]),
            ("fresh_database (whole test)", s["fresh"]),
            ("TRUNCATE all + re-seed", s["truncate"]),
        ]

    srv = results.get("server")
    if srv:
        for key in ("initdb", "copied", "warm"):
            rows.append(["6 server", srv[key].name, *fmt_series(srv[key])])
        r = ratio_series("initdb / cached copy", srv["initdb"], srv["copied"])
        rows.append(["6 server", f"ratio: {r.name}", *fmt_series(r)])
        chart["Embedded server start (whole process)"] = [
            ("initdb", srv["initdb"]),
            ("cached copy", srv["copied"]),
            ("warm", srv["warm"]),
        ]

    tpls = results.get("templates")
    if tpls:
        for chain in ("shipped", "synthetic"):
            for kind in ("full", "extend", "restore", "dump"):
                rows.append(
                    [
                        "7 templates",
                        tpls[f"{kind}_{chain}"].name,
                        *fmt_series(tpls[f"{kind}_{chain}"]),
                    ]
                )
            for kind in ("cli_full", "cli_extend", "cli_restore"):
                if f"{kind}_{chain}" in tpls:
                    series = tpls[f"{kind}_{chain}"]
                    rows.append(["7 templates", series.name, *fmt_series(series)])
            for kind in ("cli_extend", "cli_restore"):
                if f"{kind}_{chain}" in tpls:
                    num, den = tpls[f"{kind}_{chain}"].values, tpls[f"cli_full_{chain}"].values
                    whole = Series(
                        f"{chain}: {kind[4:]} / full, whole process",
                        [a / b * 100 for a, b in zip(num, den, strict=False)],
                        unit="%",
                    )
                    rows.append(["7 templates", f"ratio: {whole.name}", *fmt_series(whole)])
            for kind in ("extend", "restore"):
                pct = Series(
                    f"{chain}: {kind} / full",
                    [
                        a / b * 100
                        for a, b in zip(
                            tpls[f"{kind}_{chain}"].values,
                            tpls[f"full_{chain}"].values,
                            strict=False,
                        )
                    ],
                    unit="%",
                )
                rows.append(["7 templates", f"ratio: {pct.name}", *fmt_series(pct)])
                if chain == "synthetic":
                    limit = 10 if kind == "extend" else 20
                    goals.append(
                        [
                            "7",
                            *_goal_line(
                                f"{kind} ≤ {limit} % of a full build (synthetic chain)",
                                pct,
                                pct.median <= limit,
                                f"≤ {limit} %",
                            ),
                        ]
                    )
        chart["Missing template, synthetic chain"] = [
            ("full build", tpls["full_synthetic"]),
            ("extend by one", tpls["extend_synthetic"]),
            ("restore dump", tpls["restore_synthetic"]),
        ]

    real = results.get("real_app")
    if real:
        walls, mean_ms, dist = real["walls"], real["mean_ms"], real["distribution"]
        for key, s in walls.items():
            rows.append(["8 real app", f"{s.name}: wall", *fmt_series(s)])
            rows.append(["8 real app", mean_ms[key].name, *fmt_series(mean_ms[key])])
        for num, den in (("o", "t"), ("d", "k")):
            if num in walls and den in walls:
                r = ratio_series(f"({num}) / ({den}) wall", walls[num], walls[den])
                rows.append(["8 real app", f"ratio: {r.name}", *fmt_series(r)])
                r = ratio_series(f"({num}) / ({den}) fixtures per test", mean_ms[num], mean_ms[den])
                rows.append(["8 real app", f"ratio: {r.name}", *fmt_series(r)])
        for key, d in dist.items():
            label = walls[key].name.split(":")[0]
            rows.append(
                [
                    "8 real app",
                    f"{label}: unmarked tests' setup+teardown, median / p95 "
                    f"({d['rollback_tests']} tests)",
                    f"{d['rollback_median_ms']:.1f} ms",
                    f"p95 {d['rollback_p95_ms']:.1f} ms",
                ]
            )
            if d["fresh_median_ms"] is not None:
                rows.append(
                    [
                        "8 real app",
                        f"{label}: marked-fresh tests' setup+teardown, median / p95 "
                        f"({d['fresh_tests']} tests)",
                        f"{d['fresh_median_ms']:.1f} ms",
                        f"p95 {d['fresh_p95_ms']:.1f} ms",
                    ]
                )
            if d.get("reset_median_ms") is not None:
                rows.append(
                    [
                        "8 real app",
                        f"{label}: undo after a test that committed (the plugin's timing), "
                        f"median / p95 ({d['resets']} undos)",
                        f"{d['reset_median_ms']:.1f} ms",
                        f"p95 {d['reset_p95_ms']:.1f} ms",
                    ]
                )
        chart["Real app (examples/async_service), -n 2, wall"] = [
            (s.name.split(":")[0], s) for s in walls.values()
        ]

    commits = results.get("commits")
    if commits:
        from .commits import rows as commit_rows

        commit_measures, commit_goals = commit_rows(commits)
        rows += commit_measures
        goals += [
            ["9", goal, value, "", target, f"**{verdict}**"]
            for goal, value, target, verdict in commit_goals
        ]

    return {"rows": rows, "goals": goals, "chart": chart, "meta": meta}


def console_table(report: dict[str, Any]) -> str:
    lines = ["| workload | measure | median | min - max |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(r)} |" for r in report["rows"]]
    if report["goals"]:
        lines += [
            "",
            "| # | goal | median | min - max | target | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {' | '.join(g)} |" for g in report["goals"]]
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # --no-venv in an interpreter without it: the page still gets written
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = report["chart"]
    if not panels:
        return
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(
            9,
            2.1 + 1.15 * sum(len(v) for v in panels.values()) / len(panels) * len(panels) / 1.6,
        ),
    )
    if len(panels) == 1:
        axes = [axes]
    for ax, (title, series) in zip(axes, panels.items(), strict=False):
        labels = [label for label, _ in series]
        unit = series[0][1].unit
        scale = 1000.0 if unit == "s" and max(s.median for _, s in series) < 2 else 1.0
        shown_unit = "ms" if scale == 1000.0 else unit
        med = [s.median * scale for _, s in series]
        lo = [(s.median - s.lo) * scale for _, s in series]
        hi = [(s.hi - s.median) * scale for _, s in series]
        y = range(len(series))
        ax.barh(list(y), med, xerr=[lo, hi], color="#4C72B0", ecolor="#333", capsize=3)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        if title.startswith("Provisioning"):
            ax.set_xscale("log")
        ax.set_title(f"{title} — median, whiskers min-max ({shown_unit})", fontsize=9)
        for i, (v, (_, ser)) in enumerate(zip(med, series, strict=True)):
            ax.text(ser.hi * scale, i, f"  {fmt_value(v, shown_unit)}", va="center", fontsize=7)
        ax.set_xlim(
            right=max(ser.hi * scale for _, ser in series)
            * (3 if ax.get_xscale() == "log" else 1.18)
        )
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(
        f"finreport-testdb benchmarks — {report['meta']['machine']['cores']} cores, PostgreSQL "
        f"{report['meta']['machine']['postgresql']}, data dir on {report['meta']['machine']['data_dir_fs'].split()[0]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(report: dict[str, Any], path: Path, chart_name: str | None) -> None:
    meta = report["meta"]
    m = meta["machine"]
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by scripts/bench.py; do not edit by hand. The analysis section comes from "
        "scripts/bench/ANALYSIS.md. -->",
        "",
        "Every figure that matters here is a **ratio of numbers measured in the same run**, with the "
        "workloads interleaved repetition by repetition: machines are shared and noisy, and absolute "
        "times drift by up to 10x (more on disk). Absolute times are shown for orientation only. "
        "The test suite makes no timed assertions.",
        "",
        "## This run",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} (took {meta['seconds'] / 60:.1f} min), repetitions: {meta['reps']}, suite: {meta['tests']} tests",
        f"- machine: {m['cores']} cores ({m['cpu']}), {m['memory']} RAM, {m['os']}, Python {m['python']}",
        f"- PostgreSQL {m['postgresql']}, {m['server']}; data dir `{m['data_dir']}` on **{m['data_dir_fs']}**",
        *([f"- note: {meta['note']}"] if meta.get("note") else []),
        f"- load average at start / end: {m['loadavg_at_start']} / {meta.get('loadavg_at_end', '?')} "
        "(other jobs were running on this shared machine)",
        "",
    ]
    if report["goals"]:
        out += [
            "## Goals",
            "",
            "| # | goal | median | min - max | target | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        out += [f"| {' | '.join(g)} |" for g in report["goals"]]
        out.append("")
    if chart_name:
        out += [f"![benchmark chart]({chart_name})", ""]
    out += [
        "## All measurements",
        "",
        "| workload | measure | median | min - max |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| {' | '.join(r)} |" for r in report["rows"]]
    out.append("")
    plugin_lines = meta.get("plugin_lines") or {}
    if plugin_lines:
        out += ["Plugin summary lines of the last repetition:", "", "```"]
        for key, lines in plugin_lines.items():
            out += [f"({key}) {ln}" for ln in lines]
        out += ["```", ""]
    analysis = HERE / "ANALYSIS.md"
    # its analysis: docs/benchmarks.md
    if analysis.is_file() and meta.get("scenario") != "real-app":
        out += [analysis.read_text().strip(), ""]
    path.write_text("\n".join(out))


def write_json(results: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    def enc(o: Any) -> Any:
        if isinstance(o, Series):
            return o.to_json()
        if isinstance(o, dict):
            return {str(k): enc(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [enc(v) for v in o]
        return o

    path.write_text(json.dumps({"meta": meta, "results": enc(results)}, indent=1, default=str))


def default_out(quick: bool) -> Path:
    if quick:
        return Path("/tmp") / f"finreport-bench-quick-{time.strftime('%Y%m%d-%H%M%S')}"
    return REPO / "docs"


def read_json(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    def dec(o: Any) -> Any:
        if isinstance(o, dict):
            if set(o) == {"name", "unit", "values"}:
                return Series(o["name"], list(o["values"]), unit=o["unit"])
            return {k: dec(v) for k, v in o.items()}
        if isinstance(o, list):
            return [dec(v) for v in o]
        return o

    data = json.loads(path.read_text())
    return dec(data["results"]), data["meta"]
