"""Workload 7 (issue 11): a missing template built from empty vs extended by one revision vs
restored from the dump cache, on the shipped chain (33 revisions) and a synthetic 200-revision one.

Measured in-process through `ProjectDatabases.ensure_template()` (its own `seconds`: the template
step under the lock, fingerprint excluded, the same for all three), interleaved repetition by
repetition (after one unrecorded warm-up) so the ratios compare like with like:

- full: `ensure_template(full=True)` with no cache: every revision migrated into an empty database;
- extend: a template of the chain minus its last revision exists; the full chain's template is
  missing: clone + `alembic upgrade` of the one new revision (+ Alembic loading the script dir);
- restore: a dump of this fingerprint is in the cache dir and the template is missing.

The same three once more as whole `testdb prepare-template --json` processes (what a CI step
pays: interpreter, imports, fingerprint, the template step), in fresh base names.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .common import BIN, REPO, Series, Server, log, run
from .synthetic_chain import generate_chain


def _project(root: Path, chain: str, revisions: int) -> Path:
    """A project dir with alembic.ini + migrations for `chain` ("shipped" or "synthetic")."""
    if chain == "shipped":
        root.mkdir(parents=True)
        shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
        shutil.copytree(
            REPO / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        generate_chain(root, revisions)
    return root


def _without_last_revision(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    versions = sorted((target / "migrations" / "versions").glob("*.py"))
    versions[-1].unlink()
    return target


def _databases(server: Server, project: Path, base: str, cache_dir: Path | None = None):  # type: ignore[no-untyped-def]
    from finreport_testdb.core.settings import resolve_settings
    from finreport_testdb.databases import ProjectDatabases

    overrides = {"url": server.url_string(base), "alembic_config": str(project / "alembic.ini")}
    if cache_dir is not None:
        overrides["cache_dir"] = str(cache_dir)
    return ProjectDatabases.from_settings(resolve_settings(overrides, cwd=project, environ={}))


CLI = {
    "cli_full": "whole process, full build",
    "cli_extend": "whole process, extend by one revision",
    "cli_restore": "whole process, restore from the dump cache",
}


def add(series: Series, rep: int, value: float) -> None:
    if rep > 0:
        series.add(value)


def run_templates(server: Server, reps: int, synthetic_revisions: int = 200) -> dict[str, Series]:
    out: dict[str, Series] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tpl-") as tmp:
        chains = {
            "shipped": ("shipped 33-rev chain", _project(Path(tmp) / "shipped", "shipped", 33)),
            "synthetic": (
                f"synthetic {synthetic_revisions}-rev chain",
                _project(Path(tmp) / "synthetic", "synthetic", synthetic_revisions),
            ),
        }
        for key, (label, project) in chains.items():
            shorter = _without_last_revision(project, Path(tmp) / f"{key}-minus-one")
            cache = Path(tmp) / f"{key}-cache"
            out[f"full_{key}"] = Series(f"{label}: full build (every revision, from empty)")
            out[f"extend_{key}"] = Series(f"{label}: extend by one revision (clone + upgrade)")
            out[f"restore_{key}"] = Series(f"{label}: restore from the dump cache")
            out[f"dump_{key}"] = Series(f"{label}: full build + writing the dump")
            for rep in range(reps + 1):  # repetition 0 warms up (imports, bytecode): not kept
                base = f"{server.prefix}_t{key[:3]}{rep}"
                # full, from empty, no cache
                with _databases(server, project, f"{base}f") as db:
                    result = db.ensure_template(full=True)
                    assert result.action == "built", result
                    add(out[f"full_{key}"], rep, result.seconds)
                # extend: the shorter chain's template first (untimed), then the full chain
                with _databases(server, shorter, f"{base}e") as db:
                    db.ensure_template(full=True)
                with _databases(server, project, f"{base}e") as db:
                    result = db.ensure_template()
                    assert (result.action, result.revisions) == ("extended", 1), result
                    add(out[f"extend_{key}"], rep, result.seconds)
                # restore: build once with the cache (timed separately), drop, restore
                with _databases(server, project, f"{base}r", cache) as db:
                    result = db.ensure_template(full=True)
                    assert result.action == "built" and not result.notes, result
                    add(out[f"dump_{key}"], rep, result.seconds)
                    db.drop_database(result.name)
                with _databases(server, project, f"{base}r", cache) as db:
                    result = db.ensure_template()
                    assert result.action == "restored", result
                    add(out[f"restore_{key}"], rep, result.seconds)
                # whole processes: full, then extend (shorter chain first), then restore
                for kind, proj, extra, suffix, want in (
                    ("cli_full", project, ["--full"], "F", "built"),
                    ("cli_prep", shorter, ["--full"], "E", "built"),
                    ("cli_extend", project, [], "E", "extended"),
                    ("cli_restore", project, ["--cache-dir", str(cache)], "F", "restored"),
                ):
                    if kind == "cli_restore":
                        with _databases(server, project, f"{base}F") as db:
                            db.drop_database(db.template_name)
                    wall, proc = run(
                        [str(BIN / "testdb"), "prepare-template", "--json", *extra],
                        env=server.child_env(base=f"{base}{suffix}"),
                        cwd=proj,
                    )
                    assert json.loads(proc.stdout)["action"] == want, proc.stdout
                    if kind in CLI:
                        series = out.setdefault(f"{kind}_{key}", Series(f"{label}: {CLI[kind]}"))
                        add(series, rep, wall)
                server.drop_prefixed()
                if rep == 0:
                    continue
                log(
                    f"templates {key}: repetition {rep}/{reps}: full "
                    f"{out[f'full_{key}'].values[-1]:.2f} s, extend "
                    f"{out[f'extend_{key}'].values[-1]:.2f} s, restore "
                    f"{out[f'restore_{key}'].values[-1]:.2f} s"
                )
    return out
