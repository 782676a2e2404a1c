"""Bring-your-own Clara operators: the command runs with Clara's folders mapped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from pipeline_support import REPO, seed_study, store_env, study_event
from radflow.functions.clara_operator.logic import map_paths
from radflow.sdk import events
from radflow.sdk.events import EventType
from radflow.sdk.pipeline import parse_pipeline, stage_spec
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import Keys, ObjectStore

SCRIPT = (
    "import os, sys, pathlib\n"
    "src, out, report = sys.argv[1], sys.argv[2], os.environ['REPORT_PATH']\n"
    "files = sorted(p for p in pathlib.Path(src).rglob('*.dcm'))\n"
    "pathlib.Path(out, 'count.txt').write_text(str(len(files)))\n"
    "pathlib.Path(report).parent.mkdir(parents=True, exist_ok=True)\n"
    "pathlib.Path(report).write_text(os.environ['GREETING'])\n"
    "sys.exit(int(os.environ.get('EXIT', '0')))\n"
)


def pipeline(exit_code: int) -> str:
    return json.dumps(
        {
            "api-version": "0.4.0",
            "name": "byo",
            "operators": [
                {
                    "name": "legacy",
                    "container": {
                        "image": "clara/legacy-op",
                        "tag": "0.8.1",
                        "command": ["python3", "-c", SCRIPT, "/input", "/output"],
                    },
                    "variables": {
                        "REPORT_PATH": "/publish/report.txt",
                        "GREETING": "hello",
                        "EXIT": str(exit_code),
                    },
                    "input": [{"path": "/input"}],
                    "output": [{"path": "/output"}, {"name": "publish", "path": "/publish"}],
                }
            ],
        }
    )


def run_stage(
    monkeypatch: pytest.MonkeyPatch, settings: StoreSettings, store: ObjectStore, exit_code: int
) -> tuple[Any, events.JobRequested]:
    p = parse_pipeline(pipeline(exit_code), source="byo.yaml", functions=set())
    op = p.operator("legacy")
    monkeypatch.setenv("RADFLOW_STAGE_SPEC", stage_spec(p, op, timeout_seconds=300).to_env())
    for k, v in {**store_env(settings), **op.variables}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RADFLOW_OPERATOR", "clara_operator")
    req = seed_study(store, "byo", series=1, instances=3)
    app = functions_framework.create_app(
        "handle", str(REPO / "src/radflow/functions/entry.py")
    ).test_client()
    h, b = events.to_binary(study_event(store, req))
    return app.post("/", headers=h, data=b), req


def test_command_runs_with_inputs_and_named_outputs_mapped(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    resp, req = run_stage(monkeypatch, store_settings, store, 0)
    assert resp.status_code == 200, resp.data
    ev = events.from_http(dict(resp.headers), resp.data)
    assert ev["type"] == EventType.STAGE_COMPLETED.value
    assert store.get_bytes(Keys.stage_output(req.job_id, "legacy", "default", "count.txt")) == b"3"
    assert (
        store.get_bytes(Keys.stage_output(req.job_id, "legacy", "publish", "report.txt"))
        == b"hello"
    )
    assert events.parse_payload(ev, events.StageCompleted).summary["output_files"] == {
        "default": 1,
        "publish": 1,
    }


def test_nonzero_exit_is_a_permanent_failure(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    resp, _ = run_stage(monkeypatch, store_settings, store, 3)
    ev = events.from_http(dict(resp.headers), resp.data)
    assert ev["type"] == EventType.STAGE_FAILED.value
    assert events.parse_payload(ev, events.StageFailed).reason == "operator_exit_3"


def test_exit_75_is_transient(
    monkeypatch: pytest.MonkeyPatch, store_settings: StoreSettings, store: ObjectStore
) -> None:
    resp, _ = run_stage(monkeypatch, store_settings, store, 75)
    assert resp.status_code == 503


def test_path_mapping_whole_components_only() -> None:
    paths = {
        "/input": Path("/tmp/x/in"),
        "/input/dicom": Path("/tmp/x/dicom"),
        "/output": Path("/tmp/x/out"),
    }
    assert map_paths("/input", paths) == "/tmp/x/in"
    assert map_paths("--in=/input/a.dcm", paths) == "--in=/tmp/x/in/a.dcm"
    assert map_paths("/input/dicom/1.dcm", paths) == "/tmp/x/dicom/1.dcm"
    assert map_paths("/inputs /data/input /output2", paths) == "/inputs /data/input /output2"
    assert map_paths("cp '/input' \"/output\"", paths) == "cp '/tmp/x/in' \"/tmp/x/out\""
