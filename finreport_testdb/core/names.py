"""Names of the databases this tool manages, all derived from one base name (`Naming`). Names
over PostgreSQL's 63-byte identifier limit would be silently truncated, so they are shortened here,
stably, with a hash, always keeping the suffix that says what the database is.
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
#: Never the base database itself: in CI it is often the service container's `POSTGRES_DB`.
SERIAL_SUFFIX = "_serial"
#: The name a database is created under until it is marked and renamed (`Admin.create_database`).
#: No validated base or namespace holds a '.', so no managed name of any base ends like this.
CREATING_SUFFIX = ".creating"

_NAMESPACE = re.compile(r"^[A-Za-z0-9_]{1,30}$")
_WORKER_ID = re.compile(r"^(gw[0-9]{1,4}|master)$")  # ASCII digits only: not "gw٣"
#: The suffixes `Naming` puts after a base (templates, scratch) or a stem (the rest).
_MANAGED_SUFFIX = re.compile(
    r"(_tpl_[0-9a-f]{12}|_bld_[0-9a-f]{12}|_serial|_gw[0-9]{1,4}"
    r"|_(?:gw[0-9]{1,4}|master)_t[0-9]+)$"
)


def validate_base_name(name: str, *, source: str = "the base database name") -> str:
    """Letters (any script), digits, '_' and '-': quotes, semicolons, spaces, slashes and control
    characters are legal in quoted identifiers but only ever appear by mistake."""
    if not name:
        raise UnsafeDatabaseName(f"{source} is empty: name the base database, e.g. app_test")
    bad = next((c for c in name if not (c.isalnum() or c in "_-")), None)
    if bad is not None:
        raise UnsafeDatabaseName(
            f"{source} {name!r} contains {bad!r}: use only letters, digits, '_' and '-' "
            "(e.g. app_test)"
        )
    if name.startswith("-"):
        raise UnsafeDatabaseName(
            f"{source} {name!r} starts with '-': start it with a letter, digit or '_' "
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
    """A short namespace stable for one checkout and branch, so checkouts sharing a server differ:
    the branch to read, and a hash of branch and absolute path (two clones of one branch)."""
    command = ["git", "-C", str(checkout), "rev-parse", "--abbrev-ref", "HEAD"]
    try:
        git = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
        branch = git.stdout.strip()
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


def creating_name(name: str) -> str:
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
        """Shared by every namespace (content-addressed): CI shards on one server build it once."""
        return fit_identifier(self.base, f"_tpl_{fingerprint[:12]}")

    def scratch(self, fingerprint: str) -> str:
        return fit_identifier(self.base, f"_bld_{fingerprint[:12]}")

    def worker(self, worker_id: str) -> str:
        validate_worker_id(worker_id)
        suffix = SERIAL_SUFFIX if worker_id == SERIAL_WORKER else f"_{worker_id}"
        return fit_identifier(self.stem, suffix)

    def per_test(self, worker_id: str, index: int) -> str:
        validate_worker_id(worker_id)
        return fit_identifier(self.stem, f"_{worker_id}_t{index}")

    def is_managed_name(self, name: str, *, any_namespace: bool = False) -> bool:
        """Whether this base gives exactly `name` (in this namespace, or any with `any_namespace`):
        starting with `<base>_` is not enough, `<base>_mydata` is somebody's own database."""
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
