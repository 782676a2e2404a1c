"""knative/ as a cluster receives it (``kubectl kustomize``): movable, restricted, sized, wired.

Each test renders the manifests with kustomize into another namespace, the way an operator
deploys them, and checks the rendered objects, not the compiler's intent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from radflow.engine.compiler import DEAD_LETTERS, delivery_for, worst_case_seconds

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "radiology-ai"
pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl not installed (renders kustomize)"
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: {NAMESPACE}\nresources:\n- {os.path.relpath(REPO / 'knative', overlay)}\n"
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_templates(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in objs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job") or (
            d["kind"] == "Service" and d["apiVersion"].startswith("serving.knative.dev")
        ):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, node


def test_another_namespace_moves_everything_and_nothing_names_default(
    rendered: list[dict[str, Any]],
) -> None:
    assert rendered
    for d in rendered:
        assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]["name"]
        for path, value in walk(d):
            if path.endswith(".namespace"):
                # the Kafka broker's shared config is the one reference outside the namespace
                assert value in (NAMESPACE, "knative-eventing"), (d["metadata"]["name"], path)
                assert value != "default"
            if isinstance(value, str):
                assert ".default.svc" not in value and ".default:" not in value, (path, value)


def restricted_problems(where: str, pod: dict[str, Any]) -> list[str]:
    """Pod Security Standards, profile "restricted" (v1.30), for one PodSpec."""
    out = []
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"{where}: {flag}")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        allowed = {
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        }
        if not kinds <= allowed:
            out.append(f"{where}: volume {v['name']} of type {sorted(kinds - allowed)}")
    if pod.get("automountServiceAccountToken") is not False:
        out.append(f"{where}: the ServiceAccount token is mounted")
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = c.get("securityContext") or {}
        name = f"{where}/{c['name']}"
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot is not true")
        if 0 in (sc.get("runAsUser"), pod_sc.get("runAsUser")):
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp!r}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities not dropped (ALL)")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{name}: hostPort")
        # beyond the profile: nothing written outside volumes
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: root filesystem is writable")
    return out


def test_every_pod_template_satisfies_pod_security_restricted(
    rendered: list[dict[str, Any]],
) -> None:
    pods = list(pod_templates(rendered))
    assert len(pods) >= 8
    problems = [p for where, pod in pods for p in restricted_problems(where, pod)]
    assert problems == [], "\n".join(problems)


def test_the_checker_catches_an_unrestricted_pod() -> None:
    pod = {"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": [{"name": "c"}]}
    problems = " ".join(restricted_problems("x", pod))
    for word in ("hostPath", "token", "allowPrivilegeEscalation", "runAsNonRoot", "seccomp"):
        assert word in problems


def test_writable_paths_are_size_limited_empty_dirs_and_resources_are_complete(
    rendered: list[dict[str, Any]],
) -> None:
    for where, pod in pod_templates(rendered):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, where  # the runtime stages studies under /tmp
            assert volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"], where
            if c["image"].startswith("radflow/"):  # the images' HOME: gunicorn's control socket
                assert volumes[mounts["/home/radflow"]]["emptyDir"]["sizeLimit"], where
            res = c["resources"]
            assert {"cpu", "memory", "ephemeral-storage"} <= set(res["requests"]), where
            assert {"memory", "ephemeral-storage"} <= set(res["limits"]), where
        assert pod["serviceAccountName"] == "radflow", where
    adapter = dict(pod_templates(rendered))["Deployment/radflow-dicom-adapter"]
    assert adapter["securityContext"]["fsGroup"] == 10001  # the non-root user owns its spool
    assert any(
        d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "radflow" for d in rendered
    )


def test_every_workload_reads_the_store_only_from_the_secret(
    rendered: list[dict[str, Any]],
) -> None:
    for where, pod in pod_templates(rendered):
        for c in pod["containers"]:
            assert {"secretRef": {"name": "radflow-s3"}} in c.get("envFrom", []), where
            literal = [e["name"] for e in c.get("env", []) if e["name"].startswith("RADFLOW_S3_")]
            assert literal == [], where


def test_the_dead_letter_sink_is_subscribed_to_nothing_it_dead_letters(
    rendered: list[dict[str, Any]],
) -> None:
    brokers = [d for d in rendered if d["kind"] == "Broker"]
    triggers = [d for d in rendered if d["kind"] == "Trigger"]
    sinks = {b["spec"]["delivery"]["deadLetterSink"]["ref"]["name"] for b in brokers}
    sinks |= {t["spec"]["delivery"]["deadLetterSink"]["ref"]["name"] for t in triggers}
    assert sinks == {DEAD_LETTERS}
    subscribers = {t["spec"]["subscriber"]["ref"]["name"] for t in triggers}
    assert DEAD_LETTERS not in subscribers
    services = {d["metadata"]["name"] for d in rendered if d["kind"] == "Service"}
    assert DEAD_LETTERS in services


def test_every_trigger_delivery_is_derived_from_its_subscribers_timeout(
    rendered: list[dict[str, Any]],
) -> None:
    timeouts = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["timeoutSeconds"]
        for d in rendered
        if d["kind"] == "Service" and d["apiVersion"].startswith("serving")
    }
    for t in (d for d in rendered if d["kind"] == "Trigger"):
        timeout = timeouts[t["spec"]["subscriber"]["ref"]["name"]]
        delivery = t["spec"]["delivery"]
        assert delivery == delivery_for(timeout), t["metadata"]["name"]
        assert worst_case_seconds(delivery) <= 2400, t["metadata"]["name"]


def test_the_rest_port_is_cluster_internal_and_network_policies_cover_every_pod(
    rendered: list[dict[str, Any]],
) -> None:
    for svc in (d for d in rendered if d["kind"] == "Service" and d["apiVersion"] == "v1"):
        ports = {p.get("targetPort") for p in svc["spec"]["ports"]} | {
            p["port"] for p in svc["spec"]["ports"]
        }
        if "http" in ports or 5000 in ports:
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
            assert "dicom" not in ports, "the REST API shares no Service with DICOM"
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"]["ingress"]]
    assert deny, "a default deny for ingress"
    adapter = next(p for p in policies if p["metadata"]["name"] == "radflow-dicom-adapter")
    rest = [
        r for r in adapter["spec"]["ingress"] if {"protocol": "TCP", "port": 5000} in r["ports"]
    ]
    assert rest and all(r.get("from") for r in rest), "the REST port only from labelled pods"
    functions = next(p for p in policies if p["metadata"]["name"] == "radflow-functions")
    sources = functions["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
    assert "knative-serving" in sources["matchExpressions"][0]["values"]
    # Triton is a Knative Service: its stage reaches it through the activator / gateway, so its
    # pods admit Knative's data plane only, and its pods carry the label the policy selects
    triton = next(p for p in policies if p["metadata"]["name"].endswith("-triton"))
    admitted = triton["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"]
    assert admitted[0]["values"] == ["knative-serving", "kourier-system"]
    selected = triton["spec"]["podSelector"]["matchLabels"]
    server = next(
        d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"].endswith("-triton")
    )
    assert selected.items() <= server["spec"]["template"]["metadata"]["labels"].items()
