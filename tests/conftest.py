"""Shared fixtures (a real SeaweedFS S3 on loopback, dcmtk's environment) and the CI rule.

The CI rule: a test skips when a prerequisite is missing here (dcmtk, Orthanc, dciodvfy, dcmqi,
the Triton binary, the ``../shared/schemas`` folder, kubectl ...), with a message naming it. That
is right on a developer's machine and wrong in CI, where a skip would hide a missing install
step behind a green run. With ``CI=true`` in the environment every skip is reported as a
failure carrying the same message (:func:`pytest_runtest_makereport` and
:func:`pytest_make_collect_report` below), so the tests themselves keep plain ``pytest.skip`` /
``skipif`` / ``importorskip`` calls.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from radflow.engine.seaweed import SeaweedServer
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

pytest_plugins = ["pytester"]  # tests/unit/test_ci_prerequisites.py runs pytest on the CI rule

#: the value CI services put in ``CI`` (GitHub Actions, GitLab, this project's .ci/run)
CI_VALUES = {"true", "1"}


def in_ci() -> bool:
    """True in a CI run (``CI=true``): a missing prerequisite then fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def _skip_reason(longrepr: object) -> str:
    # a skip's longrepr is (path, line, "Skipped: <reason>")
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"missing prerequisite (CI=true turns this skip into a failure): "
        f"{_skip_reason(report.longrepr)}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_skip_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield  # a module-level skip or importorskip
    _fail_skip_in_ci(report)
    return report


# Debian's dcmtk (and Orthanc) stall ~48 ms per PDU unless TCP_NODELAY=1 is in the environment.
os.environ.setdefault("TCP_NODELAY", "1")


@pytest.fixture(scope="session", autouse=True)
def _engine_run_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Engines started by tests point the run file (radflow.engine.runfile) at their state
    folder: keep it out of the developer's own $XDG_RUNTIME_DIR."""
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("xdg-runtime"))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One real SeaweedFS server for the whole test run."""
    data = tmp_path_factory.mktemp("seaweed")
    server = SeaweedServer(data_dir=data / "data", log_path=data / "weed.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store_settings(seaweed: SeaweedServer) -> StoreSettings:
    """Settings for a fresh bucket on the shared SeaweedFS (one bucket per test)."""
    return StoreSettings(endpoint_url=seaweed.endpoint_url, bucket=f"t{uuid.uuid4().hex[:20]}")


@pytest.fixture
def store(store_settings: StoreSettings) -> ObjectStore:
    s = ObjectStore(store_settings)
    s.ensure_bucket()
    return s


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
