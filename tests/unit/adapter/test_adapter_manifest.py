"""knative/adapter.yaml: Deployment + Service + SinkBinding + PVC + ConfigMap, consistent with the
code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radflow.adapter.config import parse_yaml_text
from radflow.adapter.settings import AdapterSettings


@pytest.fixture
def docs(repo_root: Path) -> dict[str, dict]:
    items = [
        d for d in yaml.safe_load_all((repo_root / "knative" / "adapter.yaml").read_text()) if d
    ]
    # two Services: DICOM (``Service``) and the REST API (``Service/api``)
    return {
        "Service/api" if d["metadata"]["name"].endswith("-api") else d["kind"]: d for d in items
    }


def test_sinkbinding_matches_the_crd_schema(docs, repo_root):
    jsonschema = pytest.importorskip("jsonschema")
    crd_path = (
        repo_root.parent
        / "shared"
        / "schemas"
        / "knative"
        / "sources.knative.dev_sinkbindings.yaml"
    )
    if not crd_path.exists():
        pytest.skip(f"schemas not found at {crd_path}")
    crd = yaml.safe_load(crd_path.read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"][
        "openAPIV3Schema"
    ]
    sb = docs["SinkBinding"]
    jsonschema.Draft7Validator(schema).validate(sb)
    assert sb["spec"]["subject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "radflow-dicom-adapter",
    }
    assert sb["spec"]["sink"]["ref"] == {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "name": "radflow",  # in the SinkBinding's own namespace: none is named
    }


def test_deployment_service_pvc_and_config_agree(docs, monkeypatch):
    dep = docs["Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "python",
        "-m",
        "radflow.adapter",
        "--config",
        "/etc/radflow/dicom-adapter.yaml",
    ]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    env = {e["name"]: e.get("value") for e in container["env"]}
    # literal env would override the engine's local values (engine/host: manifest env wins)
    assert "RADFLOW_ADAPTER_SPOOL_DIR" not in env and "RADFLOW_ADAPTER_HOST" not in env
    assert not any(k.startswith("RADFLOW_S3_") for k in env)
    # the local engine runs this Deployment and cannot resolve envFrom / valueFrom
    assert "envFrom" not in container and all("valueFrom" not in e for e in container["env"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for name in [k for k in list(__import__("os").environ) if k.startswith("RADFLOW_ADAPTER_")]:
        monkeypatch.delenv(name)
    assert Path(mounts["spool"]) == AdapterSettings().spool_dir
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert AdapterSettings().host == "0.0.0.0"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert (
        vols["spool"]["persistentVolumeClaim"]["claimName"]
        == docs["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert vols["config"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert mounts["config"] + "/dicom-adapter.yaml" == container["command"][-1]
    cfg = parse_yaml_text(docs["ConfigMap"]["data"]["dicom-adapter.yaml"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert cfg.port == ports["dicom"] and int(env["RADFLOW_ADAPTER_REST_PORT"]) == ports["http"]
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in docs["Service"]["spec"]["ports"]}
    assert svc_ports == {"dicom": (104, "dicom")}  # may become a LoadBalancer: DICOM only
    api = docs["Service/api"]["spec"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in api["ports"]} == {
        "http": (5000, "http")
    }
    assert api["type"] == "ClusterIP"  # the REST API never leaves the cluster network
    for svc in (docs["Service"], docs["Service/api"]):
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
