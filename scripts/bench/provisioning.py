"""Workload 1: a per-worker clone from the template vs running the migration chain.

Same server, same process, interleaved repetitions: each repetition migrates an empty database
(Alembic's Python API, the path a session fixture or the template build takes), clones a worker
database through `ProjectDatabases.clone_for_worker` (the plugin's path, its admin connection and
ownership checks included), and issues the bare `CREATE DATABASE ... TEMPLATE` with both
strategies on an open connection. The same for a synthetic 100-revision chain.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from psycopg import sql

from finreport_testdb.core.settings import resolve_settings
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.migrators.alembic_migrator import AlembicMigrator

from .common import REPO, Series, Server, log, scratch_database
from .synthetic_chain import generate_chain


def _databases(server: Server, base: str, alembic_ini: Path) -> ProjectDatabases:
    settings = resolve_settings(
        {"url": server.url_string(base), "alembic_config": str(alembic_ini)},
        cwd=alembic_ini.parent,
        environ={},
    )
    return ProjectDatabases.from_settings(settings)


def _raw_clone(server: Server, conn, name: str, template: str, strategy: str) -> float:  # type: ignore[no-untyped-def]
    q = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY = {}").format(
        sql.Identifier(name), sql.Identifier(template), sql.SQL(strategy)
    )
    started = time.perf_counter()
    conn.execute(q)
    return time.perf_counter() - started


def _drop(conn, name: str) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return time.perf_counter() - started


def _cycle(server: Server, conn, name: str, template: str, strategy: str) -> float:  # type: ignore[no-untyped-def]
    """The per-test life of a clone: create, connect, one query, disconnect, drop."""
    started = time.perf_counter()
    _raw_clone(server, conn, name, template, strategy)
    with server.connect(name) as c:
        c.execute("SELECT count(*) FROM pg_class").fetchone()
    _drop(conn, name)
    return time.perf_counter() - started


def run_provisioning(server: Server, reps: int, synthetic_revisions: int) -> dict[str, Series]:
    out: dict[str, Series] = {}

    def s(key: str, name: str, unit: str = "s") -> Series:
        return out.setdefault(key, Series(name, unit=unit))

    shipped = _databases(server, f"{server.prefix}_prov", REPO / "alembic.ini")
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        syn_ini = generate_chain(Path(tmp), synthetic_revisions)
        synthetic = _databases(server, f"{server.prefix}_syn", syn_ini)
        chains = {"shipped": shipped, "synthetic": synthetic}
        templates = {}
        for key, dbs in chains.items():
            result = dbs.ensure_template()
            templates[key] = result.name
            log(
                f"provisioning: template for the {key} chain {result.action} in {result.seconds:.2f} s"
            )
            dbs.clone_for_worker("gw99")  # warm-up: caches fingerprint and server version
            dbs.drop_database(dbs.naming.worker("gw99"))
        with server.connect() as conn:
            size = conn.execute(
                "SELECT pg_database_size(%s), pg_database_size(%s)",
                (templates["shipped"], templates["synthetic"]),
            ).fetchone()
        log(f"provisioning: template sizes {size[0] / 2**20:.1f} MiB / {size[1] / 2**20:.1f} MiB")
        for rep in range(reps):
            for key, dbs in chains.items():
                migrator: AlembicMigrator = dbs.migrator  # type: ignore[assignment]
                label = (
                    "shipped 33-rev chain"
                    if key == "shipped"
                    else (f"synthetic {synthetic_revisions}-rev chain")
                )
                name = f"{server.prefix}_mig_{key}_{rep}"
                with scratch_database(server, name):
                    started = time.perf_counter()
                    migrator.migrate(server.db_url(name))
                    s(f"migrate_{key}", f"alembic upgrade head, {label} (in-process)").add(
                        time.perf_counter() - started
                    )
                clone = dbs.clone_for_worker(f"gw{rep}")
                s(f"clone_api_{key}", f"clone_for_worker, {label} template").add(clone.seconds)
                dbs.drop_database(clone.name)
                with server.connect() as conn:
                    for strategy in ("FILE_COPY", "WAL_LOG"):
                        raw = f"{server.prefix}_raw_{key}_{rep}"
                        s(
                            f"raw_{strategy}_{key}",
                            f"CREATE DATABASE ... STRATEGY={strategy}, {label} template",
                        ).add(_raw_clone(server, conn, raw, templates[key], strategy))
                        _drop(conn, raw)
                        if key == "shipped":
                            s(
                                f"cycle_{strategy}",
                                f"create+connect+query+drop, STRATEGY={strategy}",
                            ).add(_cycle(server, conn, raw, templates[key], strategy))
            log(f"provisioning: repetition {rep + 1}/{reps} done")
    return out
