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
from _pytest._code.code import (
    ExceptionChainRepr,
    ExceptionRepr,
    ReprEntry,
    ReprFileLocation,
    ReprTraceback,
)
from _pytest._io.saferepr import DEFAULT_REPR_MAX_SIZE, saferepr
from _pytest.reports import BaseReport, CollectErrorRepr
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
    if isinstance(longrepr, ExceptionRepr):
        chain = (
            longrepr.chain
            if isinstance(longrepr, ExceptionChainRepr)
            else [(longrepr.reprtraceback, longrepr.reprcrash, None)]
        )
        for traceback, crash, _ in chain:
            _redact_traceback(traceback, redact)
            _redact_location(crash, redact)
        longrepr.sections = [(name, redact(text), sep) for name, text, sep in longrepr.sections]
        return longrepr
    if isinstance(longrepr, str):
        return redact(longrepr)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        path, lineno, reason = longrepr
        return (path, lineno, redact(reason))
    if isinstance(longrepr, CollectErrorRepr):
        longrepr.longrepr = redact(longrepr.longrepr)
        return longrepr
    text = str(longrepr)  # another TerminalRepr (a fixture lookup error): its text if need be
    masked = redact(text)
    return longrepr if masked == text else masked


def _redact_traceback(traceback: ReprTraceback, redact: Redact) -> None:
    if traceback.extraline:
        traceback.extraline = redact(traceback.extraline)
    for entry in traceback.reprentries:
        entry.lines = [redact(line) for line in entry.lines]
        if not isinstance(entry, ReprEntry):
            continue  # a native traceback: its lines are all of it
        if entry.reprfuncargs is not None:
            entry.reprfuncargs.args = [
                (name, redact(value) if isinstance(value, str) else value)
                for name, value in entry.reprfuncargs.args
            ]
        if entry.reprlocals is not None:
            entry.reprlocals.lines = [redact(line) for line in entry.reprlocals.lines]
        _redact_location(entry.reprfileloc, redact)


def _redact_location(location: ReprFileLocation | None, redact: Redact) -> None:
    if location is not None:
        location.message = redact(location.message)


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
