"""The pure manifest -> process mapping of the function host (engine/host/spec.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from radflow.engine.host.spec import (
    binding_matches,
    ce_overrides_json,
    container_argv,
    expand,
    parse_deployment,
    parse_service,
    sink_env,
)
from radflow.sdk.errors import ConfigError

PY = sys.executable


def service(
    container: dict[str, Any], annotations: dict[str, str] | None = None, **pod: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "seg-writer"},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"containers": [container], **pod},
            }
        },
    }


FN = {
    "image": "radflow/seg-writer",
    "env": [
        {"name": "FUNCTION_TARGET", "value": "handle"},
        {"name": "FUNCTION_SOURCE", "value": "src/radflow/functions/entry.py"},
    ],
}


def test_defaults_follow_knative() -> None:
    spec = parse_service(service(FN))
    assert (spec.timeout_s, spec.container_concurrency, spec.min_scale, spec.max_scale) == (
        300,
        0,
        0,
        0,
    )
    assert (spec.window_s, spec.retention_s, spec.slot_limit, spec.revision) == (
        60,
        0,
        100,
        "seg-writer-00001",
    )


def test_annotations_and_durations() -> None:
    ann = {
        f"autoscaling.knative.dev/{k}": v
        for k, v in {
            "min-scale": "1",
            "max-scale": "3",
            "window": "1m30s",
            "scale-to-zero-pod-retention-period": "500ms",
        }.items()
    }
    spec = parse_service(service(FN, ann, containerConcurrency=1, timeoutSeconds=600))
    assert (spec.min_scale, spec.max_scale, spec.window_s, spec.retention_s, spec.slot_limit) == (
        1,
        3,
        90,
        0.5,
        1,
    )


@pytest.mark.parametrize(
    ("pod", "annotations", "match"),
    [
        ({"timeoutSeconds": 601}, {}, r"timeoutSeconds: 601 is out of range"),
        ({"containerConcurrency": -1}, {}, r"containerConcurrency"),
        (
            {},
            {"autoscaling.knative.dev/min-scale": "3", "autoscaling.knative.dev/max-scale": "2"},
            "min-scale 3 is greater",
        ),
        ({}, {"autoscaling.knative.dev/window": "soon"}, "not a duration"),
    ],
)
def test_invalid_serving_settings_name_the_service(
    pod: dict[str, Any], annotations: dict[str, str], match: str
) -> None:
    with pytest.raises(ConfigError, match=f"Service default/seg-writer.*{match}"):
        parse_service(service(FN, annotations, **pod))


def test_value_from_and_reserved_env_are_refused() -> None:
    secret = {
        **FN,
        "env": [
            *FN["env"],
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    }
    with pytest.raises(ConfigError, match="seg-writer: env TOKEN uses valueFrom"):
        parse_service(service(secret))
    reserved = {**FN, "env": [*FN["env"], {"name": "K_SERVICE", "value": "x"}]}
    with pytest.raises(ConfigError, match="K_SERVICE is reserved"):
        parse_service(service(reserved))


def test_function_image_runs_functions_framework() -> None:
    env = {
        "FUNCTION_TARGET": "handle",
        "FUNCTION_SOURCE": "src/radflow/functions/entry.py",
        "PORT": "8123",
    }
    assert container_argv(FN, env, PY, "127.0.0.1", "x") == [
        PY,
        "-m",
        "functions_framework",
        "--target",
        "handle",
        "--source",
        "src/radflow/functions/entry.py",
        "--signature-type",
        "http",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
    ]


def test_command_resolves_to_the_interpreters_venv() -> None:
    bin_dir = Path(PY).parent
    argv = container_argv(
        {"command": ["python", "-m", "x"], "args": ["--port", "$(PORT)"]},
        {"PORT": "9"},
        PY,
        "h",
        "x",
    )
    assert argv == [PY, "-m", "x", "--port", "9"]
    ff = bin_dir / "functions-framework"
    if (
        ff.exists()
    ):  # a console script runs through the interpreter (copied venvs keep stale #! lines)
        assert container_argv({"command": ["functions-framework"]}, {}, PY, "h", "x") == [
            PY,
            str(ff),
        ]
    assert container_argv({"command": ["sh", "-c", "echo"]}, {}, PY, "h", "x") == [
        "sh",
        "-c",
        "echo",
    ]


def test_container_without_command_or_function_env_is_refused() -> None:
    with pytest.raises(ConfigError, match="no command and no FUNCTION_TARGET"):
        container_argv({"image": "nginx"}, {}, PY, "h", "Service default/web")


def test_kubernetes_variable_expansion() -> None:
    assert expand("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"


def deployment(name: str, labels: dict[str, str], namespace: str = "default") -> Any:
    return parse_deployment(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"template": {"spec": {"containers": [{"image": "i", "command": ["true"]}]}}},
        }
    )


def binding(subject: dict[str, Any], **spec: Any) -> dict[str, Any]:
    subject = {"apiVersion": "apps/v1", "kind": "Deployment", **subject}
    return {
        "kind": "SinkBinding",
        "metadata": {"name": "b", "namespace": "default"},
        "spec": {"subject": subject, **spec},
    }


def test_sinkbinding_subject_by_name_selector_and_namespace() -> None:
    adapter = deployment("dicom-adapter", {"app": "dicom", "tier": "edge"})
    assert binding_matches(binding({"name": "dicom-adapter"}), adapter)
    assert not binding_matches(binding({"name": "other"}), adapter)
    assert binding_matches(binding({"selector": {"matchLabels": {"app": "dicom"}}}), adapter)
    assert not binding_matches(binding({"selector": {"matchLabels": {"app": "web"}}}), adapter)
    expr = {
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["edge"]},
            {"key": "x", "operator": "DoesNotExist"},
        ]
    }
    assert binding_matches(binding({"selector": expr}), adapter)
    assert not binding_matches(
        binding({"name": "dicom-adapter"}), deployment("dicom-adapter", {}, namespace="other")
    )
    assert not binding_matches(binding({"name": "dicom-adapter", "kind": "StatefulSet"}), adapter)


def test_sinkbinding_subject_may_be_a_knative_service_as_in_knative() -> None:
    manifest = service(FN)
    manifest["metadata"]["labels"] = {"radflow.dev/function": "job-tracker"}
    tracker = parse_service(manifest)  # named seg-writer, in the default namespace
    ksvc = {"apiVersion": "serving.knative.dev/v1", "kind": "Service"}
    assert binding_matches(binding({**ksvc, "name": "seg-writer"}), tracker)
    assert not binding_matches(binding({**ksvc, "name": "other"}), tracker)
    selector = {"matchLabels": {"radflow.dev/function": "job-tracker"}}
    assert binding_matches(binding({**ksvc, "selector": selector}), tracker)
    # a Deployment subject of the same name, or a core v1 Service, is not this Knative Service
    assert not binding_matches(binding({"name": "seg-writer"}), tracker)
    assert not binding_matches(
        binding({"apiVersion": "v1", "kind": "Service", "name": "seg-writer"}), tracker
    )
    # and a Knative Service subject never binds a Deployment
    assert not binding_matches(
        binding({**ksvc, "name": "dicom-adapter"}), deployment("dicom-adapter", {})
    )
    sink = {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "radflow"}}
    env = sink_env(binding({**ksvc, "name": "seg-writer"}, sink=sink), lambda d: d["ref"]["name"])
    assert env == {"K_SINK": "radflow", "K_CE_OVERRIDES": ""}
    with pytest.raises(ConfigError, match="SinkBinding b: spec.sink is required"):
        sink_env(binding({**ksvc, "name": "seg-writer"}), lambda d: "")


def test_function_host_gives_a_bound_service_k_sink_and_needs_a_resolver(tmp_path: Path) -> None:
    from radflow.engine.host import FunctionHost

    ksvc = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "seg-writer"}
    bound = binding(ksvc, sink={"uri": "http://broker.example/default/radflow"})
    with pytest.raises(ConfigError, match="no way to resolve its sink"):
        FunctionHost(
            services=[service(FN)], workdir=tmp_path, state_dir=tmp_path, sinkbindings=[bound]
        )
    with pytest.raises(ConfigError, match="subject of several SinkBindings"):
        FunctionHost(
            services=[service(FN)],
            workdir=tmp_path,
            state_dir=tmp_path,
            sinkbindings=[bound, bound],
            resolve_sink=lambda d, ns: str(d["uri"]),
        )


def test_ce_overrides_like_go_json_marshal() -> None:
    assert ce_overrides_json(binding({"name": "x"})) == ""
    assert ce_overrides_json(binding({"name": "x"}, ceOverrides={})) == "{}"
    assert ce_overrides_json(
        binding({"name": "x"}, ceOverrides={"extensions": {"z": 1, "a": "é&"}})
    ) == ('{"extensions":{"a":"é\\u0026","z":"1"}}')


def test_function_host_refuses_an_unmappable_container_before_starting(tmp_path: Path) -> None:
    from radflow.engine.host import FunctionHost

    with pytest.raises(
        ConfigError, match="Service default/seg-writer: container 'nginx' has no command"
    ):
        FunctionHost(
            services=[service({"name": "nginx", "image": "nginx"})],
            workdir=tmp_path,
            state_dir=tmp_path,
        )


def test_probe_path_and_embedded_kind_come_from_the_manifest() -> None:
    triton = service(
        {
            "name": "triton",
            "image": "nvcr.io/nvidia/tritonserver:24.10-py3",
            "command": ["tritonserver"],
            "startupProbe": {"httpGet": {"path": "/v2/health/ready"}},
            "readinessProbe": {"httpGet": {"path": "/other"}},
        }
    )
    triton["metadata"]["annotations"] = {"radflow.dev/embedded": "triton"}
    spec = parse_service(triton)
    assert spec.readiness_path == "/v2/health/ready"  # the startup probe gates readiness first
    assert spec.embedded == "triton"
    assert parse_service(service(FN)).embedded is None


def test_grpc_h2c_services_are_refused_locally_naming_the_port() -> None:
    with pytest.raises(ConfigError, match="port name h2c .*HTTP/1.1 only"):
        parse_service(service({**FN, "ports": [{"name": "h2c", "containerPort": 8001}]}))


def test_function_host_refuses_an_embedded_kind_without_launcher(tmp_path: Path) -> None:
    from radflow.engine.host import FunctionHost

    svc = service({"name": "x", "image": "vendor/server", "command": ["server"]})
    svc["metadata"]["annotations"] = {"radflow.dev/embedded": "no-such-kind"}
    with pytest.raises(ConfigError, match="'no-such-kind' has no local launcher"):
        FunctionHost(services=[svc], workdir=tmp_path, state_dir=tmp_path)
