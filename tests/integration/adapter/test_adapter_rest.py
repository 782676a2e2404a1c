"""Clara-compatible REST API and the ``radflow dicom`` CLI against a running adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from test_adapter_ingest import pynetdicom_send

from adapter_data import make_study


def call(port: int, method: str, path: str, body=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_health_endpoints(adapter_factory):
    a = adapter_factory()
    assert call(a.rest_port, "GET", "/health/live")[0] == 200
    assert call(a.rest_port, "GET", "/health/ready") == (200, {"status": "ready"})
    status, body = call(a.rest_port, "GET", "/health/status")
    assert status == 200 and body["spool"]["open_associations"] == 0
    assert body["receivers"] == {
        "processes": 2,
        "running": 2,
        "ready": 2,
        "connections": 0,
        "associations": 0,
    }


def test_clara_ae_title_lifecycle_applies_without_restart(adapter_factory, sink, store, tmp_path):
    a = adapter_factory()
    port = a.rest_port
    body = {
        "name": "liver",
        "aeTitle": "LIVER",
        "overwriteSameInstance": False,
        "processorSettings": {"timeout": 0, "pipeline-liver": "liver-seg"},
    }
    status, created = call(port, "POST", "/api/config/ClaraAeTitle/", body)  # Clara's own casing
    assert status == 201 and created["aeTitle"] == "LIVER"
    assert created["processorSettings"]["pipeline-liver"] == "liver-seg"
    assert call(port, "POST", "/api/config/claraaetitle", body)[0] == 400  # duplicate name
    dup_ae = {**body, "name": "other"}
    assert call(port, "POST", "/api/config/claraaetitle", dup_ae)[0] == 400  # duplicate AE title
    assert call(port, "GET", "/api/config/claraaetitle/liver")[1]["aeTitle"] == "LIVER"
    assert call(port, "GET", "/api/config/claraaetitle/nope")[0] == 404
    # the new AE title takes studies at once and starts its pipeline
    study = make_study(tmp_path / "in", series=1, per_series=2)
    assert pynetdicom_send(a.dicom_port, study.files, called="LIVER") == [0, 0]
    ev = sink.wait_for(1)[0]
    assert ev["headers"]["ce-radflowpipeline"] == "liver-seg"
    # persisted for restarts and for scu-export
    doc = json.loads(store.get_bytes("config/dicom-adapter.json"))
    assert any(x["ae-title"] == "LIVER" for x in doc["ae-titles"])
    assert call(port, "DELETE", "/api/config/claraaetitle/liver")[0] == 200
    assert call(port, "DELETE", "/api/config/claraaetitle/liver")[0] == 404
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", a.dicom_port, ae_title="LIVER")
    assert assoc.is_rejected


def test_sources_and_destinations(adapter_factory, store):
    a = adapter_factory(reject_unknown=True)
    port = a.rest_port
    ae = AE(ae_title="NEWSRC")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", a.dicom_port, ae_title="RADFLOW").is_rejected
    assert (
        call(
            port, "POST", "/api/config/sourceaetitle", {"hostIp": "127.0.0.1", "aeTitle": "NEWSRC"}
        )[0]
        == 201
    )
    assoc = ae.associate("127.0.0.1", a.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    assoc.release()
    assert (
        call(
            port, "POST", "/api/config/sourceaetitle", {"hostIp": "127.0.0.1", "aeTitle": "NEWSRC"}
        )[0]
        == 400
    )
    dest = {"name": "pacs2", "hostIp": "127.0.0.1", "aeTitle": "PACS2", "port": 11114}
    assert call(port, "POST", "/api/config/destinationaetitle", dest) == (201, dest)
    names = [d["name"] for d in call(port, "GET", "/api/config/destinationaetitle")[1]]
    assert names == ["MYPACS", "pacs2"]
    doc = json.loads(store.get_bytes("config/dicom-adapter.json"))
    assert {"name": "pacs2", "ae-title": "PACS2", "host-ip": "127.0.0.1", "port": 11114} in doc[
        "destinations"
    ]
    assert call(port, "DELETE", "/api/config/sourceaetitle/NEWSRC")[0] == 200
    assert ae.associate("127.0.0.1", a.dicom_port, ae_title="RADFLOW").is_rejected


@pytest.mark.parametrize(
    "path,body,raw",
    [
        ("/api/config/claraaetitle", None, b"{not json"),
        ("/api/config/claraaetitle", ["a", "list"], None),
        ("/api/config/claraaetitle", {"name": "x", "aeTitle": "WAY-TOO-LONG-AE-TITLE"}, None),
        ("/api/config/claraaetitle", {"name": "x", "aeTitle": "BAD\\AE"}, None),
        ("/api/config/claraaetitle", {"name": "../x", "aeTitle": "OK"}, None),
        (
            "/api/config/claraaetitle",
            {"name": "x", "aeTitle": "OK", "ignoredSopClasses": ["not-a-uid"]},
            None,
        ),
        (
            "/api/config/claraaetitle",
            {"name": "x", "aeTitle": "OK", "processorSettings": {"timeout": -1}},
            None,
        ),
        ("/api/config/claraaetitle", {"name": "x", "aeTitle": "OK", "bogus": 1}, None),
        ("/api/config/sourceaetitle", {"aeTitle": "SRC"}, None),
        ("/api/config/sourceaetitle", {"aeTitle": "SRC", "hostIp": "not a host!"}, None),
        (
            "/api/config/destinationaetitle",
            {"name": "d", "aeTitle": "D", "hostIp": "1.2.3.4", "port": 70000},
            None,
        ),
        (
            "/api/config/destinationaetitle",
            {"name": "d", "aeTitle": "D", "hostIp": "1.2.3.4", "port": "104"},
            None,
        ),
        (
            "/api/config/destinationaetitle",
            {"name": "MYPACS", "aeTitle": "D", "hostIp": "1.2.3.4", "port": 104},
            None,
        ),
        ("/api/config/destinationaetitle", None, b""),
    ],
)
def test_bad_bodies_are_400_with_a_reason(adapter_factory, path, body, raw):
    a = adapter_factory()
    status, out = call(a.rest_port, "POST", path, body, raw=raw)
    assert status == 400, out
    assert out["error"]
    assert call(a.rest_port, "GET", "/health/live")[0] == 200


def test_unknown_routes(adapter_factory):
    a = adapter_factory()
    assert call(a.rest_port, "GET", "/api/config/nothing")[0] == 404
    assert call(a.rest_port, "DELETE", "/api/config/claraaetitle")[0] == 405
    assert call(a.rest_port, "PUT", "/api/config/claraaetitle", {})[0] == 405


def test_persisted_config_wins_after_restart(adapter_factory, store, tmp_path):
    a = adapter_factory()
    call(
        a.rest_port,
        "POST",
        "/api/config/destinationaetitle",
        {"name": "late", "hostIp": "127.0.0.1", "aeTitle": "LATE", "port": 104},
    )
    a.stop()
    b = adapter_factory(spool=tmp_path / "spool2")
    names = [d["name"] for d in call(b.rest_port, "GET", "/api/config/destinationaetitle")[1]]
    assert names == ["MYPACS", "late"]


def test_cli_create_list_delete(adapter_factory):
    a = adapter_factory()
    env = {**os.environ, "RADFLOW_ADAPTER_API": f"http://127.0.0.1:{a.rest_port}"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "radflow.cli.dicom", "dicom", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )

    r = cli("create", "aetitle", "--ae-title", "CLIAE", "--pipeline", "p1", "--timeout", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["processorSettings"]["pipeline-default"] == "p1"
    assert cli("create", "src", "--ae-title", "MOD1", "--host-ip", "127.0.0.1").returncode == 0
    assert (
        cli(
            "create",
            "dest",
            "--name",
            "out",
            "--ae-title",
            "OUT",
            "--host-ip",
            "127.0.0.1",
            "--port",
            "104",
        ).returncode
        == 0
    )
    listed = json.loads(cli("list", "aetitle").stdout)
    assert "CLIAE" in [x["aeTitle"] for x in listed]
    again = cli("create", "aetitle", "--ae-title", "CLIAE")
    assert again.returncode == 1 and "already" in again.stderr
    assert cli("delete", "aetitle", "--name", "CLIAE").returncode == 0
    assert cli("delete", "dest", "--name", "out").returncode == 0
    assert "CLIAE" not in [x["aeTitle"] for x in json.loads(cli("list", "aetitle").stdout)]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "radflow.cli.dicom",
            "dicom",
            "--api",
            "http://127.0.0.1:1",
            "list",
            "src",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "cannot reach" in bad.stderr


def test_an_ae_title_for_a_pipeline_the_engine_does_not_run_is_refused(adapter_factory):
    a = adapter_factory(pipelines="brain-tumor-segmentation,series-count")
    env = {**os.environ, "RADFLOW_ADAPTER_API": f"http://127.0.0.1:{a.rest_port}"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "radflow.cli.dicom",
            "dicom",
            "create",
            "aetitle",
            "--ae-title",
            "TYPO",
            "--pipeline",
            "brain-tumour-segmentation",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert r.returncode == 1
    assert r.stderr == (
        "error: 400: unknown pipeline 'brain-tumour-segmentation': the engine runs "
        "brain-tumor-segmentation, series-count\n"
    )
    assert "TYPO" not in [
        x["aeTitle"] for x in call(a.rest_port, "GET", "/api/config/claraaetitle")[1]
    ]
    status, entity = call(
        a.rest_port,
        "POST",
        "/api/config/claraaetitle",
        {"aeTitle": "COUNT", "processorSettings": {"pipeline-count": "series-count"}},
    )
    assert status == 201 and entity["processorSettings"]["pipeline-count"] == "series-count"
