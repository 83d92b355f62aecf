"""URLs as SQLAlchemy `URL` objects, end to end, rendered to text only here: `render_for_driver`
(password intact) and `render_for_humans` (masked). One place to render is what keeps passwords
intact for the driver and out of every message; `redact_secrets` takes them out of free text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from ..errors import ConfigError

SYNC_DRIVERS = ("psycopg", "psycopg2", "pg8000", "psycopg2cffi")
ASYNC_DRIVERS = ("asyncpg", "psycopg_async")
#: Drivers built on libpq: their URL query options are libpq connection parameters.
LIBPQ_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi", "psycopg_async")
#: libpq's sslmode values; asyncpg spells the same option `ssl`.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PERCENT_ENCODE_HINT = (
    "if the password contains @ : / # ? or %, percent-encode it (e.g. @ as %40, : as %3A)"
)
#: Drivers let the query win over the URL's parts: `?dbname=x` would send builds and tests to a
#: database the tool never chose, and `?password=` would be shown by every rendering of the URL.
_IDENTITY_OPTIONS = {
    "dbname": "put the base database in the URL's path (.../app_test)",
    "database": "put the base database in the URL's path (.../app_test)",
    "user": "put the user in the URL (postgresql://user@host/...)",
    "username": "put the user in the URL (postgresql://user@host/...)",
    "password": f"put the password in the URL (postgresql://user:password@host/...); "
    f"{_PERCENT_ENCODE_HINT}",
}
#: Query options whose value is a secret: masked like the password wherever a URL is shown.
SECRET_OPTIONS = ("sslpassword",)
MASK = "***"

log = logging.getLogger("finreport_testdb.core.urls")


@lru_cache(maxsize=1)
def libpq_keywords() -> frozenset[str]:
    """The connection parameters this libpq knows, from libpq itself (not a hand-kept list)."""
    from psycopg import pq

    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def parse_url(text: str, *, source: str = "the URL") -> URL:
    """Parse a PostgreSQL URL, refusing what this tool cannot manage; `source` names its origin."""
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        netloc = text.partition("://")[2].partition("/")[0]
        hint = f"; {_PERCENT_ENCODE_HINT}" if netloc.count("@") > 1 else ""
        raise ConfigError(
            f"{source} is not a valid database URL ({type(exc).__name__}); "
            f"expected e.g. postgresql+psycopg://user:password@host:5432/app_test{hint}"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"{source} uses backend {url.get_backend_name()!r}; finreport-testdb manages PostgreSQL "
            "only: use a postgresql:// or postgresql+<driver>:// URL"
        )
    driver = url.get_driver_name()
    if url.drivername != "postgresql" and driver not in SYNC_DRIVERS + ASYNC_DRIVERS:
        raise ConfigError(
            f"{source} names unknown driver {driver!r}; use one of "
            f"{', '.join(SYNC_DRIVERS + ASYNC_DRIVERS)} (e.g. postgresql+psycopg://...)"
        )
    for key in url.query:
        if key in _IDENTITY_OPTIONS:
            raise ConfigError(
                f"{source} sets {key!r} in its query, which would override the URL's own parts; "
                f"{_IDENTITY_OPTIONS[key]}"
            )
    for key, part in (("host", url.host), ("port", url.port)):
        if key in url.query and part:
            raise ConfigError(
                f"{source} names its {key} both in the URL and "
                f"as ?{key}=: keep one (a Unix socket: postgresql://user@/db?host=/run/postgresql)"
            )
    if url.host and "@" in url.host:
        # `user:p@ss@host` parses with host `ss@host`: never echo it, it holds part of the password.
        raise ConfigError(
            f"{source} has an '@' in its host part, so the password is not percent-encoded; "
            f"{_PERCENT_ENCODE_HINT}"
        )
    if not url.database:
        raise ConfigError(
            f"{source} ({render_for_humans(url)}) has no database name; add the base name, "
            "e.g. .../app_test: worker databases are named after it"
        )
    return url


def render_for_driver(url: URL) -> str:
    """The URL with its password intact: for drivers and Alembic, never for humans."""
    return url.render_as_string(hide_password=False)


def render_for_humans(url: URL) -> str:
    """The URL with its password and secret query options masked."""
    secrets = {key: MASK for key in url.query if key in SECRET_OPTIONS}
    text = url.update_query_dict(secrets).render_as_string(hide_password=True)
    return text.replace("=%2A%2A%2A", "=***")  # as the password is shown


def with_database(url: URL, database: str) -> URL:
    return url.set(database=database)


def with_driver(url: URL, driver: str) -> URL:
    return url.set(drivername=f"postgresql+{driver}")


def sync_variant(url: URL) -> URL:
    """A URL usable with a sync engine: the configured driver if it is sync, else psycopg."""
    if url.drivername == "postgresql" or url.get_driver_name() in SYNC_DRIVERS:
        return url
    # The async driver's own options (asyncpg's prepared_statement_cache_size) would be refused.
    return libpq_variant(with_driver(url, "psycopg"))


def async_variant(url: URL) -> URL:
    """A URL usable with an async engine: the configured driver if it is async, else psycopg's
    async mode (asyncpg for psycopg2 and pg8000 URLs)."""
    if url.get_driver_name() in ASYNC_DRIVERS:
        return url
    asyncpg = url.drivername in ("postgresql+psycopg2", "postgresql+pg8000")
    return with_driver(url, "asyncpg" if asyncpg else "psycopg_async")


def psycopg_connect_kwargs(url: URL, *, database: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `psycopg.connect` (administration always uses psycopg): keywords,
    not a rendered conninfo string, so no quoting of the password can go wrong."""
    dbname = database or url.database
    parts = {"dbname": dbname, "host": url.host, "port": url.port, "user": url.username}
    kwargs: dict[str, Any] = {key: value for key, value in parts.items() if value}
    if url.password is not None:  # also "": PGPASSWORD must not stand in for it
        kwargs["password"] = str(url.password)
    return {**kwargs, "connect_timeout": 10, **libpq_query(url)}


def with_application_name(url: URL, name: str) -> URL:
    """`url` whose libpq sessions show as `name` in pg_stat_activity (for `testdb server stop`);
    libpq's `fallback_application_name` yields to the user's `application_name` and PGAPPNAME."""
    return url.update_query_dict({"fallback_application_name": name})


def libpq_query(url: URL) -> dict[str, str]:
    """The URL's query options libpq understands: administration and builds always use libpq,
    which rejects other drivers' options (asyncpg's `ssl=<sslmode>` becomes `sslmode`). A bad
    `connect_timeout` is refused here, naming it, instead of as a driver traceback."""
    known = libpq_keywords()
    options: dict[str, str] = {}
    for key, values in url.normalized_query.items():
        value = values[-1]
        if key in known:
            options[key] = value
        elif key == "ssl" and value in _SSLMODES and "sslmode" not in url.query:
            options["sslmode"] = value
        else:
            log.debug("URL option %r is not a libpq parameter: not used for libpq connections", key)
    timeout = options.get("connect_timeout")
    if timeout is not None and not re.fullmatch(r"\s*-?[0-9]+\s*", timeout):
        raise ConfigError(
            f"the URL option connect_timeout={timeout!r} is not a whole number of seconds; "
            "fix it (e.g. ?connect_timeout=10) or remove it"
        )
    return options


def libpq_variant(url: URL) -> URL:
    """`url` with only libpq's query options when its driver is libpq-based (unchanged if not)."""
    if url.drivername != "postgresql" and url.get_driver_name() not in LIBPQ_DRIVERS:
        return url
    return url.set(query=libpq_query(url))


def server_label(url: URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}"


#: A URL up to its credentials: the scheme (never after a scheme character, so a long word is
#: scanned once, not once per letter) and the user.
_URL_HEAD = r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"\\]*"
#: An unknown password: up to the `@` (RFC 3986 allows no / ? # @ in it; a quote or a backslash
#: ends the string it is in). A placeholder in its place (source code, a template) stays.
_ANY_PASSWORD = r"[^\s/?#@'\"\\]+"
_PLACEHOLDER = r"(?:\{[^{}@]*\}|\$\{?\w+\}?|%\(\w+\)s)@"
#: What follows the credentials and stays shown: host, port and database name.
_URL_TAIL = r"[\w.\-%:\[\],~]*(?:/[\w.\-%$~+]*)?"
#: A known secret is masked only as a whole token (`postgres` is none in `postgresql`), which may
#: start after a percent-escape (`%3Apostgres`) or a repr escape (`\npostgres`).
_TOKEN_START = r"(?:(?<!\w)|(?<=%[0-9A-Fa-f]{2})|(?<=\\[abfnrtv]))"
_TOKEN_END = r"(?!\w)"
_STARTS_TOKEN = re.compile(_TOKEN_START)
_ENDS_TOKEN = re.compile(_TOKEN_END)
#: Where saferepr shortened a long repr, and the shortest piece of a secret cut there masked.
_CUT = "..."
_MIN_PIECE = 3


def secret_values(url: URL | None) -> list[str]:
    """The URL's password and secret query options."""
    if url is None:
        return []
    secrets = [str(url.password)] if url.password else []
    secrets += [value for key in SECRET_OPTIONS for value in url.normalized_query.get(key, ())]
    return [secret for secret in secrets if secret]


def secret_forms(secret: str) -> set[str]:
    """Every way `secret` may be written in a message: raw, percent-encoded as URL renderers do,
    and with the `repr` escapes of a quoted string."""
    from urllib.parse import quote, quote_plus

    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),  # urllib's default (keeps '/')
        quote(secret, safe=" +"),  # how SQLAlchemy renders it (`render_for_driver`)
        quote_plus(secret),
        repr(secret)[1:-1],
        repr(secret + "'\"")[1:-4],  # with both quotes in it, repr escapes the single one
    }
    return {form for form in forms if form}


@lru_cache(maxsize=32)
def _forms_of(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """All forms of all `secrets`, longest first, so a form containing another is masked whole."""
    forms = {form for secret in secrets for form in secret_forms(secret)}
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def _as_token(form: str) -> str:
    start = _TOKEN_START if re.match(r"\w", form) else ""
    end = _TOKEN_END if re.search(r"\w\Z", form) else ""
    return f"{start}{re.escape(form)}{end}"


@lru_cache(maxsize=64)
def _redaction_pattern(forms: tuple[str, ...]) -> re.Pattern[str]:
    """A URL (group `password`: known or not; its user, host and database stay even where they
    spell a known secret), or a known secret as a whole token."""
    known = "".join(f"{re.escape(form)}|" for form in forms)
    url = (
        f"(?P<head>{_URL_HEAD})(?::(?P<password>{known}(?!{_PLACEHOLDER}){_ANY_PASSWORD})@|@)?"
        f"(?P<tail>{_URL_TAIL})"
    )
    secret = "|".join(_as_token(form) for form in forms)
    return re.compile(f"{url}|(?P<secret>{secret})" if forms else url)


def _masked(match: re.Match[str]) -> str:
    if match.lastgroup == "secret":
        return MASK
    if match.group("password") in (None, MASK):
        return match.group(0)
    return f"{match.group('head')}:{MASK}@{match.group('tail')}"


def _mask_cut_pieces(text: str, forms: tuple[str, ...]) -> str:
    """A secret that saferepr cut at `...` leaves a piece on either side, neither a whole form: a
    piece that begins a form right before a cut, or ends one right after it, is masked (still only
    as a token on its outer side)."""
    sizes = range(max(map(len, forms)) - 1, _MIN_PIECE - 1, -1)
    heads = {form[:size] for form in forms for size in sizes if size < len(form)}
    tails = {form[-size:] for form in forms for size in sizes if size < len(form)}
    parts = text.split(_CUT)
    for i in range(len(parts) - 1):
        before, after = parts[i], parts[i + 1]
        for size in sizes:
            start = len(before) - size
            if start >= 0 and before[start:] in heads and _STARTS_TOKEN.match(before, start):
                parts[i] = before[:start] + MASK
                break
        for size in sizes:
            if after[:size] in tails and _ENDS_TOKEN.match(after, size):
                parts[i + 1] = MASK + after[size:]
                break
    return _CUT.join(parts)


def redact_secrets(text: str, secrets: Iterable[str], *, shortened: bool = False) -> str:
    """`text` with the password of anything in URL shape masked (known or not), and each of
    `secrets` in every form it may take wherever it stands as a whole token; users, hosts and
    database names stay. `shortened`: the text holds reprs saferepr may have cut (`start...end`)."""
    forms = _forms_of(tuple(sorted(set(secrets))))
    present = tuple(form for form in forms if form in text)
    pattern = _redaction_pattern(present)
    if any("\n" in form for form in present):  # a secret with a newline: the whole text
        text = pattern.sub(_masked, text)
    elif present or "://" in text:
        # Only the lines that may need it (nothing masked spans lines): a long log costs seconds.
        text = "\n".join(
            pattern.sub(_masked, line) if "://" in line or any(f in line for f in present) else line
            for line in text.split("\n")
        )
    if shortened and forms and _CUT in text:
        text = _mask_cut_pieces(text, forms)
    return text


def redact(text: str, url: URL | None) -> str:
    """`text` (a driver error, a traceback) without `url`'s secrets or any URL's password."""
    return redact_secrets(text, secret_values(url))


def one_line(exc: BaseException, url: URL) -> str:
    """A driver error as one redacted line (libpq's span lines). Redacted before the whitespace
    is collapsed: a password with a run of spaces must still match."""
    return " ".join(redact(str(exc), url).split())


def connection_failure(url: URL, exc: BaseException) -> str:
    """One line for a failed connection to `url`, the reason redacted: the plugin's fixtures fail
    with it instead of a traceback whose driver frames show the connect arguments."""
    reason = one_line(getattr(exc, "orig", None) or exc, url)
    return (
        f"testdb: cannot connect to the test database {url.database!r} at {server_label(url)}: "
        f"{reason or type(exc).__name__}; check that the server is up and accepts connections "
        "(max_connections, a restart, ALLOW_CONNECTIONS), then run again"
    )


@contextmanager
def unless_session_ended() -> Iterator[None]:
    """Around the rollback or close that ends a test's transaction: a session the server ended
    left nothing to undo, and the test's teardown must not add a driver traceback to its error."""
    try:
        yield
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise


class SecretUrl(str):
    """A URL as a real `str` (password intact, for drivers) whose `repr`, which pytest shows for
    failing tests' arguments, `-l` locals and JUnit XML, masks the password."""

    masked: str

    def __new__(cls, url: URL) -> SecretUrl:
        obj = super().__new__(cls, render_for_driver(url))
        obj.masked = render_for_humans(url)
        return obj

    def __repr__(self) -> str:
        return repr(self.masked)

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (xdist, multiprocessing) as a plain str
        return (str, (str(self),))
