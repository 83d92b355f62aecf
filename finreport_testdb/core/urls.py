"""URLs as SQLAlchemy `URL` objects, end to end.

A URL is parsed once, transformed with `URL.set(...)`, and rendered to text in exactly two places:
`render_for_driver` (password intact, for a driver or Alembic) and `render_for_humans` (password
masked, for logs, CLI output and exception text). Nothing else in the package formats a URL, which
is what keeps passwords both intact for the driver and out of every message.
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

#: Drivers we know how to map between the sync and async world. The configured driver is always
#: kept for the URL handed to tests; these maps only derive the *other* variant.
SYNC_DRIVERS = ("psycopg", "psycopg2", "pg8000", "psycopg2cffi")
ASYNC_DRIVERS = ("asyncpg", "psycopg_async")
_ASYNC_FOR_SYNC = {"psycopg": "psycopg_async", "psycopg2": "asyncpg", "pg8000": "asyncpg"}
_SYNC_FOR_ASYNC = {"asyncpg": "psycopg", "psycopg_async": "psycopg"}
#: Drivers built on libpq: their URL query options are libpq connection parameters.
LIBPQ_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi", "psycopg_async")
#: libpq's sslmode values; asyncpg spells the same option `ssl`.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PERCENT_ENCODE_HINT = (
    "if the password contains @ : / # ? or %, percent-encode it (e.g. @ as %40, : as %3A)"
)
#: Query options that would override the database, role or password the URL's own parts name:
#: drivers let the query win, so `?dbname=x` would send builds and tests to a database the tool
#: never chose (and never checked), and `?password=` would be shown by every rendering of the URL.
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

log = logging.getLogger("finreport_testdb.core.urls")


@lru_cache(maxsize=1)
def libpq_keywords() -> frozenset[str]:
    """The connection parameters this libpq knows, from libpq itself (not a hand-kept list)."""
    from psycopg import pq

    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def parse_url(text: str, *, source: str = "the URL") -> URL:
    """Parse and validate a PostgreSQL URL; `source` names where it came from for the error."""
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        netloc = text.partition("://")[2].partition("/")[0]
        hint = f"; {_PERCENT_ENCODE_HINT}" if netloc.count("@") > 1 else ""
        raise ConfigError(
            f"{source} is not a valid database URL ({type(exc).__name__}); "
            f"expected e.g. postgresql+psycopg://user:password@host:5432/app_test{hint}"
        ) from None
    check_url(url, source=source)
    return url


def check_url(url: URL, *, source: str = "the URL") -> None:
    """Reject URLs this tool cannot manage, before anything touches a server."""
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


def render_for_driver(url: URL) -> str:
    """The URL with its password intact: for drivers and Alembic, never for humans."""
    return url.render_as_string(hide_password=False)


def render_for_humans(url: URL) -> str:
    """The URL with its password (and secret query options) masked: for logs, CLI output and
    exception text."""
    secrets = {key: "***" for key in url.query if key in SECRET_OPTIONS}
    if not secrets:
        return url.render_as_string(hide_password=True)
    text = url.update_query_dict(secrets).render_as_string(hide_password=True)
    return text.replace("=%2A%2A%2A", "=***")  # as the password is shown


def with_database(url: URL, database: str) -> URL:
    """The same server, driver and credentials, another database."""
    return url.set(database=database)


def with_driver(url: URL, driver: str) -> URL:
    """The same server, credentials and database for `postgresql+<driver>`."""
    return url.set(drivername=f"postgresql+{driver}")


def sync_variant(url: URL) -> URL:
    """A URL usable with a sync engine: the configured driver if it is sync, else psycopg."""
    driver = url.get_driver_name()
    if url.drivername == "postgresql" or driver in SYNC_DRIVERS:
        return url
    # The async driver's own options (asyncpg's prepared_statement_cache_size) mean nothing to
    # psycopg, which would refuse them.
    return libpq_variant(url.set(drivername=f"postgresql+{_SYNC_FOR_ASYNC.get(driver, 'psycopg')}"))


def async_variant(url: URL) -> URL:
    """A URL usable with an async engine: the configured driver if it is async, else its twin."""
    driver = url.get_driver_name()
    if driver in ASYNC_DRIVERS:
        return url
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg_async")
    return url.set(drivername=f"postgresql+{_ASYNC_FOR_SYNC.get(driver, 'psycopg_async')}")


def psycopg_connect_kwargs(url: URL, *, database: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `psycopg.connect`: administration always uses psycopg.

    Passing the parts as keywords (not a rendered conninfo string) means no quoting or escaping of
    the password can go wrong on the way to the server.
    """
    kwargs: dict[str, Any] = {"dbname": database or url.database}
    if url.host:
        kwargs["host"] = url.host
    if url.port:
        kwargs["port"] = url.port
    if url.username:
        kwargs["user"] = url.username
    if url.password is not None:
        kwargs["password"] = str(url.password)
    kwargs.update(libpq_query(url))
    kwargs.setdefault("connect_timeout", 10)
    return kwargs


def with_application_name(url: URL, name: str) -> URL:
    """`url` whose libpq sessions show as `name` in pg_stat_activity (who holds the server, for
    `testdb server stop`), unless the user names them: libpq's `fallback_application_name`
    yields to an `application_name` in the URL and to PGAPPNAME."""
    return url.update_query_dict({"fallback_application_name": name})


def libpq_query(url: URL) -> dict[str, str]:
    """The URL's query options that libpq understands, for a libpq connection.

    A URL written for another driver carries options libpq rejects (asyncpg's
    `prepared_statement_cache_size`, `ssl`): administration and builds always use libpq, so
    those are dropped, and asyncpg's `ssl=<sslmode>` becomes `sslmode`. A libpq option with a
    value libpq cannot parse is refused here, naming the option, instead of as a driver traceback.
    """
    known = libpq_keywords()
    options: dict[str, str] = {}
    for key, raw in url.query.items():
        value = raw if isinstance(raw, str) else raw[-1]
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
    options = libpq_query(url)
    return url if options == dict(url.query) else url.set(query=options)


def server_label(url: URL) -> str:
    """`host:port` for messages (no credentials)."""
    return f"{url.host or 'localhost'}:{url.port or 5432}"


#: What a masked secret reads as.
MASK = "***"
#: The start of a URL, up to where its credentials would follow: the scheme (never preceded by a
#: scheme character, so a long word is scanned once, not once per letter) and the user.
_URL_HEAD = r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"\\]*"
#: A password in URL shape that is not a known one: up to the `@` (RFC 3986 allows no / ? # @ in
#: it, and a quote or a backslash ends the string it is in).
_ANY_PASSWORD = r"[^\s/?#@'\"\\]+"
#: A placeholder in the password's place (source code, a config template) is shown as it is.
_PLACEHOLDER = r"(?:\{[^{}@]*\}|\$\{?\w+\}?|%\(\w+\)s)@"
#: Whether a text holds a URL with a password at all: a search for its literal `://` is fast, so
#: text without one (a passing test's captured log) costs next to nothing.
_ANY_CREDENTIALS = re.compile(rf"://[^\s:/?#@'\"\\]*:{_ANY_PASSWORD}@")
#: What follows the credentials and stays shown: host, port and database name.
_URL_TAIL = r"[\w.\-%:\[\],~]*(?:/[\w.\-%$~+]*)?"
#: Where a known secret may start as a whole token: after a non-word character, a percent-escape
#: (`%3Apostgres`) or a repr escape (`\npostgres`); `postgres` is no token in `postgresql`.
_TOKEN_START = r"(?:(?<!\w)|(?<=%[0-9A-Fa-f]{2})|(?<=\\[abfnrtv]))"
_TOKEN_END = r"(?!\w)"
_STARTS_TOKEN = re.compile(_TOKEN_START)
_ENDS_TOKEN = re.compile(_TOKEN_END)
#: Where saferepr shortened a long repr (`start...end`), and the shortest piece of a secret cut
#: there that is masked.
_CUT = "..."
_MIN_PIECE = 3


def secret_values(url: URL | None) -> list[str]:
    """The secrets a URL carries: its password and its secret query options."""
    if url is None:
        return []
    secrets = [str(url.password)] if url.password else []
    for key in SECRET_OPTIONS:
        value = url.query.get(key)
        secrets += [value] if isinstance(value, str) else list(value or ())
    return [secret for secret in secrets if secret]


def secret_forms(secret: str) -> set[str]:
    """Every way `secret` may be written in a message: raw, each percent-encoding a URL renderer
    uses, and as `repr` escapes it inside a quoted string (a quote or a backslash in it)."""
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
    pattern = re.escape(form)
    if re.match(r"\w", form):
        pattern = _TOKEN_START + pattern
    if re.search(r"\w\Z", form):
        pattern += _TOKEN_END
    return pattern


@lru_cache(maxsize=64)
def _redaction_pattern(forms: tuple[str, ...]) -> re.Pattern[str]:
    """A URL (its password, known or not, is group `password`; its user, host and database are
    shown, even where they spell a known secret), or a known secret as a whole token."""
    known = "".join(f"{re.escape(form)}|" for form in forms)
    url = (
        f"(?P<head>{_URL_HEAD})(?::(?P<password>{known}(?!{_PLACEHOLDER}){_ANY_PASSWORD})@|@)?"
        f"(?P<tail>{_URL_TAIL})"
    )
    if not forms:
        return re.compile(url)
    return re.compile(f"{url}|(?P<secret>{'|'.join(_as_token(form) for form in forms)})")


def _masked(match: re.Match[str]) -> str:
    if match.lastgroup == "secret":
        return MASK
    if match.group("password") in (None, MASK):
        return match.group(0)
    return f"{match.group('head')}:{MASK}@{match.group('tail')}"


def _mask_cut_pieces(text: str, forms: tuple[str, ...]) -> str:
    """saferepr shortens a long repr to `start...end`; a secret cut there leaves a piece on either
    side, neither a whole form: a piece that begins a form right before a cut, or ends one right
    after it, is masked (still only as a token on its outer side)."""
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


def _occurrences(text: str, form: str) -> list[int]:
    found, at = [], text.find(form)
    while at != -1:
        found.append(at)
        at = text.find(form, at + 1)
    return found


def _sub_lines(pattern: re.Pattern[str], text: str, hits: list[int]) -> str:
    """`pattern` applied to the lines holding `hits` only (nothing it masks spans a line): a long
    captured log mostly needs nothing."""
    parts, done = [], 0
    for hit in sorted(hits):
        if hit < done:
            continue
        start = text.rfind("\n", 0, hit) + 1
        end = text.find("\n", hit)
        end = len(text) if end == -1 else end
        parts += [text[done:start], pattern.sub(_masked, text[start:end])]
        done = end
    return "".join([*parts, text[done:]])


def redact_secrets(text: str, secrets: Iterable[str], *, shortened: bool = False) -> str:
    """`text` with every password masked: the password of anything in URL shape
    (`scheme://user:password@host`, known or not), and each of `secrets` in every form
    `secret_forms` knows wherever it stands as a whole token (a password `postgres` leaves
    `postgresql` alone). Users, hosts and database names stay. `shortened`: the text holds reprs
    saferepr may have cut (`start...end`), so pieces of a secret at a cut are masked too."""
    forms = _forms_of(tuple(sorted(set(secrets))))
    present = tuple(form for form in forms if form in text)
    hits = [match.start() for match in _ANY_CREDENTIALS.finditer(text)]
    for form in present:
        hits += _occurrences(text, form)
    if any("\n" in form for form in present):  # a secret with a newline: the whole text
        text = _redaction_pattern(present).sub(_masked, text)
    elif hits:
        text = _sub_lines(_redaction_pattern(present), text, hits)
    if shortened and forms and _CUT in text:
        text = _mask_cut_pieces(text, forms)
    return text


def redact(text: str, url: URL | None) -> str:
    """Remove the passwords from free text such as a driver error message or a traceback: `url`'s
    password and secret query options (raw, URL-encoded, repr-escaped), and any URL's password."""
    return redact_secrets(text, secret_values(url))


def connection_failure(url: URL, exc: BaseException) -> str:
    """One line for a failed connection to the database `url` names, the reason redacted: the
    plugin's fixtures fail with it instead of a traceback whose driver frames show the connect
    arguments (libpq's conninfo, asyncpg's ConnectionParameters), password included."""
    # Redact before collapsing whitespace: a password with a run of spaces must still match.
    reason = " ".join(redact(str(getattr(exc, "orig", None) or exc), url).split())
    return (
        f"testdb: cannot connect to the test database {url.database!r} at {server_label(url)}: "
        f"{reason or type(exc).__name__}; check that the server is up and accepts connections "
        "(max_connections, a restart, ALLOW_CONNECTIONS), then run again"
    )


@contextmanager
def unless_session_ended() -> Iterator[None]:
    """Around the rollback or close that ends a test's transaction: when the server ended the
    session (stopped or restarted under the run), the transaction ended with it, so nothing is
    left to undo; the test has its own error, and its teardown must not add a driver traceback
    (or, beside another teardown failure, an exception group)."""
    try:
        yield
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise


class SecretUrl(str):
    """A database URL as a real `str` (password intact: `==` the URL, accepted by drivers and
    `create_engine`) whose `repr` masks the password.

    pytest shows a failing test's arguments, `-l` locals and JUnit XML through `repr`, so a plain
    string fixture would put the password into every failure report. Formatting (`str()`,
    f-strings) still gives the real URL: that is what the code under test needs.
    """

    masked: str

    def __new__(cls, url: URL) -> SecretUrl:
        obj = super().__new__(cls, render_for_driver(url))
        obj.masked = render_for_humans(url)
        return obj

    def __repr__(self) -> str:
        return repr(self.masked)

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (xdist, multiprocessing) as a plain str
        return (str, (str(self),))
