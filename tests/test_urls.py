"""urls.py: parsing and validation, rendering for drivers and humans, sync/async variants, redaction.

Pure unit tests: no server is needed to check how a URL is parsed or rendered.
"""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import psycopg
import pytest
from _pytest._io.saferepr import saferepr
from conftest import SPECIAL_PASSWORD
from sqlalchemy.engine import URL, make_url

from finreport_testdb.core.urls import (
    async_variant,
    libpq_variant,
    parse_url,
    psycopg_connect_kwargs,
    redact,
    redact_secrets,
    render_for_driver,
    render_for_humans,
    server_label,
    sync_variant,
    with_database,
)
from finreport_testdb.errors import ConfigError

DRIVERS = [
    "postgresql",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+asyncpg",
    "postgresql+psycopg_async",
    "postgresql+pg8000",
]


def special_url(drivername: str = "postgresql+psycopg", database: str = "app_test") -> URL:
    return URL.create(
        drivername,
        username="app",
        password=SPECIAL_PASSWORD,
        host="db.example",
        port=5433,
        database=database,
    )


def password_forms(password: str) -> list[str]:
    return [password, quote(password, safe=""), quote_plus(password), quote(password, safe=" +")]


# -- parsing and validation -----------------------------------------------------------------------


def test_parse_url_accepts_postgresql_url_and_keeps_driver() -> None:
    url = parse_url("postgresql+asyncpg://app:pw@db:5432/finance_report_test")
    assert (url.drivername, url.host, url.port, url.database) == (
        "postgresql+asyncpg",
        "db",
        5432,
        "finance_report_test",
    )


def test_parse_url_without_database_is_config_error_naming_source() -> None:
    with pytest.raises(ConfigError, match="has no database name") as info:
        parse_url("postgresql+psycopg://app:pw@db:5432", source="env TESTDB_URL")
    assert "env TESTDB_URL" in str(info.value)


def test_parse_url_without_database_does_not_echo_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("postgresql+psycopg://app:hunter2secret@db:5432/")
    assert "hunter2secret" not in str(info.value)
    assert "***" in str(info.value)


def test_parse_url_unknown_driver_is_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"unknown driver 'foodriver'.*psycopg"):
        parse_url("postgresql+foodriver://app@db/app_test")


@pytest.mark.parametrize(
    "text",
    ["mysql://app@db/app_test", "sqlite:///app_test.db", "mysql+pymysql://app:pw@db/app_test"],
)
def test_parse_url_non_postgres_backend_is_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL only"):
        parse_url(text)


def test_parse_url_garbage_is_config_error_with_example() -> None:
    with pytest.raises(ConfigError, match=r"not a valid database URL.*postgresql\+psycopg://"):
        parse_url("this is not a url", source="--url")


def test_parse_url_garbage_error_does_not_echo_the_text() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("::secretpassword::", source="--url")
    assert "secretpassword" not in str(info.value)


# -- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("drivername", DRIVERS)
def test_render_for_driver_keeps_special_password_intact(drivername: str) -> None:
    url = special_url(drivername)
    reparsed = make_url(render_for_driver(url))
    assert reparsed.password == SPECIAL_PASSWORD
    assert reparsed.drivername == drivername
    assert reparsed.database == "app_test"


def test_parse_of_rendered_url_round_trips_through_parse_url() -> None:
    url = parse_url(render_for_driver(special_url()))
    assert url.password == SPECIAL_PASSWORD
    assert url.username == "app"


def test_render_for_humans_masks_password_in_every_form() -> None:
    shown = render_for_humans(special_url())
    assert "***" in shown
    for form in password_forms(SPECIAL_PASSWORD):
        assert form not in shown
    assert shown == "postgresql+psycopg://app:***@db.example:5433/app_test"


def test_render_for_humans_without_password_shows_no_mask() -> None:
    assert render_for_humans(make_url("postgresql://app@db/x")) == "postgresql://app@db/x"


def test_with_database_keeps_server_driver_and_credentials() -> None:
    url = with_database(special_url("postgresql+asyncpg"), "app_test_gw3")
    assert url.database == "app_test_gw3"
    assert url.password == SPECIAL_PASSWORD
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.username) == ("db.example", 5433, "app")


def test_server_label_is_host_and_port_without_credentials() -> None:
    assert server_label(special_url()) == "db.example:5433"
    assert server_label(make_url("postgresql:///x")) == "localhost:5432"


# -- sync / async variants ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drivername", "sync_driver", "async_driver"),
    [
        ("postgresql+asyncpg", "postgresql+psycopg", "postgresql+asyncpg"),
        ("postgresql+psycopg_async", "postgresql+psycopg", "postgresql+psycopg_async"),
        ("postgresql+psycopg", "postgresql+psycopg", "postgresql+psycopg_async"),
        ("postgresql+psycopg2", "postgresql+psycopg2", "postgresql+asyncpg"),
        ("postgresql", "postgresql", "postgresql+psycopg_async"),
    ],
)
def test_sync_and_async_variants(drivername: str, sync_driver: str, async_driver: str) -> None:
    url = special_url(drivername)
    assert sync_variant(url).drivername == sync_driver
    assert async_variant(url).drivername == async_driver


def test_variants_keep_password_and_database() -> None:
    for variant in (
        sync_variant(special_url("postgresql+asyncpg")),
        async_variant(special_url("postgresql+psycopg")),
    ):
        assert variant.password == SPECIAL_PASSWORD
        assert variant.database == "app_test"
        assert make_url(render_for_driver(variant)).password == SPECIAL_PASSWORD


def test_psycopg_connect_kwargs_pass_password_unescaped_and_query_params() -> None:
    url = special_url().update_query_dict({"sslmode": "disable", "application_name": "t"})
    kwargs = psycopg_connect_kwargs(url, database="postgres")
    assert kwargs["password"] == SPECIAL_PASSWORD
    assert kwargs["dbname"] == "postgres"
    assert (kwargs["host"], kwargs["port"], kwargs["user"]) == ("db.example", 5433, "app")
    assert kwargs["sslmode"] == "disable"
    assert kwargs["application_name"] == "t"


def test_psycopg_connect_kwargs_are_accepted_by_libpq() -> None:
    """libpq parses the keywords (conninfo) without complaint, whatever the password holds."""
    kwargs = psycopg_connect_kwargs(special_url())
    info = psycopg.conninfo.conninfo_to_dict(psycopg.conninfo.make_conninfo(**kwargs))
    assert info["password"] == SPECIAL_PASSWORD


# -- redaction ------------------------------------------------------------------------------------


def test_redact_removes_raw_password() -> None:
    text = f"FATAL: something about {SPECIAL_PASSWORD} happened"
    assert SPECIAL_PASSWORD not in redact(text, special_url())
    assert "***" in redact(text, special_url())


@pytest.mark.parametrize(
    "encode",
    [lambda p: quote(p, safe=""), quote_plus, quote],
    ids=["quote-safe-empty", "quote_plus", "quote-default"],
)
def test_redact_removes_urlencoded_password(encode) -> None:  # type: ignore[no-untyped-def]
    text = f"url was postgresql://app:{encode(SPECIAL_PASSWORD)}@db/app_test"
    assert encode(SPECIAL_PASSWORD) not in redact(text, special_url())


def test_redact_removes_password_as_rendered_for_a_driver() -> None:
    """The form SQLAlchemy writes into a URL (what a migration could put in its error message)."""
    rendered = render_for_driver(special_url())
    cleaned = redact(f"could not connect with {rendered}", special_url())
    for form in password_forms(SPECIAL_PASSWORD):
        assert form not in cleaned
    assert "db.example" in cleaned


def test_redact_without_password_returns_text_unchanged() -> None:
    assert redact("nothing to hide", make_url("postgresql://app@db/x")) == "nothing to hide"
    assert redact("nothing to hide", None) == "nothing to hide"


def test_redact_masks_a_word_like_password_only_as_a_whole_token() -> None:
    """Trust round 4, item 3: a password `postgres` turned every `postgresql` (a driver name, a
    path in a traceback) into `***ql`. Only whole tokens are masked, and in URL shape only the
    password: the user and the database `postgres` stay."""
    url = make_url("postgresql+psycopg://postgres:postgres@db/postgres")
    text = (
        "sqlalchemy/dialects/postgresql/psycopg.py: postgresql+psycopg://postgres:postgres@db:5432"
        "/postgres as postgres_app, password='postgres' (postgres); encoded: u%3Apostgres%40db"
    )
    assert redact(text, url) == (
        "sqlalchemy/dialects/postgresql/psycopg.py: postgresql+psycopg://postgres:***@db:5432"
        "/postgres as postgres_app, password='***' (***); encoded: u%3A***%40db"
    )


def test_redact_masks_the_password_of_any_url_and_only_that() -> None:
    """Trust round 4, item 3: passwords in URL shape are masked whoever's they are (another
    service's, an app's); users, hosts, ports, databases and placeholders in source code stay."""
    text = (
        "cache redis://:hunter2@cache:6379/0, api https://bot:s3cr%40t@api.example/v1, "
        "plain https://example.com:8080/p?q=1, template f'postgresql://{user}:{password}@{host}/db'"
    )
    assert redact(text, None) == (
        "cache redis://:***@cache:6379/0, api https://bot:***@api.example/v1, "
        "plain https://example.com:8080/p?q=1, template f'postgresql://{user}:{password}@{host}/db'"
    )


def test_redact_masks_the_raw_password_in_url_shape_and_as_repr_escapes_it() -> None:
    """Trust round 4, item 3: `f"postgresql://{user}:{password}@..."` with the raw password (its
    `@` and `/` included), and the password's repr (`\\'` for its quote)."""
    text = f"postgresql://app:{SPECIAL_PASSWORD}@db.example/app_test; {SPECIAL_PASSWORD!r}"
    assert redact(text, special_url()) == "postgresql://app:***@db.example/app_test; '***'"


def test_redact_masks_the_pieces_of_a_password_that_saferepr_cut() -> None:
    """Trust round 4, item 3: `-l` shows long locals shortened to `start...end`; a password cut
    there is two pieces, neither of them a whole form of it."""
    rendered = render_for_driver(special_url())
    start = rendered.index(":", rendered.index("://") + 3) + 1
    end = rendered.index("@", start)
    # saferepr keeps 118 characters before its `...` and 119 after (the closing quote included)
    cut_early = "x" * (118 - 1 - start - 5) + rendered + "y" * 300  # 5 characters in
    cut_late = "x" * 300 + rendered + "y" * (118 - len(rendered) + end - 6)  # 6 before the end
    shown = f"{saferepr(cut_early)} {saferepr(cut_late)}"
    masked = redact_secrets(shown, [SPECIAL_PASSWORD], shortened=True)
    assert "postgresql+psycopg://app:***...yyy" in masked and "...***@db.example" in masked
    for piece in (rendered[start : start + 5], rendered[end - 6 : end]):
        assert piece in shown and piece not in masked


def test_libpq_connections_get_libpq_options_only() -> None:
    """asyncpg's options are dropped and its `ssl` becomes `sslmode`; libpq's own are kept."""
    url = make_url(
        "postgresql+asyncpg://u:pw@h/db?prepared_statement_cache_size=0&ssl=require"
        "&application_name=x"
    )
    kwargs = psycopg_connect_kwargs(url)
    assert "prepared_statement_cache_size" not in kwargs and "ssl" not in kwargs
    assert kwargs["sslmode"] == "require" and kwargs["application_name"] == "x"
    assert dict(sync_variant(url).query) == {"sslmode": "require", "application_name": "x"}
    assert dict(async_variant(url).query) == dict(url.query)  # the app's own driver: unchanged


def test_libpq_variant_leaves_non_libpq_drivers_alone() -> None:
    url = make_url("postgresql+pg8000://u@h/db?foo=bar")
    assert libpq_variant(url) is url
    assert dict(libpq_variant(url.set(drivername="postgresql+psycopg")).query) == {}


def test_malformed_connect_timeout_is_one_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="connect_timeout='abc'"):
        psycopg_connect_kwargs(make_url("postgresql://u@h/db?connect_timeout=abc"))


def test_unencoded_at_in_password_gets_the_percent_encoding_hint_without_echo() -> None:
    with pytest.raises(ConfigError, match="percent-encode") as caught:
        parse_url("postgresql://u:p@ss@h/db", source="TESTDB_URL")
    assert "ss@h" not in str(caught.value)
