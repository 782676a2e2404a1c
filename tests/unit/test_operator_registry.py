"""The operator registry: every entry resolves, bad entries are refused, and it sizes Services."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import functions_framework
import pytest
import yaml
from pydantic import ValidationError

from radflow.engine.compiler import compile_pipelines
from radflow.functions import registry
from radflow.functions.registry import OperatorEntry, Resources

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("entry", registry.OPERATORS, ids=lambda e: e.name)
def test_every_entry_names_a_function_in_its_own_folder(entry: OperatorEntry) -> None:
    assert callable(entry.load())
    assert (REPO / "src/radflow/functions" / entry.name / "README.md").is_file()
    assert entry.image == "radflow/" + entry.name.replace("_", "-")


def test_no_operator_folder_is_left_out_of_the_registry() -> None:
    folders = {
        p.name
        for p in (REPO / "src/radflow/functions").iterdir()
        if p.is_dir() and (p / "__init__.py").is_file()
    }
    assert folders == registry.names()
    assert not list((REPO / "src/radflow/functions").glob("*/main.py"))


def test_an_entry_gives_exactly_one_target_in_its_own_package() -> None:
    with pytest.raises(ValidationError, match="operator 'x': give exactly one of logic or handler"):
        OperatorEntry(name="x")
    with pytest.raises(ValidationError, match="operator 'x': give exactly one of logic or handler"):
        OperatorEntry(
            name="x", logic="radflow.functions.x.logic:run", handler="radflow.functions.x.s:h"
        )
    with pytest.raises(
        ValidationError,
        match=re.escape(
            "operator 'x': 'radflow.functions.seg_writer.logic:run' "
            "must live in radflow.functions.x"
        ),
    ):
        OperatorEntry(name="x", logic="radflow.functions.seg_writer.logic:run")
    with pytest.raises(ValidationError, match="String should match pattern"):
        OperatorEntry(
            name="x",
            logic="radflow.functions.x.logic:run",
            resources=Resources(cpu_request="1 core"),
        )
    with pytest.raises(ValueError, match="operator 'seg_writer' is registered twice"):
        registry.by_name((*registry.OPERATORS, registry.get("seg_writer")))


def test_unknown_operator_names_the_known_ones() -> None:
    with pytest.raises(
        LookupError, match=r"no operator 'nope' in the registry \(known: clara_operator, "
    ):
        registry.get("nope")


def test_the_entry_point_refuses_to_start_without_an_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RADFLOW_OPERATOR", raising=False)
    with pytest.raises(LookupError, match="RADFLOW_OPERATOR is not set"):
        functions_framework.create_app("handle", str(REPO / registry.ENTRY_SOURCE))
    monkeypatch.setenv("RADFLOW_OPERATOR", "seg-writer")
    with pytest.raises(LookupError, match="no operator 'seg-writer' in the registry"):
        functions_framework.create_app("handle", str(REPO / registry.ENTRY_SOURCE))


PIPELINE = """\
api-version: 0.4.0
name: sized
operators:
  - name: plain
    container: {image: radflow/sized-op}
    input: [{path: /input}]
    output: [{path: /output}]
  - name: clara-sized
    container: {image: radflow/sized-op}
    requests: {cpu: 2, memory: 1024, gpu: 2}
    timeout: 90
    input: [{from: plain, path: /input}]
    output: [{path: /output}]
"""
SIZED = OperatorEntry(
    name="sized_op",
    logic="radflow.functions.sized_op.logic:run",
    extras=("imaging",),
    resources=Resources(
        cpu_request="500m", cpu_limit="2", memory_request="512Mi", memory_limit="1Gi"
    ),
    gpu=1,
    timeout_seconds=420,
    container_concurrency=2,
    threads=2,
    max_scale=3,
)


def pods(tmp_path: Path) -> dict[str, dict[str, Any]]:
    src = tmp_path / "sized.yaml"
    src.write_text(PIPELINE)
    files = compile_pipelines(
        [src], tmp_path / "knative", root=tmp_path, operators=(*registry.OPERATORS, SIZED)
    )
    docs = yaml.safe_load_all(files[tmp_path / "knative/pipelines/sized/services.yaml"])
    return {d["metadata"]["labels"]["radflow.dev/stage"]: d["spec"]["template"] for d in docs if d}


def test_services_are_sized_by_the_registry_and_the_pipeline_wins(tmp_path: Path) -> None:
    plain, clara = pods(tmp_path)["plain"], pods(tmp_path)["clara-sized"]
    pod = plain["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == "radflow/sized-op"
    assert env["RADFLOW_OPERATOR"] == "sized_op" and env["THREADS"] == "2"
    assert pod["containerConcurrency"] == 2 and pod["timeoutSeconds"] == 420
    # ephemeral storage: the stage's /tmp scratch (8 Gi) + logs, on every container
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1024Mi"},
        "limits": {
            "cpu": "2",
            "memory": "1Gi",
            "ephemeral-storage": "8768Mi",
            "nvidia.com/gpu": "1",
        },
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert plain["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] == "1"  # GPU
    # the pipeline's Clara requests and timeout override the registry's defaults
    assert clara["spec"]["timeoutSeconds"] == 90
    assert clara["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2000m", "memory": "1024Mi", "ephemeral-storage": "1024Mi"},
        "limits": {
            "cpu": "2",
            "memory": "1024Mi",
            "ephemeral-storage": "8768Mi",
            "nvidia.com/gpu": "2",
        },
    }
