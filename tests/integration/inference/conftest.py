"""Fixtures for the inference/export tests: real storage SCPs on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scu_peers import PynetdicomSCP, StoreSCP

from radflow.engine.ports import free_port, wait_for_port


@pytest.fixture
def pynetdicom_scp() -> Iterator[Callable[..., PynetdicomSCP]]:
    made: list[PynetdicomSCP] = []

    def factory(**kwargs: object) -> PynetdicomSCP:
        scp = PynetdicomSCP(**kwargs)  # type: ignore[arg-type]
        made.append(scp)
        return scp

    yield factory
    for scp in made:
        scp.stop()


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    if not shutil.which("storescp"):
        pytest.skip("dcmtk storescp is not installed (apt-get install dcmtk)")
    scp = StoreSCP(tmp_path / "storescp", free_port())
    scp.folder.mkdir()
    env = {**os.environ, "TCP_NODELAY": "1"}  # Debian's dcmtk stalls ~48 ms per PDU without it
    proc = subprocess.Popen(
        [
            "storescp",
            "-aet",
            scp.ae_title,
            "+xa",
            "+B",
            "--max-pdu",
            "131072",
            "-od",
            str(scp.folder),
            str(scp.port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port("127.0.0.1", scp.port, 10), "storescp did not start"
        yield scp
    finally:
        proc.terminate()
        proc.wait(10)
