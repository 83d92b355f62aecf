"""names.py: template/scratch/worker/serial/per-test names, 63-byte shortening, name validation."""

from __future__ import annotations

import pytest

from finreport_testdb.core.names import (
    MAX_IDENTIFIER_BYTES,
    Naming,
    fit_identifier,
    validate_base_name,
    validate_namespace,
    validate_worker_id,
)
from finreport_testdb.errors import ConfigError, UnsafeDatabaseName

FP = "0123456789abcdef" * 4


def nbytes(name: str) -> int:
    return len(name.encode())


# -- the names ------------------------------------------------------------------------------------


def test_template_name_is_base_tpl_fingerprint12() -> None:
    assert Naming("app_test").template(FP) == "app_test_tpl_0123456789ab"


def test_template_name_is_shared_by_namespaces() -> None:
    """Templates are content-addressed: CI shards with different namespaces reuse one template."""
    assert Naming("app_test", "ci1").template(FP) == Naming("app_test").template(FP)


def test_scratch_name_is_base_bld_fingerprint12() -> None:
    assert Naming("app_test", "ns").scratch(FP) == "app_test_bld_0123456789ab"


def test_worker_name_without_namespace() -> None:
    assert Naming("app_test").worker("gw3") == "app_test_gw3"


def test_worker_name_with_namespace() -> None:
    assert Naming("app_test", "ci_1").worker("gw12") == "app_test_ci_1_gw12"


def test_serial_run_gets_its_own_name_never_the_base() -> None:
    assert Naming("app_test").worker("master") == "app_test_serial"
    assert Naming("app_test", "ns").worker("master") == "app_test_ns_serial"


def test_per_test_name() -> None:
    assert Naming("app_test", "ns").per_test("gw0", 4) == "app_test_ns_gw0_t4"


@pytest.mark.parametrize("worker", ["gw", "w1", "gw1;", "gw1\n", "", "GW1", "master2"])
def test_bad_worker_id_is_rejected(worker: str) -> None:
    with pytest.raises(UnsafeDatabaseName, match="worker id"):
        Naming("app_test").worker(worker)


def test_validate_worker_id_accepts_gw_and_master() -> None:
    assert validate_worker_id("gw0") == "gw0"
    assert validate_worker_id("master") == "master"


# -- 63-byte shortening ---------------------------------------------------------------------------


LONG = "finance_report_integration_test_database_for_the_ledger_module"  # 62 bytes


def test_short_names_are_not_touched() -> None:
    assert fit_identifier("app_test", "_gw1") == "app_test_gw1"


@pytest.mark.parametrize(
    ("make", "suffix"),
    [
        (lambda n: n.worker("gw12"), "_gw12"),
        (lambda n: n.per_test("gw3", 17), "_gw3_t17"),
        (lambda n: n.template(FP), "_tpl_0123456789ab"),
        (lambda n: n.scratch(FP), "_bld_0123456789ab"),
    ],
    ids=["worker", "per-test", "template", "scratch"],
)
def test_long_names_fit_63_bytes_and_keep_suffix(make, suffix: str) -> None:  # type: ignore[no-untyped-def]
    name = make(Naming(LONG, "ci_shard_7"))
    assert nbytes(name) <= MAX_IDENTIFIER_BYTES
    assert name.endswith(suffix)
    assert name.startswith(LONG[:20])


def test_shortening_is_stable() -> None:
    assert Naming(LONG).worker("gw5") == Naming(LONG).worker("gw5")


def test_serial_name_of_long_stem_is_shortened() -> None:
    name = Naming(LONG, "namespace_that_is_long").worker("master")
    assert nbytes(name) <= MAX_IDENTIFIER_BYTES
    assert name.startswith(LONG[:20])
    assert name.endswith("_serial")


def test_long_bases_differing_only_at_the_end_get_different_names() -> None:
    a, b = LONG[:-1] + "a", LONG[:-1] + "b"
    assert Naming(a).worker("gw0") != Naming(b).worker("gw0")
    assert Naming(a).template(FP) != Naming(b).template(FP)
    assert Naming(a, "ns").per_test("gw0", 1) != Naming(b, "ns").per_test("gw0", 1)


def test_long_names_of_different_workers_differ() -> None:
    names = {Naming(LONG, "ns").worker(f"gw{i}") for i in range(12)}
    assert len(names) == 12


@pytest.mark.parametrize("char", ["ä", "中", "\U0001d538", "ß"])
def test_multibyte_base_is_not_split_mid_character(char: str) -> None:
    base = char * 40  # 80 to 160 bytes
    name = Naming(base).worker("gw1")
    assert nbytes(name) <= MAX_IDENTIFIER_BYTES
    assert name.endswith("_gw1")
    assert "\ufffd" not in name
    prefix = name.split("_")[0]
    assert prefix and set(prefix) == {char}  # only whole characters survive
    name.encode("utf-8").decode("utf-8")  # valid UTF-8 through and through


def test_multibyte_base_with_odd_byte_boundary() -> None:
    base = "x" + "é" * 40  # the 63-byte cut falls in the middle of an 'é'
    for i in range(4):
        name = fit_identifier(base, f"_gw{i}" * (i + 1))
        assert nbytes(name) <= MAX_IDENTIFIER_BYTES
        assert "\ufffd" not in name


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ['"', "'", ";", " ", "/", "\\", "\n", "\t", ".", "$"])
def test_base_name_with_unsafe_character_is_rejected_naming_it(char: str) -> None:
    with pytest.raises(UnsafeDatabaseName) as info:
        validate_base_name(f"app{char}test")
    assert repr(char) in str(info.value)
    assert "use only letters, digits" in str(info.value)


def test_unsafe_base_name_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        validate_base_name("app;drop")


def test_base_name_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(UnsafeDatabaseName, match=r"'\\n'"):
        validate_base_name("app_test\n")


def test_base_name_with_leading_dash_says_how_to_start() -> None:
    with pytest.raises(UnsafeDatabaseName, match="starts with '-'"):
        validate_base_name("-app")


def test_empty_base_name_is_rejected_clearly() -> None:
    with pytest.raises(UnsafeDatabaseName, match="is empty"):
        validate_base_name("")


@pytest.mark.parametrize("name", ["postgres", "template0", "template1"])
def test_system_database_as_base_is_rejected(name: str) -> None:
    with pytest.raises(UnsafeDatabaseName, match="system database"):
        validate_base_name(name)


def test_error_message_names_the_source() -> None:
    with pytest.raises(UnsafeDatabaseName, match=r"^the database name in --url 'a;b'"):
        validate_base_name("a;b", source="the database name in --url")


@pytest.mark.parametrize(
    "name", ["app_test", "App-Test-2", "finanzbericht_prüfung", "_x", "9lives"]
)
def test_good_base_names_are_accepted(name: str) -> None:
    assert validate_base_name(name) == name


@pytest.mark.parametrize("ns", ["a/b", "has space", "x" * 31, "ns\n", "ü", "a-b"])
def test_bad_namespace_is_rejected(ns: str) -> None:
    with pytest.raises(UnsafeDatabaseName, match="not allowed"):
        validate_namespace(ns)


def test_naming_validates_its_inputs() -> None:
    with pytest.raises(UnsafeDatabaseName):
        Naming("app;test")
    with pytest.raises(UnsafeDatabaseName):
        Naming("app_test", "a/b")
