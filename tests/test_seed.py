"""The seed step: rows loaded after migrations, before the template is frozen, fingerprinted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from finreport_testdb.core.urls import psycopg_connect_kwargs
from finreport_testdb.databases import ProjectDatabases
from finreport_testdb.errors import ConfigError
from finreport_testdb.templates.seed import seed_fingerprint

scram_only = pytest.mark.parametrize("server", ["scram"], indirect=True)

SEED_MODULE = """
from sqlalchemy import text

def load(connection):
    connection.execute(text("INSERT INTO accounts (name) VALUES ('seeded by function')"))
"""


def account_names(databases: ProjectDatabases, name: str) -> set[str]:
    kwargs = psycopg_connect_kwargs(databases.url_for(name))
    with psycopg.connect(**kwargs) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM accounts")}


@scram_only
def test_sql_and_function_seeds_end_up_in_every_clone(
    make_databases: Callable[..., ProjectDatabases], tiny_project: Path
) -> None:
    (tiny_project / "seed").mkdir()
    (tiny_project / "seed" / "01.sql").write_text(
        "INSERT INTO accounts (name) VALUES ('from sql');"
    )
    (tiny_project / "seedmod.py").write_text(SEED_MODULE)
    databases = make_databases(seed="seed/*.sql, seedmod:load")
    databases.ensure_template()
    clone = databases.clone_for_worker("gw0")
    assert {"from sql", "seeded by function", "cash", "bank"} <= account_names(
        databases, clone.name
    )


def test_seed_files_are_part_of_the_fingerprint(tiny_project: Path) -> None:
    (tiny_project / "s.sql").write_text("SELECT 1;")
    (tiny_project / "mod.py").write_text("def f(c):\n    pass\n")
    before = seed_fingerprint(["s.sql", "mod:f"], tiny_project)
    assert before == seed_fingerprint(["s.sql", "mod:f"], tiny_project)
    (tiny_project / "s.sql").write_text("SELECT 2;")
    after_sql = seed_fingerprint(["s.sql", "mod:f"], tiny_project)
    (tiny_project / "mod.py").write_text("def f(c):\n    return None\n")
    after_module = seed_fingerprint(["s.sql", "mod:f"], tiny_project)
    assert len({before, after_sql, after_module}) == 3


def test_seed_naming_a_missing_module_is_a_clear_error(tiny_project: Path) -> None:
    with pytest.raises(ConfigError, match="module 'no_such_seed_module' cannot be found"):
        seed_fingerprint(["no_such_seed_module:load"], tiny_project)


def test_seed_glob_matching_nothing_is_a_clear_error(tiny_project: Path) -> None:
    with pytest.raises(ConfigError, match="matches no file"):
        seed_fingerprint(["nothing/*.sql"], tiny_project)


@scram_only
def test_seed_entry_that_is_not_a_function_is_a_clear_error(
    make_databases: Callable[..., ProjectDatabases], tiny_project: Path
) -> None:
    (tiny_project / "notfunc.py").write_text("load = 42\n")
    databases = make_databases(seed="notfunc:load")
    with pytest.raises(ConfigError, match="'load' is not a function in notfunc"):
        databases.ensure_template()
