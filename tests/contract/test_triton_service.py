"""Triton compiles to a scale-to-zero Knative Service: GPU profile in knative/, CPU in dev-cpu."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from radflow.engine.compiler import compile_pipelines
from radflow.engine.manifest_validation import Validator, default_schemas_dir
from radflow.sdk.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
NAME = "brain-tumor-segmentation-triton"
SCHEMAS = default_schemas_dir(REPO)


def _triton(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (svc,) = [d for d in objects if d and d["kind"] == "Service" and d["metadata"]["name"] == NAME]
    return svc


def _kustomize(folder: str) -> list[dict[str, Any]]:
    text = subprocess.run(
        ["kubectl", "kustomize", folder], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def _container(svc: dict[str, Any]) -> dict[str, Any]:
    (container,) = svc["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_triton_is_a_knative_service_with_min_scale_zero_probes_and_shm() -> None:
    text = (REPO / "knative/pipelines/brain-tumor-segmentation/clara-services.yaml").read_text()
    svc = _triton(list(yaml.safe_load_all(text)))
    assert svc["apiVersion"] == "serving.knative.dev/v1" and svc["kind"] == "Service"
    assert "Deployment" not in text and "persistentVolumeClaim" not in text
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "1"
    container = _container(svc)
    assert container["ports"] == [{"name": "http1", "containerPort": 8000}]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    pod = svc["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["emptyDir"].get("medium") == "Memory"]
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "1024Mi"}
    assert {"name": volume["name"], "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert (
        "--model-repository=s3://$(RADFLOW_S3_ENDPOINT_URL)/$(RADFLOW_S3_BUCKET)/models"
        in container["args"]
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == "$(RADFLOW_S3_ACCESS_KEY_ID)"
    assert env["AWS_SECRET_ACCESS_KEY"] == "$(RADFLOW_S3_SECRET_ACCESS_KEY)"


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl not installed (renders kustomize)"
)
def test_gpu_profile_holds_a_gpu_and_dev_cpu_renders_the_cpu_config() -> None:
    gpu = _triton(_kustomize("knative"))
    container = _container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--model-config-name=gpu" in container["args"]
    assert gpu["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # the kubelet expands $(RADFLOW_S3_*) from the store Secret
    assert container["envFrom"] == [{"secretRef": {"name": "radflow-s3"}}]

    cpu = _triton(_kustomize("deploy/overlays/dev-cpu"))
    container = _container(cpu)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "nodeSelector" not in cpu["spec"]["template"]["spec"]
    assert "--model-config-name=cpu" in container["args"]
    assert "--model-config-name=gpu" not in container["args"]
    # both named configs exist in the repository Triton reads
    for name in ("cpu", "gpu"):
        assert (REPO / f"models/triton/brain_tumor_seg/configs/{name}.pbtxt").is_file()
    assert (
        'backend: "python"'
        in (REPO / "models/triton/brain_tumor_seg/configs/cpu.pbtxt").read_text()
    )
    gpu_config = (REPO / "models/triton/brain_tumor_seg/configs/gpu.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in gpu_config and "KIND_GPU" in gpu_config


PIPELINE = """\
api-version: 0.4.0
name: demo
operators:
  - name: infer
    container: {{image: radflow/triton-infer}}
    input: [{{path: /input}}]
    output: [{{path: /output}}]
    services:
      - name: triton
        container: {{image: nvcr.io/nvidia/tritonserver, tag: 24.10-py3,
                    command: [tritonserver, --model-repository=/models]}}
{extra}
"""


def _compile(tmp_path: Path, extra: str) -> dict[str, Any]:
    src = tmp_path / "demo.yaml"
    src.write_text(PIPELINE.format(extra=extra))
    files = compile_pipelines([src], tmp_path / "knative", root=tmp_path)
    return _triton_named(files[tmp_path / "knative/pipelines/demo/clara-services.yaml"])


def _triton_named(text: str) -> dict[str, Any]:
    (svc,) = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Service"]
    return dict(svc)


def test_min_scale_and_shm_are_configurable_per_pipeline(tmp_path: Path) -> None:
    svc = _compile(
        tmp_path,
        "        scaling: {min-scale: 1, max-scale: 2, retention: 5m}\n"
        "        shm: 256\n"
        "        connections: {http: [{name: NVIDIA_TRITON_HTTPURI, port: 8000}]}",
    )
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "1"
    assert annotations["autoscaling.knative.dev/max-scale"] == "2"
    assert annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "5m"
    volumes = svc["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["emptyDir"].get("medium") == "Memory"]
    assert volume["emptyDir"]["sizeLimit"] == "256Mi"
    # no GPU requested: the CPU config and no GPU resources, in the base already
    container = _container(svc)
    assert "--model-config-name=cpu" in container["args"]
    assert "nvidia.com/gpu" not in str(container.get("resources"))
    if (SCHEMAS / "knative").is_dir():
        assert Validator(SCHEMAS).validate(svc) == []


def test_grpc_only_triton_serves_h2c(tmp_path: Path) -> None:
    svc = _compile(
        tmp_path, "        connections: {grpc: [{name: NVIDIA_TRITON_GRPCURI, port: 8001}]}"
    )
    container = _container(svc)
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001}]
    assert container["readinessProbe"]["tcpSocket"] == {"port": 8001}
    if (SCHEMAS / "knative").is_dir():
        assert Validator(SCHEMAS).validate(svc) == []


def test_http_and_grpc_together_are_refused_naming_the_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="serves one port"):
        _compile(
            tmp_path,
            "        connections:\n"
            "          http: [{name: NVIDIA_TRITON_HTTPURI, port: 8000}]\n"
            "          grpc: [{name: NVIDIA_TRITON_GRPCURI, port: 8001}]",
        )


def test_min_scale_above_max_scale_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min-scale 2 is greater than max-scale 1"):
        _compile(tmp_path, "        scaling: {min-scale: 2}")
