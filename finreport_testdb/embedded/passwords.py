"""The superuser secret: generating it, and turning it into what the server stores."""

from __future__ import annotations

import secrets

import psycopg
from psycopg import pq

from ..errors import EmbeddedServerError

_PASSWORD_SPECIALS = "@:/%#?"


def _generate_password() -> str:
    """URL-special characters on purpose: every user then exercises the escaping path, so a
    string-formatted URL anywhere in the project fails in our own tests, not in a user's."""
    chars = list(secrets.token_urlsafe(18))
    for special in _PASSWORD_SPECIALS:
        chars.insert(secrets.randbelow(len(chars) + 1), special)
    return "".join(chars)


def scram_verifier(password: str, user: str) -> str:
    """A SCRAM-SHA-256 verifier, so the plain password never reaches a child process, the
    server's statement log or an error echo; PostgreSQL stores such a string as-is.

    libpq computes it (SASLprep included, exactly as the server applies it) with
    PQencryptPasswordConn, which needs a PGconn only for its settings and error messages when
    the algorithm is given. No server exists yet when this runs (the password is set in
    single-user mode), so the PGconn is one whose conninfo libpq refuses to parse: it is never
    connected, and no socket is opened.
    """
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
