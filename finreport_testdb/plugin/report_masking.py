"""Database passwords kept out of pytest's reports: every report in place (`redact_report`), and
failed comparisons (`masked_comparison`). The text rule is `urls.redact_secrets`: any URL's
password, and the passwords this run knows (`known_secrets`) in every encoding.
"""

from __future__ import annotations

import contextlib
import functools
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
    """The passwords this process knows: the configured URL's, the exported variables' and those
    of the servers the fixtures connected to (the embedded server's generated password)."""
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
    """Mask the passwords in everything `report` shows (sections, `record_property` values, an
    xfail reason, the long representation), in place: its colors and serialisation stay."""
    properties = getattr(report, "user_properties", None)
    if report.passed and not report.sections and not properties:
        return
    secrets = known_secrets(config)
    redact = functools.partial(redact_secrets, secrets=secrets)
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
        report.longrepr = _redacted_longrepr(
            report.longrepr, functools.partial(redact, shortened=True)
        )


def _redacted_longrepr(longrepr: Any, redact: Redact) -> Any:
    """A report's representation with its text masked: a string, a skip's (path, line, reason),
    pytest's `TerminalRepr` objects in place (all but `style`), anything else by its masked text
    if need be."""
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
    """`value`'s repr with the passwords masked, and whether it showed one (or is a `SecretUrl`);
    masked before shortening, so no part of a password survives the cut."""
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
    """A failed comparison that shows a password shows both operands masked and no diff (which
    would print the password piece by piece, where no rule recognises it)."""
    secrets = known_secrets(config)
    for operand in (left, right):
        if isinstance(operand, SecretUrl):
            with contextlib.suppress(ArgumentError, ValueError):
                secrets += secret_values(make_url(str(operand)))
    (left_repr, left_secret), (right_repr, right_secret) = [
        _masked_repr(operand, secrets) for operand in (left, right)
    ]
    if left_secret or right_secret:
        return [
            f"{left_repr} {op} {right_repr}",
            "(testdb: a database URL is involved; no diff is shown, to keep its password out)",
        ]
    return None
