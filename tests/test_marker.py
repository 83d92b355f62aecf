"""marker.py: the JSON ownership marker, and `owned_marker`'s refusal of forged or copied markers."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

import pytest

from finreport_testdb.core.marker import (
    ROLE_SCRATCH,
    ROLE_TEMPLATE,
    ROLE_TEST,
    ROLE_WORKER,
    TOOL,
    Marker,
    owned_marker,
    utc_now,
)
from finreport_testdb.core.names import Naming

FP = "ab" * 32
BASE = "app_test"


def worker_marker(**changes: Any) -> Marker:
    marker = Marker(
        role=ROLE_WORKER,
        base=BASE,
        namespace="ns",
        fingerprint=FP,
        created_at=utc_now(),
        worker="gw2",
    )
    return replace(marker, **changes)


def comment(**fields: Any) -> str:
    data = asdict(worker_marker())
    data.update(fields)
    return json.dumps(data)


def test_marker_round_trips_through_comment() -> None:
    marker = worker_marker()
    assert Marker.parse(marker.to_comment()) == marker


def test_marker_comment_is_json_naming_the_tool() -> None:
    data = json.loads(worker_marker().to_comment())
    assert data["tool"] == TOOL
    assert {"role", "fingerprint", "namespace", "created_at", "base"} <= set(data)


def test_promoted_scratch_marker_is_a_ready_template_of_the_same_fingerprint() -> None:
    scratch = worker_marker(role=ROLE_SCRATCH, worker=None)
    promoted = scratch.promoted_to_template()
    assert (promoted.role, promoted.ready) == (ROLE_TEMPLATE, True)
    assert (
        replace(promoted, role=ROLE_SCRATCH, ready=False, created_at=scratch.created_at) == scratch
    )


def test_created_datetime_parses_utc_now() -> None:
    created = worker_marker().created_datetime()
    assert created is not None and created.tzinfo is not None
    assert worker_marker(created_at="yesterday").created_datetime() is None


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "made by hand",
        "[1, 2]",
        json.dumps({"tool": "other-tool", "role": "worker"}),
        comment(tool="finreport-testdb-fork"),
        comment(role="owner"),
        comment(unexpected="field"),
        comment(base=7),
        comment(fingerprint=None),
    ],
    ids=[
        "none",
        "empty",
        "text",
        "list",
        "other-tool",
        "tool-lookalike",
        "bad-role",
        "extra-key",
        "int-base",
        "null-fingerprint",
    ],
)
def test_parse_rejects_anything_not_exactly_ours(text: str | None) -> None:
    assert Marker.parse(text) is None


def test_parse_rejects_missing_field() -> None:
    data = asdict(worker_marker())
    del data["fingerprint"]
    assert Marker.parse(json.dumps(data)) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"worker": 2},
        {"worker": ["gw2"]},
        {"index": "1", "role": ROLE_TEST},
        {"index": True, "role": ROLE_TEST},
        {"ready": "yes"},
    ],
    ids=["int-worker", "list-worker", "str-index", "bool-index", "str-ready"],
)
def test_forged_marker_with_wrong_types_is_rejected_not_crashing(fields: dict[str, Any]) -> None:
    name = Naming(BASE, "ns").worker("gw2")
    assert owned_marker(name, comment(**fields), BASE) is None


# -- owned_marker ---------------------------------------------------------------------------------


def test_owned_marker_accepts_worker_on_its_own_name() -> None:
    marker = worker_marker()
    assert owned_marker("app_test_ns_gw2", marker.to_comment(), BASE) == marker


def test_owned_marker_accepts_per_test_template_and_scratch() -> None:
    naming = Naming(BASE, "ns")
    cases = [
        (naming.per_test("gw1", 3), worker_marker(role=ROLE_TEST, worker="gw1", index=3)),
        (naming.template(FP), worker_marker(role=ROLE_TEMPLATE, worker=None, namespace="")),
        (naming.scratch(FP), worker_marker(role=ROLE_SCRATCH, worker=None, namespace="")),
    ]
    for name, marker in cases:
        assert owned_marker(name, marker.to_comment(), BASE) == marker


def test_owned_marker_rejects_marker_naming_another_base() -> None:
    """The other base's marker on a database of ours: not ours to drop."""
    other = worker_marker(base="other_test")
    assert owned_marker("app_test_ns_gw2", other.to_comment(), BASE) is None


def test_owned_marker_rejects_other_base_even_on_its_matching_name() -> None:
    other = worker_marker(base="other_test")
    assert owned_marker("other_test_ns_gw2", other.to_comment(), BASE) is None


def test_owned_marker_rejects_correct_marker_copied_to_another_name() -> None:
    copied = worker_marker().to_comment()  # belongs to app_test_ns_gw2
    for name in (
        "app_test_ns_gw7",
        "app_test_gw2",
        "app_test_ns_gw2_t0",
        "app_test_prod",
        "app_test",
    ):
        assert owned_marker(name, copied, BASE) is None


def test_owned_marker_rejects_template_marker_on_a_worker_name() -> None:
    template = worker_marker(role=ROLE_TEMPLATE, worker=None, namespace="", ready=True)
    assert owned_marker("app_test_ns_gw2", template.to_comment(), BASE) is None


@pytest.mark.parametrize(
    "marker",
    [
        worker_marker(worker=None),  # a worker marker without a worker
        worker_marker(role=ROLE_TEST, index=None),  # a per-test marker without index
        worker_marker(namespace="a/b"),  # a namespace we would never write
        worker_marker(worker="gw2; DROP"),  # a worker id we would never write
        worker_marker(base="app;test"),
    ],
    ids=["worker-none", "index-none", "bad-namespace", "bad-worker", "bad-base"],
)
def test_incoherent_markers_have_no_expected_name(marker: Marker) -> None:
    assert marker.expected_name() is None
    assert owned_marker("app_test_ns_gw2", marker.to_comment(), BASE) is None


def test_owned_marker_rejects_no_comment() -> None:
    assert owned_marker("app_test_ns_gw2", None, BASE) is None


def test_huge_or_deeply_nested_comment_is_not_a_marker() -> None:
    """Any database's comment is parsed by status/clean: it must never raise."""
    assert Marker.parse("[" * 50000 + "]" * 50000) is None
    assert Marker.parse("[" * 2000 + "]" * 2000) is None  # under the size bound: RecursionError
    assert Marker.parse("{" + " " * 5000 + "}") is None


def test_created_at_without_zone_is_taken_as_utc() -> None:
    from datetime import datetime, timezone

    marker = Marker("worker", "app_test", "", "f" * 64, "2024-01-01T00:00:00", worker="gw0")
    assert marker.created_datetime() == datetime(2024, 1, 1, tzinfo=timezone.utc)
