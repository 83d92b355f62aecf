"""Whether another local user could have written a cache path whose content runs code (the
embedded server's cluster configuration, a dump pg_restore replays): one rule for every such cache.
Callers say what the path is and what to do; this module says only what is wrong with it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path


def write_risk(path: Path, owners: Collection[int], *, kind: str, follow: bool) -> str | None:
    """Why `path` cannot be trusted, as a phrase after its name ("is a symlink"), or None for a
    `kind` ("directory" or "file") owned by one of `owners` that nobody else can write.
    `follow=False` refuses a symlink itself; `stat` errors are the caller's."""
    st = os.stat(path) if follow else os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not (stat.S_ISDIR if kind == "directory" else stat.S_ISREG)(st.st_mode):
        return f"is not a {kind}"
    if st.st_uid not in owners:
        return f"belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by others than its owner (mode {stat.S_IMODE(st.st_mode):o})"
    return None
