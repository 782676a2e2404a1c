"""Every image of skaffold.yaml, started from its own entry point, against the real local parts.

The images come from ``scripts/build-images`` (the Dockerfiles users build unchanged, from
buildah's storage). Each function image answers a real binary CloudEvent end to end: it stages
the study from a real SeaweedFS, runs its operator and replies with a binary CloudEvent; the
wrapped example Clara operator (Debian bullseye, glibc 2.31) runs its own command and completes;
the adapter image answers C-ECHO, takes a study from dcmtk's ``storescu`` into S3 and posts its
event to ``K_SINK``; the job-tracker image serves ``GET /jobs``. Run by ``make images-test``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from containers import buildah, image_config, running

from adapter_data import make_study
from pipeline_support import REPO, seed_study, store_env, study_event
from radflow.engine.ports import free_port, wait_for_port
from radflow.functions import registry
from radflow.sdk import events
from radflow.sdk.events import EventType
from radflow.sdk.manifest import StudyManifest
from radflow.sdk.pipeline import parse_pipeline, stage_spec
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

pytestmark = pytest.mark.slow

ARTIFACTS = {
    a["image"]: a
    for a in yaml.safe_load((REPO / "skaffold.yaml").read_text())["build"]["artifacts"]
}
#: every function image: the registry's operators served by the stage runtime
FUNCTIONS = [e for e in registry.OPERATORS if e.logic]
EXAMPLE_OPERATOR = "radflow-examples/copy-operator"
#: an image answers within this long after its process starts (a cold start, 2 shared cores)
START_TIMEOUT = 120.0


def test_every_manifest_image_is_a_skaffold_artifact_built_here() -> None:
    """What the tests below run is what skaffold builds: the artifacts of skaffold.yaml."""
    named = set()
    for path in (REPO / "knative").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            named |= {c["image"] for c in spec.get("containers", [])}
    radflow_images = {i for i in named if i.startswith("radflow/")}
    assert "radflow/dicom-adapter" in radflow_images
    assert radflow_images <= set(ARTIFACTS)
    for image in ARTIFACTS:
        assert image_config(image)  # built into buildah's storage by scripts/build-images


BRAIN = yaml.safe_load((REPO / "pipelines/brain-tumor-segmentation.yaml").read_text())


def test_an_operator_the_image_cannot_serve_fails_its_build(tmp_path: Path) -> None:
    """The last step of docker/functions.Dockerfile imports the operator: a name missing from
    the registry stops the build with the registry's message (the other layers are cached)."""
    secret = []
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if ca and Path(ca).is_file():
        secret = ["--secret", f"id=pip-ca,src={ca}"]
    build = subprocess.run(
        [
            *buildah(),
            "bud",
            "--pull=never",
            "--layers",
            "--force-rm",  # no working container left behind by the failed step
            "--isolation",
            "chroot",
            "--network",
            "host",
            *secret,
            "-f",
            "docker/functions.Dockerfile",
            "--build-arg",
            "OPERATOR=no_such_operator",
            "-t",
            "radflow/smoke-must-not-exist",
            ".",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode != 0
    assert "no operator 'no_such_operator' in the registry" in build.stderr + build.stdout


def one_stage(image: str, tag: str | None = None, command: list[str] | None = None) -> Any:
    """A pipeline whose one root stage runs ``image`` with the inputs, outputs and variables the
    reference pipeline gives it; every input is the study."""
    container: dict[str, Any] = {"image": image}
    like = next((op for op in BRAIN["operators"] if op["container"]["image"] == image), {})
    if tag:
        container["tag"] = tag
    if command:
        container["command"] = command
    text = json.dumps(
        {
            "api-version": "0.4.0",
            "name": "smoke",
            "operators": [
                {
                    "name": "only",
                    "container": container,
                    "variables": like.get("variables", {}),
                    # the reference pipeline's inputs, each fed the study
                    "input": [
                        {k: v for k, v in i.items() if k != "from"}
                        for i in like.get("input", [{"path": "/input"}])
                    ],
                    "output": like.get("output", [{"path": "/output"}]),
                }
            ],
        }
    )
    return parse_pipeline(text, source="smoke.yaml", functions=registry.names())


def post_event(port: int, event: events.CloudEvent) -> tuple[int, dict[str, str], bytes]:
    headers, body = events.to_binary(event)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=body, headers=dict(headers), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> float:
    """Seconds until the container accepts connections on ``port``."""
    t0 = time.monotonic()
    deadline = t0 + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"container exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        )
        if wait_for_port("127.0.0.1", port, 0.5):
            return time.monotonic() - t0
    raise AssertionError(
        f"nothing listens on {port} after {START_TIMEOUT} s:\n{log.read_text()[-3000:]}"
    )


def serve_stage(
    image: str,
    pipeline: Any,
    settings: StoreSettings,
    store: ObjectStore,
    tmp_path: Path,
) -> tuple[events.CloudEvent, events.JobRequested, Path]:
    """Start ``image`` as the pipeline's one stage, send it the study event, return its reply."""
    op = pipeline.operator("only")
    port = free_port()
    env = {
        **store_env(settings),
        "PORT": str(port),
        "RADFLOW_PIPELINE": pipeline.name,
        "RADFLOW_STAGE": op.name,
        "RADFLOW_STAGE_SPEC": stage_spec(pipeline, op, timeout_seconds=300).to_env(),
        "RADFLOW_CLAIM_LEASE_SECONDS": "30",
    }
    log = tmp_path / "container.log"
    req = seed_study(store, pipeline.name, series=2, instances=3)
    with running(image, env, log) as proc:
        wait_ready(port, proc, log)
        status, headers, body = post_event(port, study_event(store, req))
    assert status == 200, f"{image}: HTTP {status} {body[:300]!r}\n{log.read_text()[-3000:]}"
    assert headers.get("ce-specversion") == "1.0", headers  # a binary-mode CloudEvent
    reply = events.from_http(headers, body)
    assert reply["radflowjob"] == req.job_id and reply["radflowstage"] == "only"
    # gunicorn keeps its control socket under $HOME: the image's user has a writable one
    text = log.read_text()
    assert "Control server error" not in text and "Failed to start control socket" not in text
    return reply, req, log


@pytest.mark.parametrize("entry", FUNCTIONS, ids=[e.kebab for e in FUNCTIONS])
def test_function_image_answers_a_binary_cloudevent(
    entry: registry.OperatorEntry,
    store_settings: StoreSettings,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    """Staged from SeaweedFS, served by the image's entry point, answered with a CloudEvent.

    The study is six placeholder instances, so operators that decode DICOM answer with a
    ``stage.failed`` reply naming the reason: that too is the runtime's complete round trip
    (stage, run, record the outcome in S3, reply)."""
    reply, req, log = serve_stage(
        entry.image, one_stage(entry.image), store_settings, store, tmp_path
    )
    assert reply["type"] in {EventType.STAGE_COMPLETED.value, EventType.STAGE_FAILED.value}
    if reply["type"] == EventType.STAGE_FAILED.value:
        assert events.parse_payload(reply, events.StageFailed).reason
    # the runtime recorded the stage in the bucket: its log went through S3
    assert store.exists(Keys.stage_marker(req.job_id, "only", "log.jsonl")), log.read_text()[-2000:]


def test_wrapped_clara_operator_runs_its_own_command(
    store_settings: StoreSettings, store: ObjectStore, tmp_path: Path
) -> None:
    """docker/clara-operator-wrapper.Dockerfile on the example operator (bullseye, Python 3.9):
    radflow's runtime stages the study into /input, the operator's own python3 copies it to
    /output, and the outputs reach S3; the runtime's Python does not leak into the operator."""
    pipeline = one_stage(
        EXAMPLE_OPERATOR,
        tag="1.0",
        command=["python3", "/opt/operator/copy.py", "/input", "/output"],
    )
    reply, req, log = serve_stage("radflow/byo-example", pipeline, store_settings, store, tmp_path)
    assert reply["type"] == EventType.STAGE_COMPLETED.value, log.read_text()[-3000:]
    data = events.parse_payload(reply, events.StageCompleted)
    (out,) = data.outputs.values()
    assert store.get_bytes(f"{out.rstrip('/')}/count.txt") == b"6"
    # the operator's own python3 (bullseye's 3.9), not radflow's 3.11 nor its libraries
    assert store.get_bytes(f"{out.rstrip('/')}/python.txt").startswith(b"3.9.")


class Sink:
    """A real HTTP receiver standing in for the broker (K_SINK): records binary CloudEvents."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink.cond:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    sink.events.append({"headers": headers, "data": json.loads(body)})
                    sink.cond.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/default/radflow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.events) < n and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            return list(self.events)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.server.shutdown()
    s.server.server_close()


ADAPTER_CONFIG = """\
dicom:
  scp:
    port: {port}
    ae-titles:
      - ae-title: RADFLOW
        timeout: 0
    max-associations: 4
    reject-unknown-sources: false
    sources: []
  scu:
    ae-title: RADFLOWSCU
    destinations: []
pipeline-mappings:
  - name: smoke
    clara-ae-title: RADFLOW
    pipeline-id: brain-tumor-segmentation
"""


def test_adapter_image_echo_store_and_event(
    store_settings: StoreSettings, store: ObjectStore, sink: Sink, tmp_path: Path
) -> None:
    """The Deployment's container: C-ECHO, a study from storescu into S3, its event to K_SINK."""
    dicom_port, rest_port = free_port(), free_port()
    config = tmp_path / "config"
    config.mkdir()
    (config / "dicom-adapter.yaml").write_text(ADAPTER_CONFIG.format(port=dicom_port))
    study = make_study(tmp_path / "study", series=2, per_series=3)
    deployment = next(
        d
        for d in yaml.safe_load_all((REPO / "knative/adapter.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # the Deployment's env; on loopback its REST port moves to a free one, and the object store
    # and K_SINK come in as the cluster's Secret and SinkBinding would bring them
    env = {
        **{e["name"]: e["value"] for e in container.get("env", [])},
        **store_env(store_settings),
        "K_SINK": sink.url,
        "RADFLOW_ADAPTER_REST_PORT": str(rest_port),
    }
    (mount,) = (m for m in container["volumeMounts"] if m["name"] == "config")
    log = tmp_path / "adapter.log"
    # the Deployment's image, command and config mount; the spool is the image's own folder
    with running(
        container["image"],
        env,
        log,
        volumes=[(config, mount["mountPath"])],
        command=container["command"],
    ) as proc:
        wait_ready(dicom_port, proc, log)
        tcp = {**os.environ, "TCP_NODELAY": "1"}
        echo = subprocess.run(
            ["/usr/bin/echoscu", "-aec", "RADFLOW", "127.0.0.1", str(dicom_port)],
            capture_output=True,
            text=True,
            env=tcp,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stderr + log.read_text()[-2000:]
        store_cmd = subprocess.run(
            [
                "/usr/bin/storescu",
                "-aet",
                "STORESCU",
                "-aec",
                "RADFLOW",
                "127.0.0.1",
                str(dicom_port),
                *map(str, study.files),
            ],
            capture_output=True,
            text=True,
            env=tcp,
            timeout=120,
        )
        assert store_cmd.returncode == 0, store_cmd.stderr + log.read_text()[-2000:]
        got = sink.wait_for(1, timeout=60)
        assert got, f"no event reached K_SINK:\n{log.read_text()[-3000:]}"
    ev = got[0]
    assert ev["headers"]["ce-type"] == EventType.STUDY_RECEIVED.value
    manifest = StudyManifest.model_validate_json(store.get_bytes(ev["data"]["manifest_key"]))
    assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(study.sop_uids)
    for inst in manifest.instances:
        assert store.head(inst.key).size == inst.size
    assert study.study_uid not in log.read_text()  # no PHI/UIDs in the container's log


def test_job_tracker_image_serves_jobs(
    store_settings: StoreSettings, store: ObjectStore, tmp_path: Path
) -> None:
    """The compiled job-tracker Service's env, the image's entry point: a study event, then
    ``GET /jobs`` lists the job."""
    doc = next(yaml.safe_load_all((REPO / "knative/platform/job-tracker.yaml").read_text()))
    compiled = {
        e["name"]: e["value"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    port = free_port()
    env = {**compiled, **store_env(store_settings), "PORT": str(port)}
    log = tmp_path / "tracker.log"
    req = seed_study(store, "brain-tumor-segmentation")
    with running(doc["spec"]["template"]["spec"]["containers"][0]["image"], env, log) as proc:
        wait_ready(port, proc, log)
        status, _, body = post_event(port, study_event(store, req))
        assert status in (200, 202), body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs", timeout=30) as resp:
            assert resp.status == 200
            jobs = json.load(resp)["jobs"]
    assert [j["job_id"] for j in jobs] == [req.job_id], log.read_text()[-2000:]
    assert "Control server error" not in log.read_text()
