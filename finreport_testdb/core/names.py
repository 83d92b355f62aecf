"""Names of the databases this tool manages, derived from one base name.

`<base>_tpl_<fp12>` (template, shared by all namespaces), `<base>_bld_<fp12>` (scratch build), `<base>[_<ns>]_gwN`
(worker), `<base>[_<ns>]_serial` (serial run; the base database itself is never touched),
`<base>[_<ns>]_gwN_t<k>` (per-test); each is created as
`<name>.creating` and renamed once marked. PostgreSQL truncates
identifiers at 63 bytes, so longer names are shortened here, stably, with a hash of the part that was
cut, always keeping the suffix that says what the database is. This module validates names and never
talks to a server (`auto_namespace` only asks `git` for the checkout's branch); quoting is `psycopg.sql.Identifier`'s job, not ours.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnsafeDatabaseName

MAX_IDENTIFIER_BYTES = 63
RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})
SERIAL_WORKER = "master"
#: Suffix of a serial run's database: never the base database itself, which in CI is often the
#: service container's existing `POSTGRES_DB` and must not be created, replaced or dropped.
SERIAL_SUFFIX = "_serial"

# Letters (any script), digits, '_' and '-'. Quotes, semicolons, spaces, slashes and control
# characters are refused: they are legal in quoted identifiers but only ever appear by mistake.
_BASE_NAME = re.compile(r"^[^\W][\w-]*$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_]{1,30}$")
_WORKER_ID = re.compile(r"^(gw[0-9]{1,4}|master)$")  # ASCII digits only: not "gw٣"
#: The suffixes `Naming` puts after a base (templates, scratch) or a stem (the rest).
_MANAGED_SUFFIX = re.compile(
    r"(_tpl_[0-9a-f]{12}|_bld_[0-9a-f]{12}|_serial|_gw[0-9]{1,4}"
    r"|_(?:gw[0-9]{1,4}|master)_t[0-9]+)$"
)


def validate_base_name(name: str, *, source: str = "the base database name") -> str:
    # fullmatch, not match: `$` also matches before a trailing newline ("app_test\n").
    if not _BASE_NAME.fullmatch(name):
        if not name:
            raise UnsafeDatabaseName(f"{source} is empty: name the base database, e.g. app_test")
        bad = next((c for c in name if not (c.isalnum() or c in "_-")), None)
        if bad is None:  # only the first character is wrong (e.g. a leading '-')
            raise UnsafeDatabaseName(
                f"{source} {name!r} starts with {name[0]!r}: start it with a letter, digit or '_' "
                "(e.g. app_test)"
            )
        raise UnsafeDatabaseName(
            f"{source} {name!r} contains {bad!r}: use only letters, digits, '_' and '-' "
            "(e.g. app_test)"
        )
    if name in RESERVED_DATABASES:
        raise UnsafeDatabaseName(
            f"{source} is {name!r}, a system database: name a database of your own, "
            "e.g. .../app_test"
        )
    return name


def validate_namespace(namespace: str, *, source: str = "the namespace") -> str:
    if namespace and not _NAMESPACE.fullmatch(namespace):
        raise UnsafeDatabaseName(
            f"{source} {namespace!r} is not allowed: use 1-30 letters, digits or '_' "
            "(e.g. ci_shard_1), or 'auto'"
        )
    return namespace


def validate_worker_id(worker_id: str) -> str:
    if not isinstance(worker_id, str) or not _WORKER_ID.fullmatch(worker_id):
        raise UnsafeDatabaseName(
            f"worker id {worker_id!r} is not an xdist worker: expected gw<N> or master"
        )
    return worker_id


def auto_namespace(checkout: Path) -> str:
    """A short namespace stable for one checkout and branch, so checkouts sharing a server differ.

    The readable part is the branch; the hash covers branch and absolute path, so two clones of the
    same branch still get different namespaces.
    """
    try:
        branch = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        branch = "nogit"
    slug = re.sub(r"[^a-z0-9]+", "", branch.lower())[:12] or "head"
    digest = hashlib.sha256(f"{branch}\0{checkout.resolve()}".encode()).hexdigest()[:6]
    return f"{slug}_{digest}"


def fit_identifier(stem: str, suffix: str) -> str:
    """`stem + suffix`, shortened to 63 bytes by hashing the stem's tail; the suffix survives."""
    full = stem + suffix
    if len(full.encode()) <= MAX_IDENTIFIER_BYTES:
        return full
    digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode()) - len(digest) - 1
    prefix = stem.encode()[:room].decode(errors="ignore")  # never split a UTF-8 character
    return f"{prefix}_{digest}{suffix}"


#: Suffix of the name a database is created under before it is marked and renamed to its real name
#: (see `Admin.create_database`). A '.' can appear in no validated base name or namespace, so no
#: managed name of any base ends like this, and a crash leaves a name that says what it is.
CREATING_SUFFIX = ".creating"


def creating_name(name: str) -> str:
    """The temporary name `name` is created under until it carries its marker."""
    return fit_identifier(name, CREATING_SUFFIX)


@dataclass(frozen=True)
class Naming:
    """All managed names for one base (and namespace)."""

    base: str
    namespace: str = ""

    def __post_init__(self) -> None:
        validate_base_name(self.base)
        validate_namespace(self.namespace)

    @property
    def stem(self) -> str:
        return f"{self.base}_{self.namespace}" if self.namespace else self.base

    def template(self, fingerprint: str) -> str:
        """Templates are content-addressed and immutable, so every namespace shares them: CI shards
        on one server build the template once, whoever arrives first."""
        return fit_identifier(self.base, f"_tpl_{fingerprint[:12]}")

    def scratch(self, fingerprint: str) -> str:
        return fit_identifier(self.base, f"_bld_{fingerprint[:12]}")

    def worker(self, worker_id: str) -> str:
        """The database of one xdist worker; a serial run (`master`) gets `<stem>_serial`."""
        validate_worker_id(worker_id)
        if worker_id == SERIAL_WORKER:
            return fit_identifier(self.stem, SERIAL_SUFFIX)
        return fit_identifier(self.stem, f"_{worker_id}")

    def per_test(self, worker_id: str, index: int) -> str:
        validate_worker_id(worker_id)
        return fit_identifier(self.stem, f"_{worker_id}_t{index}")

    def is_managed_name(self, name: str, *, any_namespace: bool = False) -> bool:
        """Whether `name` is exactly a name this base gives a database: a template or scratch
        build (any fingerprint), or a worker, serial or per-test database of this
        namespace (of any namespace with `any_namespace`). Starting with `<base>_` is not enough:
        `<base>_mydata` is somebody's own database."""
        match = _MANAGED_SUFFIX.search(name)
        if match is None:
            return False
        suffix = match.group(1)
        if suffix.startswith(("_tpl_", "_bld_")):
            return fit_identifier(self.base, suffix) == name
        if fit_identifier(self.stem, suffix) == name:
            return True
        if not any_namespace:
            return False
        head = name[: -len(suffix)]
        namespace = head[len(self.base) + 1 :] if head.startswith(f"{self.base}_") else None
        return head == self.base or bool(namespace and _NAMESPACE.fullmatch(namespace))
