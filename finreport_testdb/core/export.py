"""`export_url_as`: put the current database's URL into the environment variables the app reads.

Apps that build their engine from `DATABASE_URL` at import time (12-factor settings) and env.py files
that read it need the variable set before they run: the plugin sets it in each process before any
conftest.py or test module is imported, and the template build sets it to the scratch database's
URL while env.py runs. The value is the configured driver's URL with the password intact (it is
for the app, never printed). Which names may be exported is decided here too: never one that
steers libpq, the loader, the interpreter, pytest, testdb or the shell (`valid_variable_names`).
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

#: Variables `export_url_as` must not set, by prefix (case-insensitive, as Windows reads them):
#: each steers a program other than the app, which a URL there breaks, or makes print the URL
#: (password included) in its errors and logs. Found by the check, with why, for the error.
_STEERING_PREFIXES: tuple[tuple[str, str], ...] = (
    # libpq's own are PG + letters (PGHOST, PGOPTIONS, PGSERVICE, PGSSLMODE...); the PostgreSQL
    # tools add PG_COLOR(S). PG_DSN or PG_URL are nobody's: an app may use them.
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
#: The system's and the shell's variables by name: POSIX's (XBD chapter 8: the locale, HOME, PATH,
#: PWD, SHELL, TERM, TMPDIR, TZ, ...), the shell's (IFS, ENV, PS1, CDPATH, ...), the usual Unix
#: login ones (USER, MAIL, TEMP) and Windows' (SYSTEMROOT, COMSPEC, USERPROFILE, ...).
# fmt: off
_SYSTEM_VARIABLES = frozenset({
    "LANG", "LANGUAGE", "NLSPATH", "COLUMNS", "DATEMSK", "HOME", "LINES", "LOGNAME", "MSGVERB",
    "PATH", "PWD", "OLDPWD", "SHELL", "TERM", "TERMINFO", "TMPDIR", "TZ",
    "IFS", "ENV", "PS1", "PS2", "PS3", "PS4", "PPID", "OPTIND", "OPTARG", "CDPATH", "HISTFILE",
    "SHELLOPTS", "BASHOPTS", "PROMPT_COMMAND",
    "USER", "USERNAME", "HOSTNAME", "MAIL", "MAILPATH", "TEMP", "TMP",
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
    """`export_url_as` names environment variables. A typo like `DATABASE-URL` would silently
    export nothing the app reads; a name another program reads (PGSERVICE, LD_PRELOAD, PATH,
    PYTHONPATH, TESTDB_URL...) would break it or make it print the URL with its password. A name
    listed twice counts once (its first place)."""
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


#: Saved values of exported variables: None = the variable was not set.
Saved = dict[str, "str | None"]


def export(names: Iterable[str], url: URL) -> Saved:
    """Set each variable to `url`; return the previous values for `restore`. A name given twice
    keeps the value it had before the first: saving it again would save our own URL, and
    `restore` would then leave the test database's URL in the environment."""
    saved: Saved = {}
    value = render_for_driver(url)
    for name in names:
        saved.setdefault(name, os.environ.get(name))
        os.environ[name] = value
    return saved


def restore(saved: Mapping[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def exported(names: Iterable[str], url: URL) -> Iterator[None]:
    """The variables point at `url` inside the block and are restored after it."""
    saved = export(names, url)
    try:
        yield
    finally:
        restore(saved)
