"""`export_url_as`: point the environment variables the app reads at the current database's URL
(with its password: so no variable another program reads may be exported).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy.engine import URL

from ..errors import ConfigError
from .urls import render_for_driver

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: What an invalid entry may show of itself in an error: anything else (`user:pw@host`) might be
#: a secret typed into the wrong setting, and is described instead of quoted.
_SHOWABLE = re.compile(r"^[\w.\- ]{0,64}$")
#: Variables that steer a program other than the app, which a URL there breaks or makes print the
#: URL in its errors and logs, by prefix (case-insensitive, as Windows reads them), with who reads
#: them for the error. libpq's are PG + letters: an app may use PG_DSN or PG_URL.
_STEERING_PREFIXES: tuple[tuple[str, str], ...] = (
    ("PG_COLOR", "the PostgreSQL tools read"),
    ("PG", "libpq reads (as every PG<name>) for every connection, testdb's own included"),
    ("LD_", "the dynamic loader reads (LD_*)"),
    ("DYLD_", "the macOS dynamic loader reads (DYLD_*)"),
    ("PYTHON", "the Python interpreter reads (PYTHON*)"),
    ("PYTEST_", "pytest and pytest-xdist read (PYTEST_*)"),
    ("TESTDB_", "testdb reads itself (TESTDB_*)"),
    ("_TESTDB_", "testdb's plugin keeps its own state in (_TESTDB_*)"),
    ("LC_", "the C library reads for the locale (LC_*)"),
    ("BASH_", "bash reads (BASH_*)"),
    ("XDG_", "locates per-user directories, testdb's cache among them (XDG_*)"),
)
#: POSIX's (XBD chapter 8), the shell's, the usual Unix login ones and Windows'.
# fmt: off
_SYSTEM_VARIABLES = frozenset({
    "LANG", "LANGUAGE", "NLSPATH", "COLUMNS", "DATEMSK", "HOME", "LINES", "LOGNAME", "MSGVERB",
    "PATH", "PWD", "OLDPWD", "SHELL", "TERM", "TERMINFO", "TMPDIR", "TZ", "IFS", "ENV", "PS1",
    "PS2", "PS3", "PS4", "PPID", "OPTIND", "OPTARG", "CDPATH", "HISTFILE", "SHELLOPTS", "BASHOPTS",
    "PROMPT_COMMAND", "USER", "USERNAME", "HOSTNAME", "MAIL", "MAILPATH", "TEMP", "TMP",
    "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "USERPROFILE", "APPDATA", "LOCALAPPDATA",
    "HOMEDRIVE", "HOMEPATH", "PROGRAMDATA",
})
# fmt: on


def steered_by(name: str) -> str | None:
    """Which program reads `name` (a clause after "which"), or None for an app's own name."""
    upper = name.upper()
    if upper in _SYSTEM_VARIABLES:
        return "the shell and the system read"
    for prefix, why in _STEERING_PREFIXES:
        if upper.startswith(prefix) and (prefix != "PG" or upper[2:3].isalpha()):
            return why
    return None


def valid_variable_names(names: tuple[str, ...], source: str) -> tuple[str, ...]:
    """`names` without repeats, if each is a variable only the app reads: a typo (`DATABASE-URL`)
    would silently export nothing, another program's variable would break it or print the URL."""
    for position, name in enumerate(names, start=1):
        if not _ENV_NAME.fullmatch(name):
            shown = repr(name) if _SHOWABLE.fullmatch(name) else f"entry {position} (not shown)"
            raise ConfigError(
                f"export_url_as from {source} contains {shown}, not an environment variable "
                'name: use letters, digits and "_", e.g. ["DATABASE_URL"]'
            )
        why = steered_by(name)
        if why is not None:
            raise ConfigError(
                f"export_url_as from {source} contains {name!r}, which {why}: a URL there "
                "would break that or show its password; export to the variable your app reads "
                "instead, e.g. DATABASE_URL or APP_DATABASE_URL"
            )
    return tuple(dict.fromkeys(names))


def restore(saved: Mapping[str, str | None]) -> None:
    """Put back the values `saved` (None: unset) from before the first export of each name."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def exported(names: Iterable[str], url: URL) -> Iterator[None]:
    """The variables point at `url` inside the block and are restored after it (a name given
    twice keeps its value from before the first, or `restore` would leave our URL set)."""
    saved: dict[str, str | None] = {}
    for name in names:
        saved.setdefault(name, os.environ.get(name))
        os.environ[name] = render_for_driver(url)
    try:
        yield
    finally:
        restore(saved)
