"""Generate a realistic synthetic Alembic chain of N revisions into a directory.

The mix follows what a long-lived app accumulates: new tables with foreign keys, added columns,
indexes, check constraints, a view now and then, a few data inserts and backfills.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

ENV_PY = """
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        context.configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()


run()
"""

INI = """
[alembic]
script_location = %(here)s/migrations
path_separator = os
sqlalchemy.url = postgresql+psycopg://localhost/placeholder
"""

HEADER = '''"""{message}

Revision ID: {rev}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down_repr}
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''


def _rev(i: int) -> str:
    return f"{i:04d}{(i * 2654435761) % 0xFFFFFFFF:08x}"


def generate_chain(target: Path, revisions: int = 100) -> Path:
    """Write alembic.ini + migrations/ into `target`; return the alembic.ini path."""
    versions = target / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (target / "alembic.ini").write_text(INI)
    (target / "migrations" / "env.py").write_text(ENV_PY)
    (target / "migrations" / "script.py.mako").write_text("# unused\n")
    tables: list[str] = []
    columns: dict[str, list[str]] = {}
    for i in range(1, revisions + 1):
        kind = (
            "table"
            if not tables or i % 3 == 1
            else ("column", "index", "data", "check", "view")[i % 5]
        )
        lines: list[str]
        if kind == "table":
            name = f"entity_{len(tables) + 1:03d}"
            parent = tables[-1] if tables else None
            fk = (
                f'        sa.Column("{parent}_id", sa.BigInteger(), '
                f'sa.ForeignKey("{parent}.id", ondelete="CASCADE"), nullable=True),\n'
                if parent
                else ""
            )
            lines = [
                f'op.create_table(\n    "{name}",\n'
                '    sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),\n'
                '    sa.Column("name", sa.String(200), nullable=False),\n'
                '    sa.Column("status", sa.String(20), nullable=False, server_default="new"),\n'
                '    sa.Column("amount", sa.Numeric(18, 2), nullable=False, server_default="0"),\n'
                '    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),\n'
                + fk.replace("        ", "    ")
                + f'    sa.UniqueConstraint("name", name="uq_{name}_name"),\n)'
            ]
            if parent:
                lines.append(f'op.create_index("ix_{name}_{parent}_id", "{name}", ["{parent}_id"])')
            tables.append(name)
            columns[name] = []
            message = f"create {name}"
        elif kind == "column":
            table = tables[i % len(tables)]
            col = f"attr_{i:03d}"
            columns[table].append(col)
            lines = [
                f'op.add_column("{table}", sa.Column("{col}", sa.String(64), nullable=True))',
                f"op.execute(\"UPDATE {table} SET {col} = 'v' || id\")",
            ]
            message = f"add {table}.{col}"
        elif kind == "index":
            table = tables[i % len(tables)]
            cols = columns[table][-1:] or ["status"]
            lines = [
                f'op.create_index("ix_{table}_{i:03d}", "{table}", ["{cols[0]}", "created_at"])'
            ]
            message = f"index {table}"
        elif kind == "data":
            table = tables[i % len(tables)]
            values = ", ".join(f"('{table}-seed-{i}-{k}', {k * 10})" for k in range(20))
            lines = [f'op.execute("INSERT INTO {table} (name, amount) VALUES {values}")']
            message = f"seed {table}"
        elif kind == "check":
            table = tables[i % len(tables)]
            lines = [f'op.create_check_constraint("ck_{table}_{i:03d}", "{table}", "amount >= 0")']
            message = f"check {table}"
        else:
            table = tables[i % len(tables)]
            lines = [
                f'op.execute("CREATE OR REPLACE VIEW v_{table}_summary AS SELECT status, count(*) AS n, '
                f'sum(amount) AS total FROM {table} GROUP BY status")'
            ]
            message = f"view on {table}"
        body = textwrap.indent("\n".join(lines), "    ")
        down = _rev(i - 1) if i > 1 else None
        (versions / f"{i:04d}_{kind}.py").write_text(
            HEADER.format(
                message=message,
                rev=_rev(i),
                down=down or "",
                down_repr=repr(down),
                body=body,
            )
        )
    return target / "alembic.ini"
