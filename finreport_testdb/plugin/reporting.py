"""What a run shows: the header, the summary (with what the workers ship to the controller), and
every report with its passwords masked: in place (`redact_report`), and failed comparisons
(`pytest_assertrepr_compare`). The text rule is `urls.redact_secrets`: any URL's password, and the
passwords this run knows (`known_secrets`) in every encoding.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Generator
from typing import Any

import pytest
from _pytest._code.code import TerminalRepr
from _pytest._io.saferepr import DEFAULT_REPR_MAX_SIZE, saferepr
from _pytest.reports import BaseReport
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..core.settings import SOURCE_DEFAULT
from ..core.urls import SecretUrl, redact_secrets, render_for_humans, secret_values
from ..errors import FinreportTestdbError
from .state import (
    FRESH_DATABASES,
    FRESH_KEPT_PROPERTY,
    PHASE_REPORTS,
    REPORT_OUTPUT,
    SERVER_URLS_KEY,
    RunState,
    run_state,
    settings_from_config,
    worker_id,
)


def pytest_report_header(config: pytest.Config) -> list[str]:
    report = run_state(config)
    t = report.template
    if t is None:
        return []
    waited = (
        f", {t.waited_seconds:.2f} s waiting for another build" if t.waited_seconds >= 0.1 else ""
    )
    lines = [
        f"testdb: template {t.name} (fingerprint {t.fingerprint[:12]}) {t.describe()} in "
        f"{t.seconds:.2f} s{waited} on {report.server}",
        *(f"testdb: {note}" for note in t.notes),
    ]
    if report.embedded_action not in (None, "running"):
        lines.append(
            "testdb: started the embedded PostgreSQL server for this run; it keeps running for "
            "the next one: stop it with `testdb server stop`"
        )
    isolation = str(config.getini("testdb_isolation")).strip()
    lines.append(
        f"testdb: default isolation {isolation} (testdb_isolation ini option; per test: "
        '@pytest.mark.testdb(isolation="rollback" or "fresh"))'
    )
    settings = settings_from_config(config)
    source = settings.sources.get("export_url_as", "")
    if settings.opted_in and not settings.export_url_as:
        lines.append(
            f"testdb: exporting the test database URL to no variable (export_url_as = [] from "
            f"{source})"
        )
    elif settings.opted_in:
        names = ", ".join(settings.export_url_as)
        default = " (the default; export_url_as = [] turns it off)" * (source == SOURCE_DEFAULT)
        lines.append(f"testdb: exporting the test database URL as {names}{default}")
    return lines


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker ships what it learned to the controller (after the session fixtures'
    teardown, which says what became of its database)."""
    if worker_id(session.config):
        report = run_state(session.config)
        shipped = {name: getattr(report, name) for name in RunState.SHIPPED}
        session.config.workeroutput[REPORT_OUTPUT] = shipped  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: add up what each worker shipped."""
    shipped = getattr(node, "workeroutput", {}).get(REPORT_OUTPUT)
    if shipped:
        report = run_state(node.config)
        report.workers.update(shipped["workers"])
        report.embedded_by_fixture |= shipped["embedded_by_fixture"]
        report.undone_ms += shipped["undone_ms"]
        report.replaced += shipped["replaced"]


DISPOSITIONS = {
    "dropped": "dropped at session end",
    "kept": "kept after the run (--testdb-keep)",
    "reused": "kept for the next run (--testdb-reuse)",
}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    write = terminalreporter.write_line
    report = run_state(config)
    if report.embedded_by_fixture:
        write(
            "testdb: started the embedded PostgreSQL server (no URL configured); it keeps running "
            "for the next run: stop it with `testdb server stop`"
        )
    if report.workers:
        clones = sorted(report.workers.items(), key=lambda item: _worker_order(item[0]))
        parts = [
            f"{w} {'reused' if r['reused'] else 'cloned'} {r['name']} in "
            f"{r['seconds'] * 1000:.0f} ms"
            for w, r in clones
        ]
        # The intended disposition of those that went as planned, one line per other outcome.
        planned = sorted({r["disposition"] for _, r in clones if not r.get("problem")})
        write(f"testdb: {', '.join(parts)}{''.join(f'; {DISPOSITIONS[d]}' for d in planned)}")
        failed: dict[str, list[str]] = {}
        for _, r in clones:
            if r.get("problem"):
                failed.setdefault(r["problem"], []).append(r["name"])
        for problem, names in failed.items():
            them = "it" if len(names) == 1 else "them"
            write(
                f"testdb: {', '.join(names)} {problem}; run `testdb clean` to remove {them} later"
            )
    if report.undone_ms:
        ordered = sorted(report.undone_ms)
        how = f"; {report.replaced} by a new clone (DDL or database settings)"
        write(
            f"testdb: undid what {len(ordered)} test(s) committed: median "
            f"{ordered[len(ordered) // 2]:.1f} ms, max {ordered[-1]:.1f} ms"
            f"{how if report.replaced else ''}"
        )
    # The fresh databases kept, from the teardown reports (xdist ships their user_properties).
    kept = {
        str(value): None
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown"
        for key, value in getattr(report, "user_properties", ())
        if key == FRESH_KEPT_PROPERTY
    }
    if kept:
        write(
            f"testdb: kept {len(kept)} fresh database(s) of failed tests for inspection: "
            f"{', '.join(kept)} (remove with `testdb clean`)"
        )


def _worker_order(worker: str) -> tuple[int, str]:
    """gw2 before gw10; `master` (a serial run) first."""
    digits = worker[2:] if worker.startswith("gw") else ""
    return (int(digits) if digits.isdigit() else -1, worker)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Every test phase's report, remembered on the item (for `fresh_database`), a failure's
    with the kept fresh database's URL, and with its passwords masked: the outermost wrapper, so
    nothing sees it before (the terminal, JUnit XML, an xdist worker's serialisation)."""
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    if report.when in ("setup", "call") and report.failed:
        for database in item.stash.get(FRESH_DATABASES, []):
            kept = f"fresh database kept for inspection: {render_for_humans(database.url)}"
            report.sections.append(("testdb", kept))
    redact_report(item.config, report)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Collection reports (an import error, what a module printed) masked as test reports are."""
    report = yield
    redact_report(collector.config, report)
    return report


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
    redact = functools.partial(redact_secrets, secrets=known_secrets(config))
    report.sections = [(title, redact(content)) for title, content in report.sections]
    if properties:
        report.user_properties = [  # type: ignore[attr-defined]
            (name, redact(str(value)) if isinstance(value, str) else value)
            for name, value in properties
        ]
    wasxfail = getattr(report, "wasxfail", None)
    if isinstance(wasxfail, str):
        report.wasxfail = redact(wasxfail)  # type: ignore[attr-defined]
    report.longrepr = _redacted_longrepr(report.longrepr, functools.partial(redact, shortened=True))


def _redacted_longrepr(longrepr: Any, redact: Callable[[str], str]) -> Any:
    """`longrepr` (a string, a skip's tuple, a `TerminalRepr` changed in place, all but its
    `style`) with its text masked."""
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


@pytest.hookimpl(tryfirst=True)
def pytest_assertrepr_compare(
    config: pytest.Config, op: str, left: Any, right: Any
) -> list[str] | None:
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
