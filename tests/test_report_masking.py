"""Failure reports never show a password: whatever pytest prints or writes about a test (the
assertion explanation, `-l` locals, the app's own exception messages, captured output, skip reasons,
collection errors), on the terminal, in JUnit XML and in what an xdist worker sends its controller.

Each inner session holds every leak at once; the outer test searches its output, its JUnit file and
the reports the workers serialised.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from urllib.parse import quote

import pytest
from conftest import SCRAM_CACHE, SPECIAL_PASSWORD
from sqlalchemy.engine import URL
from test_password_masking import secret_forms
from test_plugin import (  # noqa: F401  (make_project is a fixture)
    INNER_CONFTEST,
    Project,
    make_project,
)

#: The inner conftest, plus what an xdist worker sends its controller, kept for the outer test.
SERIALISING_CONFTEST = (
    INNER_CONFTEST
    + """

    def _keep_serialised(report):
        if os.environ.get("PYTEST_XDIST_WORKER"):
            kept = Path(os.environ["TESTDB_TEST_SERIALISED"]) / f"{os.getpid()}.jsonl"
            with kept.open("a") as out:
                out.write(json.dumps(report._to_json(), default=str) + "\\n")


    def pytest_runtest_logreport(report):
        _keep_serialised(report)


    def pytest_collectreport(report):
        _keep_serialised(report)
"""
)

#: Every way a test's report can show the database URL or its password.
LEAKY_TESTS = '''
    import logging
    import os
    import sys

    import pytest
    from sqlalchemy.engine import make_url


    def app_connect(url):
        """The app's own code: its error message formats the URL it was given, and so does the
        error it chains from."""
        try:
            raise ConnectionRefusedError(f"refused by {url}")
        except ConnectionRefusedError as exc:
            raise RuntimeError(f"cannot reach {url}") from exc


    def cut_in_the_password(url):
        """`url` padded so that saferepr (118 characters before its `...`) cuts the repr five
        characters into the password."""
        start = url.index(":", url.index("://") + 3) + 1
        return "x" * (118 - 1 - start - 5) + url + "y" * 300


    def test_assertion_on_the_exported_url():
        url = os.environ["DATABASE_URL"]
        assert url.endswith("x")


    def test_comparison_with_the_exported_url():
        assert os.environ["DATABASE_URL"] == "postgresql://nobody@nowhere/none"


    def test_locals(test_database_url):
        extended = test_database_url + "?connect_timeout=5"
        shortened = cut_in_the_password(extended)
        dialect = "postgresql"
        pytest.fail("see the locals")


    def test_password_in_a_message(test_database_url, monkeypatch):
        monkeypatch.delenv("DATABASE_URL")  # only the server's password is known now
        password = make_url(test_database_url).password
        raise RuntimeError(f"login failed with password={password!r}")


    def test_app_error(test_database_url):
        app_connect(f"{test_database_url}")


    def test_app_error_with_a_hand_built_url(test_database):
        u = test_database.url
        raise RuntimeError(
            f"cannot log in to postgresql://{u.username}:{u.password}@{u.host}:{u.port}/{u.database}"
        )


    def test_plain_string_report(test_database_url):
        pytest.fail(f"plainly cannot reach {test_database_url}", pytrace=False)


    def test_other_service():
        raise RuntimeError("cache at redis://:hunter2@cache.internal:6379/0 is down")


    def test_captured_output(test_database_url, record_property):
        print(f"connecting to {test_database_url}")
        print(f"stderr: {test_database_url}", file=sys.stderr)
        logging.getLogger("app").warning("log: %s", test_database_url)
        record_property("database", f"{test_database_url}")


    def test_skip(test_database_url):
        pytest.skip(f"no replica next to {test_database_url}")


    @pytest.fixture
    def broken_setup(test_database_url):
        raise RuntimeError(f"setup cannot reach {test_database_url}")


    def test_setup_error(broken_setup):
        pass


    @pytest.fixture
    def broken_teardown(test_database_url):
        yield
        raise RuntimeError(f"teardown cannot reach {test_database_url}")


    def test_teardown_error(broken_teardown):
        pass
'''

#: A test module whose import fails: a collection error, with what it printed.
BROKEN_MODULE = """
    import os

    print(f"importing with {os.environ['DATABASE_URL']}")
    raise RuntimeError(f"import-time cannot reach {os.environ['DATABASE_URL']}")
"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def leaky_project(request: pytest.FixtureRequest, password: str) -> Project:
    """`special`: no URL configured, so the embedded server (the suite's scram server, through
    TESTDB_CACHE_DIR) with its stored password; `postgres`: the URL configured with that password
    on the trust server (which ignores it), the user `postgres` too."""
    make: Callable[..., Project] = request.getfixturevalue("make_project")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    if password == "special":
        scram: URL = request.getfixturevalue("scram_server")
        project = make(scram, env_url=False)
        monkeypatch.setenv("TESTDB_CACHE_DIR", str(SCRAM_CACHE))
        monkeypatch.setenv("TESTDB_BASE_NAME", project.base)
    else:
        trust: URL = request.getfixturevalue("trust_server")
        project = make(trust.set(password="postgres"))
    pyproject = project.pytester.path / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.testdb]\n", '[tool.testdb]\nexport_url_as = ["DATABASE_URL"]\n'
        )
    )
    project.write(
        **{"conftest.py": SERIALISING_CONFTEST},
        test_leaks=LEAKY_TESTS,
        test_broken_module=BROKEN_MODULE,
    )
    serialised = project.pytester.path / "serialised"
    serialised.mkdir()
    monkeypatch.setenv("TESTDB_TEST_SERIALISED", str(serialised))
    return project


def assert_no_password(text: str, password: str, where: str) -> None:
    if password == "special":
        head = quote(SPECIAL_PASSWORD, safe=" +")[:5]  # the piece before saferepr's cut
        for form in [*secret_forms(SPECIAL_PASSWORD), repr(SPECIAL_PASSWORD)[1:-1], head]:
            assert form not in text, f"{form!r} in {where}:\n{text}"
    else:
        # `postgres` is also the user: shown in a URL's user part, masked everywhere else.
        # (the short summary cuts lines to the terminal's width: `postgresql` may end `postgres...`)
        summary = re.compile(r"^(ERROR|FAILED) .*\.\.\.$", re.M)
        found = re.findall(r".*(?<![\w/])postgres\b.*", summary.sub("", text))
        assert not found, f"the password in {where}: {found}"
        assert "://postgres:postg" not in text  # the piece before saferepr's cut
        assert "***ql" not in text and "postgresql+psycopg://" in text


@pytest.mark.parametrize("args", [(), ("-n", "2", "--color=yes")], ids=["serial", "n2"])
@pytest.mark.parametrize("password", ["special", "postgres"])
def test_failure_reports_never_show_a_password(
    request: pytest.FixtureRequest, password: str, args: tuple[str, ...]
) -> None:
    """Trust round 4, item 3: only the plugin's own comparisons were masked. The assertion
    explanation of a test's own variable, `-l` locals (a URL fixture plus a query is a plain
    `str`; a repr cut by saferepr inside the password), an app's exception message (chained), a
    plain-string report, a skip reason, setup/teardown/collection errors, captured stdout, stderr
    and log (`-rA`), `record_property` values and JUnit XML showed the password. With `postgres`
    (the password and the user), `postgresql` used to become `***ql`."""
    project = leaky_project(request, password)
    xml = project.pytester.path / "junit.xml"

    result = project.run(
        "-l",
        "-rA",
        f"--junitxml={xml}",
        "-o",
        "junit_logging=all",
        "--continue-on-collection-errors",
        *args,
        subprocess=bool(args),
    )

    raw = result.stdout.str() + result.stderr.str()
    output = ANSI.sub("", raw)
    # (under xdist both workers collect the broken module: its error is reported twice)
    result.assert_outcomes(failed=8, passed=2, skipped=1, errors=4 if "-n" in args else 3)
    report = html.unescape(xml.read_text())
    user = "testdb" if password == "special" else "postgres"
    url = f"postgresql+psycopg://{user}:***@127.0.0.1:"
    for shown in [
        "where <built-in method endswith of str object at",
        f"//{user}:***...yyyyy",
        "login failed with password='***'",
        f"'{url}",
        "== 'postgresql://nobody@nowhere/none'",  # the plugin's own comparison
        f"refused by {url}",
        f"cannot reach {url}",
        f"cannot log in to postgresql://{user}:***@127.0.0.1:",
        f"plainly cannot reach {url}",
        "redis://:***@cache.internal:6379/0",
        f"connecting to {url}",
        f"stderr: {url}",
        f"log: {url}",
        f"no replica next to {url}",
        f"setup cannot reach {url}",
        f"teardown cannot reach {url}",
        f"importing with {url}",
        f"import-time cannot reach {url}",
    ]:
        assert shown in output, f"{shown!r} not in the output:\n{output}"
    for shown in [
        rf"'{re.escape(url)}[^']*'\.endswith",  # the assertion's explanation
        rf"\nextended += '{re.escape(url)}",  # -l
        r"\nshortened += 'xxxxx",
        r"\ndialect += 'postgresql'\n",
    ]:
        assert re.search(shown, output), f"{shown!r} not in the output:\n{output}"
    for shown in [
        f"cannot reach {url}",
        f"plainly cannot reach {url}",
        f"connecting to {url}",
        f"no replica next to {url}",
        f"import-time cannot reach {url}",
        f'name="database" value="{url}',
    ]:
        assert shown in report, f"{shown!r} not in the JUnit XML:\n{report}"
    assert_no_password(output, password, "the output")
    assert_no_password(report, password, "the JUnit XML")
    if "-n" in args:
        sent = [
            json.loads(line)
            for path in (project.pytester.path / "serialised").iterdir()
            for line in path.read_text().splitlines()
        ]
        texts = "\n".join(strings_in(sent))
        assert f"cannot reach {url}" in texts
        assert_no_password(texts, password, "the reports the workers sent")
        # the structure (and so the colors) stays: the failure line is still bold red
        assert re.search(r"\x1b\[1m\x1b\[31mE +RuntimeError: cannot reach", raw), raw


def strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in strings_in(item)]
    return []
