"""knative/ and skaffold.yaml: schema-valid, admission-valid, stable, and wired consistently.

Schemas come from ``../shared/schemas`` (Knative CRDs, skaffold v4beta14); tests that need them
skip with the reason when that folder is absent, and fail with it in CI (``CI=true``, see
tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from radflow.engine.compiler import compile_pipelines, stale_files
from radflow.engine.manifest_validation import Validator, default_schemas_dir, required_features
from radflow.functions import registry
from radflow.sdk.events import JOIN_READY, EventType, join_attribute
from radflow.sdk.pipeline import StageSpec, function_for_image, last_upstreams, load_pipeline

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = default_schemas_dir(REPO)
FINAL_TYPES = {EventType.JOB_COMPLETED.value, EventType.JOB_FAILED.value}
needs_schemas = pytest.mark.skipif(
    not (SCHEMAS / "knative").is_dir(),
    reason=f"Knative/skaffold schemas not found at {SCHEMAS} (../shared/schemas)",
)


def manifest_files() -> list[Path]:
    return sorted(p for p in (REPO / "knative").rglob("*.yaml") if p.name != "kustomization.yaml")


def docs() -> list[dict[str, Any]]:
    return [d for p in manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]


def is_knative_service(d: dict[str, Any]) -> bool:
    return d["kind"] == "Service" and d["apiVersion"].startswith("serving.knative.dev")


def is_operator_service(d: dict[str, Any]) -> bool:
    """A stage's Knative Service (not a model server such as Triton)."""
    return is_knative_service(d) and "radflow.dev/stage" in d["metadata"].get("labels", {})


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    if not is_knative_service(svc):
        return {}
    return {
        e["name"]: e["value"]
        for e in svc["spec"]["template"]["spec"]["containers"][0].get("env", [])
    }


@needs_schemas
def test_every_manifest_validates_against_crd_schemas_and_admission_rules() -> None:
    validator = Validator(SCHEMAS)
    objs = docs()
    assert sum(validator.knows(d) for d in objs) >= 10
    problems = validator.validate_files(manifest_files())
    assert problems == [], "\n".join(map(str, problems))


@needs_schemas
def test_skaffold_yaml_validates_against_the_skaffold_schema() -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert Validator(SCHEMAS).validate_skaffold(config) == []


@needs_schemas
def test_validator_catches_what_the_schemas_and_webhooks_would() -> None:
    v = Validator(SCHEMAS)
    svc = next(
        d for d in docs() if d["kind"] == "Service" and d["apiVersion"].startswith("serving")
    )
    bad = json.loads(json.dumps(svc))
    pod = bad["spec"]["template"]["spec"]
    pod["containerConcurency"] = pod.pop("containerConcurrency")
    pod["timeoutSeconds"] = 900
    msgs = [p.message for p in v.validate(bad)]
    assert any("'containerConcurency' was unexpected" in m for m in msgs), msgs
    assert any("timeoutSeconds: 900 must be within 1..600" in m for m in msgs), msgs
    typed = json.loads(json.dumps(svc))
    typed["spec"]["template"]["spec"]["containerConcurrency"] = "one"
    assert any("'one' is not of type 'integer'" in p.message for p in v.validate(typed))
    trig = next(d for d in docs() if d["kind"] == "Trigger")
    two = json.loads(json.dumps(trig))
    two["spec"]["filters"] = [{"exact": {"type": "x"}, "suffix": {"radflow_stage": "y"}}]
    msgs = [p.message for p in v.validate(two)]
    assert "spec.filters[0]: exactly one dialect per filter entry, found 2 (exact, suffix)" in msgs
    assert (
        "spec.filters[0].suffix.radflow_stage: attribute names must match ^[a-z][a-z0-9]*$" in msgs
    )
    gpu = {
        **svc,
        "spec": {
            "template": {"spec": {**svc["spec"]["template"]["spec"], "nodeSelector": {"a": "b"}}}
        },
    }
    assert any(
        "kubernetes.podspec-nodeselector" in p.message
        for p in Validator(SCHEMAS, enabled_features=frozenset()).validate(gpu)
    )
    broker = next(d for d in docs() if d["kind"] == "Broker")
    slow = json.loads(json.dumps(broker))
    slow["spec"]["delivery"].update(backoffPolicy="fibonacci", backoffDelay="2s")
    msgs = [p.message for p in v.validate(slow)]
    assert "spec.delivery.backoffPolicy: 'fibonacci' must be 'linear' or 'exponential'" in msgs
    assert "spec.delivery.backoffDelay: '2s' is not an ISO-8601 duration such as PT2S" in msgs


def test_compile_is_stable_and_matches_the_committed_files(tmp_path: Path) -> None:
    pipelines = sorted((REPO / "pipelines").glob("*.yaml"))
    first = compile_pipelines(pipelines, tmp_path / "a" / "knative", root=REPO)
    second = compile_pipelines(pipelines, tmp_path / "b" / "knative", root=REPO)
    rel = lambda files, base: {p.relative_to(base).as_posix(): t for p, t in files.items()}  # noqa: E731
    assert rel(first, tmp_path / "a") == rel(second, tmp_path / "b")
    committed = compile_pipelines(
        pipelines, REPO / "knative", root=REPO, skaffold=REPO / "skaffold.yaml"
    )
    assert REPO / "skaffold.yaml" in committed
    drift = [
        str(p.relative_to(REPO))
        for p, t in committed.items()
        if not p.exists() or p.read_text() != t
    ]
    drift += [str(p.relative_to(REPO)) for p in stale_files(committed, REPO / "knative")]
    assert drift == [], f"run `radflow pipeline compile` and commit: {drift}"


def _emitted() -> list[dict[str, str]]:
    """Every (type + extensions) combination some component emits, from the manifests."""
    out = []
    pipelines = {
        env_of(s)["RADFLOW_PIPELINE"]
        for s in docs()
        if s["kind"] == "Service" and "RADFLOW_PIPELINE" in env_of(s)
    }
    for p in pipelines:  # the DICOM adapter: one job request per pipeline
        for t in (EventType.STUDY_RECEIVED, EventType.STUDY_REVISED):
            out.append({"type": t.value, "radflowpipeline": p})
        for t in FINAL_TYPES:  # the job tracker
            out.append({"type": t, "radflowpipeline": p})
    for svc in docs():
        env = (
            env_of(svc)
            if svc["kind"] == "Service" and svc["apiVersion"].startswith("serving")
            else {}
        )
        if "RADFLOW_STAGE_SPEC" in env:
            spec = StageSpec.model_validate_json(env["RADFLOW_STAGE_SPEC"])
            for t in (EventType.STAGE_COMPLETED, EventType.STAGE_FAILED):
                out.append(
                    {"type": t.value, "radflowpipeline": spec.pipeline, "radflowstage": spec.stage}
                )
            for stage in spec.joins or {}:  # the completion that completes a fan-in's inputs
                out.append(
                    {
                        "type": EventType.STAGE_COMPLETED.value,
                        "radflowpipeline": spec.pipeline,
                        "radflowstage": spec.stage,
                        join_attribute(stage): JOIN_READY,
                    }
                )
    return out


def _matches(trigger: dict[str, Any], attrs: dict[str, str]) -> bool:
    return all(
        attrs.get(k) == v for f in trigger["spec"].get("filters", []) for k, v in f["exact"].items()
    )


def test_every_trigger_filter_matches_an_event_some_component_emits() -> None:
    emitted = _emitted()
    triggers = [d for d in docs() if d["kind"] == "Trigger"]
    assert triggers
    for t in triggers:
        assert all(set(f) == {"exact"} for f in t["spec"]["filters"]), t["metadata"]["name"]
        assert any(_matches(t, e) for e in emitted), (
            f"{t['metadata']['name']} matches no emitted event"
        )


def test_every_emitted_event_has_a_consumer_or_is_final() -> None:
    triggers = [d for d in docs() if d["kind"] == "Trigger"]
    for e in _emitted():
        if e["type"] in FINAL_TYPES:
            assert not any(_matches(t, e) for t in triggers), f"final type {e} must not be consumed"
            continue
        assert any(_matches(t, e) for t in triggers), f"nobody consumes {e}"


def test_triggers_are_exactly_the_dag_edges_and_never_loop() -> None:
    services = {
        d["metadata"]["name"]: d
        for d in docs()
        if d["kind"] == "Service" and d["apiVersion"].startswith("serving")
    }
    triggers = [d for d in docs() if d["kind"] == "Trigger"]
    for name, svc in services.items():
        env = env_of(svc)
        if "RADFLOW_STAGE_SPEC" not in env:
            continue
        spec = StageSpec.model_validate_json(env["RADFLOW_STAGE_SPEC"])
        mine = [t for t in triggers if t["spec"]["subscriber"]["ref"]["name"] == name]
        ups = sorted(
            f["exact"]["radflowstage"]
            for t in mine
            for f in t["spec"]["filters"]
            if "radflowstage" in f["exact"]
        )
        dags = json.loads(env_of(services["job-tracker"])["RADFLOW_DAGS"])
        assert ups == last_upstreams(dags[spec.pipeline], spec.stage), name
        assert set(ups) <= set(spec.upstream)
        own = {
            "type": EventType.STAGE_COMPLETED.value,
            "radflowpipeline": spec.pipeline,
            "radflowstage": spec.stage,
        }
        assert not any(_matches(t, own) for t in mine), f"{name} would consume its own reply"


def test_services_match_the_pipeline_definitions() -> None:
    services = {
        d["metadata"]["name"]: d
        for d in docs()
        if d["kind"] == "Service" and d["apiVersion"].startswith("serving")
    }
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for op in raw["operators"]:
            svc = services[f"{raw['name']}-{op['name']}"]
            env = env_of(svc)
            assert {k: env[k] for k in op.get("variables", {})} == {
                k: str(v) for k, v in op.get("variables", {}).items()
            }
            pod = svc["spec"]["template"]["spec"]
            assert pod["containerConcurrency"] == 1 and pod["timeoutSeconds"] <= 600
            annotations = svc["spec"]["template"]["metadata"]["annotations"]
            assert annotations["autoscaling.knative.dev/min-scale"] == "0"
            if op.get("services"):
                assert pod["timeoutSeconds"] == 600  # inference gets the maximum
                # the model server is a Knative Service: its short name (resolved in the
                # namespace deployed to), port 80
                triton = f"{raw['name']}-triton:80"
                assert env["NVIDIA_TRITON_HTTPURI"] == triton
                assert triton.split(":")[0] in services
            gpu = (op.get("requests") or {}).get("gpu", 0)
            assert (
                "nvidia.com/gpu" in pod["containers"][0].get("resources", {}).get("limits", {})
            ) == bool(gpu)
            assert ("nodeSelector" in pod) == bool(gpu)


def test_gpu_operator_compiles_to_gpu_limits_and_placement(tmp_path: Path) -> None:
    src = tmp_path / "gpu.yaml"
    src.write_text(
        "api-version: 0.4.0\nname: gpu-demo\noperators:\n"
        "  - name: seg\n"
        "    container: {image: clara/ai-seg, tag: '1.0', command: [python3, /app/seg.py]}\n"
        "    requests: {gpu: 1, memory: 8192}\n"
        "    input: [{path: /input}]\n    output: [{path: /output}]\n"
    )
    files = compile_pipelines([src], tmp_path / "knative", root=tmp_path)
    (svc,) = list(yaml.safe_load_all(files[tmp_path / "knative/pipelines/gpu-demo/services.yaml"]))[
        :1
    ]
    pod = svc["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {
        "memory": "8192Mi",
        "ephemeral-storage": "8768Mi",
        "nvidia.com/gpu": "1",
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["timeoutSeconds"] == 600
    assert required_features([svc]) == {
        "kubernetes.podspec-nodeselector",
        "kubernetes.podspec-tolerations",
    }
    spec = StageSpec.model_validate_json(env_of(svc)["RADFLOW_STAGE_SPEC"])
    assert spec.command == ["python3", "/app/seg.py"]
    assert env_of(svc)["FUNCTION_SOURCE"] == "src/radflow/functions/entry.py"
    assert env_of(svc)["RADFLOW_OPERATOR"] == "clara_operator"
    if (SCHEMAS / "knative").is_dir():
        assert Validator(SCHEMAS).validate(svc) == []


def test_manifests_are_runnable_by_the_engine_as_written() -> None:
    """The engine's function host resolves no Secrets: env values are literal, no envFrom."""
    for svc in filter(is_knative_service, docs()):
        for c in svc["spec"]["template"]["spec"]["containers"]:
            assert "envFrom" not in c and all(
                "value" in e and "valueFrom" not in e for e in c.get("env", [])
            ), svc["metadata"]["name"]


def test_every_image_of_a_workload_has_a_skaffold_artifact_and_dockerfile() -> None:
    """Knative Services and the adapter's Deployment: every radflow image is built by skaffold
    (the Clara services' own images, Triton's, are pulled, not built)."""
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    images = {
        c["image"]
        for d in docs()
        if is_knative_service(d) or d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("radflow/")
    }
    assert "radflow/dicom-adapter" in images
    for image in images:
        assert image in artifacts, f"{image} has no skaffold artifact"
        a = artifacts[image]
        assert (REPO / a["context"] / a["docker"]["dockerfile"]).is_file()
        if image == "radflow/dicom-adapter":
            assert a["docker"]["dockerfile"] == "docker/adapter.Dockerfile"
            continue
        fn = a["docker"]["buildArgs"]["OPERATOR"]
        assert function_for_image(image) == fn
    assert set(artifacts) == {e.image for e in registry.OPERATORS} | {"radflow/dicom-adapter"}


def test_a_bring_your_own_operator_gets_a_wrapped_image_artifact(tmp_path: Path) -> None:
    """A pipeline's non-radflow image runs as ``radflow/byo-<service>``: skaffold builds that
    from the wrapper Dockerfile on the operator's own image, so the name the Service uses exists."""
    skaffold = tmp_path / "skaffold.yaml"
    skaffold.write_text((REPO / "skaffold.yaml").read_text())
    example = REPO / "pipelines/examples/fan-in-example.yaml"
    files = compile_pipelines([example], tmp_path / "knative", root=REPO, skaffold=skaffold)
    artifacts = {a["image"]: a for a in yaml.safe_load(files[skaffold])["build"]["artifacts"]}
    services = yaml.safe_load_all(next(t for p, t in files.items() if p.name == "services.yaml"))
    for svc in services:
        image = svc["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith("radflow/byo-"), image
        docker = artifacts[image]["docker"]
        assert docker["dockerfile"] == "docker/clara-operator-wrapper.Dockerfile"
        annotated = svc["metadata"]["annotations"]["radflow.dev/operator-image"]
        assert docker["buildArgs"] == {"OPERATOR_IMAGE": annotated}


def test_every_service_runs_the_one_entry_point_for_a_registered_operator() -> None:
    services = [d for d in docs() if is_operator_service(d)]
    assert services
    for svc in services:
        env = env_of(svc)
        assert env["FUNCTION_SOURCE"] == registry.ENTRY_SOURCE, svc["metadata"]["name"]
        assert env["FUNCTION_TARGET"] == registry.ENTRY_TARGET
        entry = registry.get(env["RADFLOW_OPERATOR"])
        assert svc["spec"]["template"]["spec"]["containers"][0]["image"] == entry.image
    assert (REPO / registry.ENTRY_SOURCE).is_file()


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl not installed (renders kustomize)"
)
def test_kustomize_renders_the_gpu_base_and_the_cpu_overlay() -> None:
    base = list(
        yaml.safe_load_all(
            subprocess.run(
                ["kubectl", "kustomize", "knative"],
                cwd=REPO,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    )
    assert len(base) == len(docs())
    # the store Secret is added on clusters only, to every workload
    for svc in [d for d in base if is_knative_service(d) or d["kind"] == "Deployment"]:
        assert svc["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
            {"secretRef": {"name": "radflow-s3"}}
        ], svc["metadata"]["name"]
    cpu_text = subprocess.run(
        ["kubectl", "kustomize", "deploy/overlays/dev-cpu"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu = list(yaml.safe_load_all(cpu_text))
    assert len(cpu) == len(base)
    assert (
        "nvidia.com/gpu" not in cpu_text
        and "nodeSelector" not in cpu_text
        and "tolerations" not in cpu_text
    )
    broker = next(d for d in cpu if d["kind"] == "Broker")
    assert (
        broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"]
        == "MTChannelBasedBroker"
    )
    assert "config" not in broker["spec"]


def test_reference_pipeline_loads_and_its_operators_are_registered() -> None:
    path = REPO / "pipelines/brain-tumor-segmentation.yaml"
    assert {
        "dicom_parser",
        "triton_infer",
        "seg_writer",
        "rtstruct_writer",
        "scu_export",
    } <= registry.names()
    assert load_pipeline(path, functions=registry.names()).name == "brain-tumor-segmentation"
