"""``radflow status`` shows every endpoint of a running engine, the adapter's included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from radflow.cli.main import main as radflow_cli
from radflow.engine.ports import free_port
from radflow.sdk import http


def _adapter_manifests(repo_root: Path, folder: Path, rest_port: int) -> None:
    """knative/adapter.yaml as shipped (REST port moved off 5000) and a Broker for its sink."""
    docs = [
        d for d in yaml.safe_load_all((repo_root / "knative" / "adapter.yaml").read_text()) if d
    ]
    for doc in docs:
        if doc["kind"] == "Deployment":
            for item in doc["spec"]["template"]["spec"]["containers"][0]["env"]:
                if item["name"] == "RADFLOW_ADAPTER_REST_PORT":
                    item["value"] = str(rest_port)
    broker = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "radflow", "namespace": "default"},
        "spec": {},
    }
    folder.mkdir()
    (folder / "adapter.yaml").write_text(yaml.safe_dump_all([broker, *docs], sort_keys=False))


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_status_shows_dicom_rest_broker_s3_and_control_endpoints(
    tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dicom_port, rest_port = free_port(), free_port()
    _adapter_manifests(repo_root, tmp_path / "knative", rest_port)
    config = tmp_path / "dicom-adapter.yaml"
    config.write_text(
        f"dicom:\n  scp:\n    port: {dicom_port}\n    ae-titles: [{{ae-title: BRAINSEG}}]\n"
    )
    state = tmp_path / "state"
    log = open(tmp_path / "engine.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radflow.cli.main",
            "--state-dir",
            str(state),
            "up",
            "--config",
            str(config),
            "--manifests",
            str(tmp_path / "knative"),
        ],
        cwd=repo_root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    rest = f"http://127.0.0.1:{rest_port}"
    try:
        assert _wait(lambda: (state / "engine.json").exists() or proc.poll() is not None, 90)
        assert proc.poll() is None, (tmp_path / "engine.log").read_text()[-3000:]
        assert _wait(lambda: http.probe(rest + "/health/ready") == 200, 90), (
            tmp_path / "engine.log"
        ).read_text()[-3000:]
        # the engine tells its adapter which pipelines it runs (none here: no Trigger)
        with pytest.raises(http.RequestRejected, match="unknown pipeline 'nope'") as refused:
            http.post_json(
                rest + "/api/config/claraaetitle",
                {"aeTitle": "NOPE", "processorSettings": {"pipeline-x": "nope"}},
                timeout=10,
            )
        assert refused.value.status == 400
        # an AE title added over REST is shown too: status asks the adapter, not only the file
        http.post_json(rest + "/api/config/claraaetitle", {"aeTitle": "LUNGSEG"}, timeout=10)

        assert radflow_cli(["--state-dir", str(state), "status"]) == 0
        out = capsys.readouterr().out
        control = json.loads((state / "engine.json").read_text())["control_url"]
        assert f"control {control}" in out
        assert f"dicom       127.0.0.1:{dicom_port}  AE titles BRAINSEG, LUNGSEG  " in out
        assert f"rest api    {rest}  " in out
        assert "broker      default/radflow  http://127.0.0.1:" in out
        assert "(ingress)" in out
        assert "s3          http://127.0.0.1:" in out

        assert radflow_cli(["--state-dir", str(state), "status", "--json"]) == 0
        adapters = json.loads(capsys.readouterr().out)["adapters"]
        assert [(a["dicom"], a["rest_api"], a["ae_titles"]) for a in adapters] == [
            (f"127.0.0.1:{dicom_port}", rest, ["BRAINSEG", "LUNGSEG"])
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
