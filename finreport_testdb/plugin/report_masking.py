"""Database passwords kept out of pytest's reports.

`redact_report` masks a report in place before anything sees it (the terminal, JUnit XML, and in
an xdist worker the serialisation that ships it to the controller): its long representation (every
traceback entry's lines, arguments, `-l` locals and location message, the crash message, every
exception of a chain, a plain string or a skip reason), its sections (captured stdout, stderr and
log), an xfail reason and `record_property` values. The text rule is `urls.redact_secrets`: any
URL's password, and the passwords this run knows (`known_secrets`) in every encoding, as whole
tokens. The plugin's report hooks call it for every test phase and every collection report.

`masked_comparison` serves `pytest_assertrepr_compare`: a failed comparison that shows a password
gets both operands' reprs masked and no diff (a diff, or pytest's "Skipping N identical leading
characters", would print the password piece by piece, where no rule recognises it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from _pytest._code.code import TerminalRepr
from _pytest._io.saferepr import DEFAULT_REPR_MAX_SIZE, saferepr
from _pytest.reports import BaseReport
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..core.urls import SecretUrl, redact_secrets, secret_values
from ..errors import FinreportTestdbError
from .state import SERVER_URLS_KEY, settings_from_config

Redact = Callable[[str], str]


def known_secrets(config: pytest.Config) -> list[str]:
    """The passwords this process knows: the configured URL's, the exported variables' (the URL
    the app reads) and those of the servers the fixtures connected to (the embedded server's
    generated password)."""
    urls = [*config.stash.get(SERVER_URLS_KEY, [])]
    with contextlib.suppress(FinreportTestdbError):
        settings = settings_from_config(config)
        if settings.url is not None:
            urls.append(settings.url)
        for name in settings.export_url_as:
            with contextlib.suppress(ArgumentError, ValueError):
                urls.append(make_url(os.environ.get(name, "")))
    return [secret for url in urls for secret in secret_values(url)]


def redact_report(config: pytest.Config, report: BaseReport) -> None:
    """Mask the passwords in everything `report` shows, in place (its structure, and so its
    colors and its serialisation, stay). A passed report without sections or properties, the
    common case, costs one check."""
    properties = getattr(report, "user_properties", None)
    if report.passed and not report.sections and not properties:
        return
    secrets = known_secrets(config)

    def redact(text: str) -> str:
        return redact_secrets(text, secrets)

    def redact_repr(text: str) -> str:
        return redact_secrets(text, secrets, shortened=True)

    report.sections = [(title, redact(content)) for title, content in report.sections]
    if properties:
        report.user_properties = [  # type: ignore[attr-defined]
            (name, redact(str(value)) if isinstance(value, str) else value)
            for name, value in properties
        ]
    wasxfail = getattr(report, "wasxfail", None)
    if isinstance(wasxfail, str):
        report.wasxfail = redact(wasxfail)  # type: ignore[attr-defined]
    if report.longrepr is not None:
        report.longrepr = _redacted_longrepr(report.longrepr, redact_repr)


def _redacted_longrepr(longrepr: Any, redact: Redact) -> Any:
    """A report's representation with its text masked: a string, a skip's (path, line, reason),
    and pytest's `TerminalRepr` objects in place (every traceback entry, its arguments, `-l`
    locals and location, the crash, each exception of a chain, a fixture lookup error), except
    how they are drawn (`style`). Anything else is replaced by its masked text if need be."""
    if isinstance(longrepr, str):
        return redact(longrepr)
    if isinstance(longrepr, (list, tuple)):
        return type(longrepr)(_redacted_longrepr(part, redact) for part in longrepr)
    if isinstance(longrepr, TerminalRepr):
        for name, part in vars(longrepr).items():
            if name != "style" and isinstance(part, (str, list, tuple, TerminalRepr)):
                setattr(longrepr, name, _redacted_longrepr(part, redact))
        return longrepr
    if longrepr is None or isinstance(longrepr, (int, float)):
        return longrepr
    text = str(longrepr)
    masked = redact(text)
    return longrepr if masked == text else masked


def _masked_repr(value: Any, secrets: list[str]) -> tuple[str, bool]:
    """`value`'s repr with the passwords masked, and whether it showed one (or is a
    `SecretUrl`). A string is masked before `saferepr` shortens it, so no part of a password
    survives the cut."""
    if isinstance(value, str) and not isinstance(value, SecretUrl):
        masked = redact_secrets(value, secrets)
        return saferepr(masked), masked != value
    full = saferepr(value, maxsize=None)
    masked = redact_secrets(full, secrets)
    if len(masked) > DEFAULT_REPR_MAX_SIZE:
        half = (DEFAULT_REPR_MAX_SIZE - 3) // 2
        masked = f"{masked[:half]}...{masked[-half:]}"
    return masked, isinstance(value, SecretUrl) or masked != full


def masked_comparison(config: pytest.Config, op: str, left: Any, right: Any) -> list[str] | None:
    """A failed comparison that shows a password (a `SecretUrl`, any URL with one, or a known
    password: the exported DATABASE_URL, a dict with it) shows both operands' reprs with the
    password masked, and no text diff."""
    secrets = known_secrets(config)
    for operand in (left, right):
        if isinstance(operand, SecretUrl):
            with contextlib.suppress(ArgumentError, ValueError):
                secrets += secret_values(make_url(str(operand)))
    (left_repr, left_secret), (right_repr, right_secret) = (
        _masked_repr(left, secrets),
        _masked_repr(right, secrets),
    )
    if left_secret or right_secret:
        return [
            f"{left_repr} {op} {right_repr}",
            "(testdb: a database URL is involved; no diff is shown, to keep its password out)",
        ]
    return None
