"""The CI rule of tests/conftest.py: with CI=true a skipped test fails, naming what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

# every way the suite skips: a skipif mark, pytest.skip in a fixture and in a test body,
# importorskip
SKIPPING = """
import shutil
import pytest

MISSING = shutil.which("no-such-tool-radflow") is None

@pytest.mark.skipif(MISSING, reason="no-such-tool-radflow is not installed")
def test_mark():
    pass

@pytest.fixture
def peer():
    pytest.skip("the peer binary is not installed")

def test_fixture(peer):
    pass

def test_body():
    pytest.skip("schemas not found at ../shared/schemas")

def test_import():
    pytest.importorskip("no_such_module_radflow")

def test_runs():
    assert True
"""
# and a module-level skip, at collection
MODULE_LEVEL = """
import pytest
pytest.skip("Triton cannot run here: no binary", allow_module_level=True)

def test_never():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_skipping=SKIPPING)
    return pytester


def test_without_ci_missing_prerequisites_skip_with_their_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines(["*no-such-tool-radflow is not installed*"])
    result.stdout.no_fnmatch_line("*missing prerequisite*")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_with_ci_every_skip_fails_naming_the_prerequisite(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    # skipif marks and skipping fixtures fail in setup (reported as errors), the rest in the call
    result.assert_outcomes(passed=1, failed=2, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random(
        [
            "*missing prerequisite (CI=true turns this skip into a failure): "
            "no-such-tool-radflow is not installed*",
            "*missing prerequisite*the peer binary is not installed*",
            "*missing prerequisite*schemas not found at ../shared/schemas*",
            "*missing prerequisite*could not import 'no_such_module_radflow'*",
        ]
    )


def test_with_ci_a_module_level_skip_is_a_collection_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_module_level=MODULE_LEVEL)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*missing prerequisite*Triton cannot run here: no binary*"])
    monkeypatch.delenv("CI")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(skipped=1)


def test_ci_false_keeps_skips(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    suite.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=4)
