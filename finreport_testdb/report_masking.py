"""Database passwords kept out of pytest's assertion reports.

pytest shows a failed comparison's operands and a diff of them. When one side is a `SecretUrl` (the
URL fixtures), or any value holding a known password (the exported DATABASE_URL, a dict with it),
`masked_comparison` returns both reprs with the password masked in every encoding and no diff (a
diff would print the password piece by piece). The plugin's `pytest_assertrepr_compare` hook calls
it; everything else pytest prints is left as pytest prints it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from _pytest._io.saferepr import DEFAULT_REPR_MAX_SIZE, saferepr
from sqlalchemy.engine import URL, make_url

from .errors import FinreportTestdbError
from .plugin_state import settings_from_config
from .urls import SECRET_OPTIONS, SecretUrl, redact, render_for_driver


def _password_urls(config: pytest.Config, operands: tuple[Any, ...]) -> list[URL]:
    """The URLs whose passwords a comparison may show: the `SecretUrl` operands', the configured
    URL's and the exported variables' (plain strings holding the password, e.g. DATABASE_URL)."""
    texts = [str(operand) for operand in operands if isinstance(operand, SecretUrl)]
    with contextlib.suppress(FinreportTestdbError):
        settings = settings_from_config(config)
        if settings.url is not None:
            texts.append(render_for_driver(settings.url))
        texts += [os.environ.get(name, "") for name in settings.export_url_as]
    urls = []
    for text in filter(None, texts):
        with contextlib.suppress(Exception):
            urls.append(make_url(text))
    return [url for url in urls if url.password or any(url.query.get(k) for k in SECRET_OPTIONS)]


def _mask(text: str, urls: list[URL]) -> str:
    """`text` without the URLs' passwords: every encoding `redact` knows, and the raw password as
    `repr` escapes it inside a quoted string (a quote or backslash in it)."""
    for url in urls:
        text = redact(text, url)
        if url.password:
            secret = str(url.password)
            for form in (repr(secret)[1:-1], repr(secret + "'\"")[1:-4]):
                if form:
                    text = text.replace(form, "***")
    return text


def _masked_repr(value: Any, urls: list[URL]) -> tuple[str, bool]:
    """`value`'s repr with the passwords masked, and whether it showed a URL with one (or is a
    `SecretUrl`). A string is masked before `saferepr` shortens it, so no part of a password
    survives the cut."""
    if isinstance(value, str) and not isinstance(value, SecretUrl):
        masked = _mask(value, urls)
        return saferepr(masked), masked != value and _holds_url(value)
    full = saferepr(value, maxsize=None)
    masked = _mask(full, urls)
    if len(masked) > DEFAULT_REPR_MAX_SIZE:
        half = (DEFAULT_REPR_MAX_SIZE - 3) // 2
        masked = f"{masked[:half]}...{masked[-half:]}"
    return masked, isinstance(value, SecretUrl) or (masked != full and _holds_url(full))


def _holds_url(text: str) -> bool:
    """A URL or connection string, where a password found is one (a short password such as
    `postgres` also occurs in ordinary strings, whose diff must stay)."""
    return "://" in text or "password" in text.lower()


def masked_comparison(config: pytest.Config, op: str, left: Any, right: Any) -> list[str] | None:
    """A failed comparison that involves a database URL (a `SecretUrl`, or any operand holding a
    known password: the exported DATABASE_URL, a dict with it) shows both operands' reprs with
    the password masked, and no text diff (a diff would print the password)."""
    urls = _password_urls(config, (left, right))
    (left_repr, left_secret), (right_repr, right_secret) = (
        _masked_repr(left, urls),
        _masked_repr(right, urls),
    )
    if left_secret or right_secret:
        return [
            f"{left_repr} {op} {right_repr}",
            "(testdb: a database URL is involved; no diff is shown, to keep its password out)",
        ]
    return None
