"""Operator experience against one running engine (``radflow up`` with the shipped adapter
Deployment): every CLI command finds the engine from any folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from radflow.engine.ports import free_port
from radflow.sdk import http

REPO = Path(__file__).resolve().parents[3]


@dataclass
class RunningEngine:
    state: Path
    config: Path
    dicom_port: int
    rest: str
    log: Path
    env: dict[str, str]

    def control_url(self) -> str:
        return str(json.loads((self.state / "engine.json").read_text())["control_url"])


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _manifests(folder: Path, rest_port: int) -> None:
    """knative/adapter.yaml as shipped (REST port moved off 5000) and a Broker for its sink."""
    docs = [d for d in yaml.safe_load_all((REPO / "knative" / "adapter.yaml").read_text()) if d]
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


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    tmp = tmp_path_factory.mktemp("ux-engine")
    dicom_port, rest_port = free_port(), free_port()
    _manifests(tmp / "knative", rest_port)
    config = tmp / "dicom-adapter.yaml"
    config.write_text(
        f"dicom:\n  scp:\n    port: {dicom_port}\n"
        "    ae-titles: [{ae-title: BRAINSEG, timeout: 0}]\n"
        "    reject-unknown-sources: false\n"
        "pipeline-mappings: [{name: ux, clara-ae-title: BRAINSEG, pipeline-id: ux-pipeline}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")}
    env["PYTHONPATH"] = str(REPO / "src")
    state = tmp / "state"
    log = tmp / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "radflow.cli.main", "--state-dir", str(state), "up"]
            + ["--config", str(config), "--manifests", str(tmp / "knative")],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    rest = f"http://127.0.0.1:{rest_port}"
    try:
        assert _wait(lambda: (state / "engine.json").exists() or proc.poll() is not None, 90)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _wait(lambda: http.probe(rest + "/health/ready") == 200, 90), log.read_text()[-3000:]
        yield RunningEngine(state, config, dicom_port, rest, log, env)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def radflow(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "radflow.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_command_finds_the_engine_from_another_folder(
    engine: RunningEngine, tmp_path: Path
) -> None:
    """No --state-dir, no RADFLOW_S3_*, another working folder: the run file leads the way."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = radflow(engine.env, elsewhere, "status")
    assert status.returncode == 0, status.stderr
    assert f"dicom       127.0.0.1:{engine.dicom_port}  AE titles BRAINSEG" in status.stdout
    jobs = radflow(engine.env, elsewhere, "jobs")
    assert (jobs.returncode, jobs.stdout.strip(), jobs.stderr) == (0, "no jobs yet", "")
    listed = radflow(engine.env, elsewhere, "dicom", "list", "aetitle")
    assert listed.returncode == 0, listed.stderr
    assert [e["aeTitle"] for e in json.loads(listed.stdout)] == ["BRAINSEG"]
    logs = radflow(engine.env, elsewhere, "logs", "radflow-dicom-adapter", "--json")
    assert logs.returncode == 0, logs.stderr
    assert "dicom adapter listening" in logs.stdout
    # redrive asks the engine for its job tracker; this engine runs none
    redrive = radflow(engine.env, elsewhere, "jobs", "redrive", "abc")
    assert (redrive.returncode, redrive.stderr) == (
        1,
        "radflow: the running engine has no job-tracker service; give --url\n",
    )


def test_without_an_engine_each_command_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")}
    env |= {"PYTHONPATH": str(REPO / "src"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    # a run file left by an engine that has stopped since
    (tmp_path / "run" / "radflow").mkdir(parents=True)
    (tmp_path / "run" / "radflow" / "engine.json").write_text(
        json.dumps({"state_dir": str(tmp_path / "gone"), "pid": 1})
    )
    for args in (("status",), ("jobs",), ("jobs", "show", "abc"), ("jobs", "redrive", "abc")):
        done = radflow(env, tmp_path, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("radflow: no engine is running (looked at "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _scrape(engine: RunningEngine) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = http.request("GET", engine.control_url() + "/metrics", timeout=10).data.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_of_the_adapter_are_on_the_engine_endpoint(
    engine: RunningEngine, tmp_path: Path
) -> None:
    """A study stored with dcmtk and a truncated data set refused (0xC000): the engine's one
    /metrics endpoint shows the adapter's counts, labelled with its Deployment."""
    import shutil

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from adapter_data import make_study

    storescu = Path("/usr/bin/storescu")
    if not storescu.exists():
        pytest.skip("dcmtk storescu not installed (apt-get install dcmtk)")
    study = make_study(tmp_path / "study", series=1, per_series=3)
    sent = subprocess.run(
        [str(storescu), "-aet", "STORESCU", "-aec", "BRAINSEG", "127.0.0.1"]
        + [str(engine.dicom_port), *map(str, study.files)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert sent.returncode == 0, sent.stderr
    truncated = tmp_path / "truncated.dcm"
    shutil.copy(study.files[0], truncated)
    truncated.write_bytes(study.files[0].read_bytes()[:-500])
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", engine.dicom_port, ae_title="BRAINSEG")
    assert assoc.is_established
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are
    try:
        assert int(assoc.send_c_store(truncated).Status) == 0xC000
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assoc.release()

    label = (("deployment", "radflow-dicom-adapter"),)
    # receivers report their counts when an association ends: wait for them
    assert _wait(
        lambda: (
            _scrape(engine).get(("radflow_adapter_refusals_total", (*label, ("status", "0xC000"))))
            == 1
        ),
        30,
    ), _scrape(engine)
    metrics = _scrape(engine)
    assert metrics[("radflow_adapter_instances_received_total", label)] == 3
    size = sum(f.stat().st_size for f in study.files)
    assert size <= metrics[("radflow_adapter_bytes_received_total", label)] <= size + 3 * 1024
    assert metrics[("radflow_adapter_associations_total", (*label, ("result", "accepted")))] >= 2
    assert ("radflow_adapter_associations_active", label) in metrics

    def drained() -> bool:
        """The study's job event sent to the broker, nothing left in the spool or outbox."""
        m = _scrape(engine)
        return (
            m.get(("radflow_adapter_outbox_events", (*label, ("state", "sent")))) == 1
            and m.get(("radflow_adapter_outbox_events", (*label, ("state", "pending")))) == 0
            and m.get(("radflow_adapter_spool_instances", (*label, ("state", "indexed")))) == 0
            and m.get(("radflow_adapter_spool_instances", (*label, ("state", "waiting_upload"))))
            == 0
        )

    assert _wait(drained, 30), _scrape(engine)


def test_job_outcomes_durations_and_export_failures_from_broker_events(
    engine: RunningEngine,
) -> None:
    """A job request, scu-export's summary and the tracker's job.completed, accepted by the
    broker: one completed job of its pipeline with a duration, the refused files per
    destination."""
    from radflow.sdk.events import EventType, make_event, to_binary

    status = http.get_json(engine.control_url() + "/status", timeout=10)
    ingress = status["brokers"][0]["url"]
    job = {"radflowjob": "job-ux-1", "radflowpipeline": "ux-pipeline"}

    def post(kind: str, data: dict[str, Any]) -> None:
        headers, body = to_binary(make_event(kind, "/test", data, extensions=job))
        assert http.request("POST", ingress, body=body, headers=headers, timeout=10).status == 202

    before = _scrape(engine)
    post(EventType.STUDY_RECEIVED, {})
    post(EventType.STAGE_COMPLETED, {"summary": {"failed_by_destination": {"MYPACS": 2}}})
    post(EventType.JOB_COMPLETED, {})
    after = _scrape(engine)
    done = (("outcome", "completed"), ("pipeline", "ux-pipeline"))

    def delta(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta(("radflow_jobs_total", done)) == 1
    assert delta(("radflow_job_duration_seconds_count", done)) == 1
    assert delta(("radflow_export_failures_total", (("destination", "MYPACS"),))) == 2


def test_status_shows_the_rest_changes_on_top_of_the_file(
    engine: RunningEngine, tmp_path: Path
) -> None:
    base = engine.rest + "/api/config/claraaetitle"
    http.post_json(base, {"aeTitle": "UXREST"}, timeout=10)
    try:
        status = radflow(engine.env, tmp_path, "status")
        assert f"config      {engine.config} + REST changes: ae-titles/UXREST" in status.stdout
    finally:
        http.request("DELETE", base + "/UXREST", timeout=10)
