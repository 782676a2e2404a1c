"""``radflow up`` says what it stops on Ctrl-C, and when it is done."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def test_ctrl_c_prints_each_part_stopped_and_the_end(tmp_path: Path, repo_root: Path) -> None:
    broker = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "radflow", "namespace": "default"},
        "spec": {},
    }
    (tmp_path / "knative").mkdir()
    (tmp_path / "knative" / "broker.yaml").write_text(yaml.safe_dump(broker))
    out = tmp_path / "up.out"
    with open(out, "wb") as stdout, open(tmp_path / "up.err", "wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "radflow.cli.main",
                "--state-dir",
                str(tmp_path / "state"),
                "up",
                "--manifests",
                str(tmp_path / "knative"),
            ],
            cwd=repo_root,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 90
            while "radflow is up" not in out.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "up.err").read_text()[-3000:]
                time.sleep(0.2)
            assert "radflow is up" in out.read_text()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = out.read_text().split("radflow is up; Ctrl-C stops everything.\n", 1)[1].splitlines()
    assert lines[0] == "radflow is stopping ..."
    assert lines[1:-1] == [
        "  stopping deployments (none)",
        "  stopping broker",
        "  stopping functions (0)",
        "  stopping the control server",
        "  stopping SeaweedFS",
    ]
    assert lines[-1].startswith("radflow stopped (") and lines[-1].endswith(" s)")
    assert not (tmp_path / "state" / "engine.json").exists()
