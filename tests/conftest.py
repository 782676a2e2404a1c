"""Shared fixtures: a real SeaweedFS S3 on loopback, free ports, dcmtk's environment."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from radflow.engine.seaweed import SeaweedServer
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

# Debian's dcmtk (and Orthanc) stall ~48 ms per PDU unless TCP_NODELAY=1 is in the environment.
os.environ.setdefault("TCP_NODELAY", "1")


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
