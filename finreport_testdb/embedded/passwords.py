"""The superuser secret: generating it, the `password` file every process of a run reads it from,
and the SCRAM verifier the server stores instead of it."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import psycopg
from psycopg import pq

from ..errors import EmbeddedServerError
from .layout import write_private


def scrub(text: str, password: str | None) -> str:
    """Defence in depth: nothing we pass to a child contains the password, but any text that
    reaches a message goes through here anyway."""
    return text.replace(password, "***") if password else text


def read_password_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text:
        raise EmbeddedServerError(
            f"{path} is not a password this tool wrote (empty, or not UTF-8 text); "
            "delete it (a new password will be generated and applied)"
        )
    return text


def create_password_file(path: Path) -> str:
    """Created with link() so processes racing on a fresh cache dir all adopt one password. It has
    URL-special characters on purpose: every user then exercises the escaping path, so a
    string-formatted URL anywhere in the project fails in our own tests, not in a user's."""
    chars = list(secrets.token_urlsafe(18))
    for special in "@:/%#?":
        chars.insert(secrets.randbelow(len(chars) + 1), special)
    try:
        scratch = write_private(path, "".join(chars))
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
        scratch.unlink()
    except OSError as exc:  # a read-only or full file system, say
        raise EmbeddedServerError(
            f"cannot write the embedded server's password file in {path.parent} "
            f"({exc.strerror}); point TESTDB_CACHE_DIR at a writable directory"
        ) from None
    return read_password_file(path)


def save_password_file(path: Path, password: str) -> None:
    """Keep the file in step with an explicit password."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text(encoding="utf-8") == password:
            return
    os.replace(write_private(path, password), path)


def scram_verifier(password: str, user: str) -> str:
    """So the plain password never reaches a child process or a log. libpq computes it; its
    PGconn is one whose conninfo libpq refuses: no server runs yet, so never connected."""
    conn = pq.PGconn.connect_start(b"finreport_testdb_unconnected=1")
    try:
        verifier = conn.encrypt_password(
            password.encode("utf-8"), user.encode("utf-8"), b"scram-sha-256"
        )
    except psycopg.Error as exc:
        raise EmbeddedServerError(
            f"libpq could not compute the SCRAM verifier ({type(exc).__name__}); install "
            "psycopg with libpq 10 or newer (pip install 'psycopg[binary]')"
        ) from None
    finally:
        conn.finish()
    return verifier.decode("ascii")
