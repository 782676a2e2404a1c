"""Clara pipeline definitions: what parses, and the exact error for each invalid file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from radflow.sdk.errors import ConfigError
from radflow.sdk.pipeline import function_for_image, load_pipeline, parse_pipeline, stage_spec

FUNCTIONS = {
    "dicom_parser",
    "triton_infer",
    "seg_writer",
    "rtstruct_writer",
    "scu_export",
    "clara_operator",
    "job_tracker",
}

BASE = """\
api-version: 0.4.0
name: demo
operators:
  - name: parser
    container: {image: radflow/dicom-parser, tag: latest}
    input: [{path: /input}]
    output:
      - {name: volumes, path: /output/volumes}
      - {name: dicom, path: /output/dicom}
  - name: infer
    container: {image: radflow/triton-infer}
    input: [{from: parser, name: volumes, path: /input}]
    output: [{name: masks, path: /output}]
"""


def parse(text: str):
    return parse_pipeline(text, source="pipelines/demo.yaml", functions=FUNCTIONS)


def test_valid_pipeline_dag() -> None:
    p = parse(BASE)
    assert p.id == "demo"
    assert p.stage_names() == ["parser", "infer"]
    assert p.operator("infer").upstream() == ["parser"]
    assert p.operator("parser").function == "dicom_parser"
    assert p.roots() == ["parser"] and p.leaves() == ["infer"]


def test_reference_pipeline_parses(repo_root: Path) -> None:
    p = load_pipeline(repo_root / "pipelines/brain-tumor-segmentation.yaml", functions=FUNCTIONS)
    assert p.stage_names() == [
        "dicom-parser",
        "triton-infer",
        "rtstruct-writer",
        "seg-writer",
        "scu-export",
    ]
    assert p.operator("scu-export").upstream() == ["rtstruct-writer", "seg-writer"]
    assert p.operator("scu-export").variables == {"DESTINATIONS": "MYPACS"}
    assert (
        p.operator("triton-infer").services[0].connections.http[0].name == "NVIDIA_TRITON_HTTPURI"
    )
    # service addresses reach the operator's ctx.variables, as Clara handed them to operators
    spec = stage_spec(p, p.operator("triton-infer"), timeout_seconds=600)
    assert spec.variables == [
        "NVIDIA_TRITON_HTTPURI",
        "TRITON_BACKEND",
        "TRITON_MODEL_NAME",
        "TRITON_MODEL_REPOSITORY",
    ]


def test_stage_spec_carries_only_its_own_stage(repo_root: Path) -> None:
    p = load_pipeline(repo_root / "pipelines/brain-tumor-segmentation.yaml", functions=FUNCTIONS)
    spec = stage_spec(p, p.operator("seg-writer"), timeout_seconds=300)
    assert spec.upstream == ["dicom-parser", "triton-infer"]
    assert [i.from_stage for i in spec.inputs] == ["triton-infer", "dicom-parser"]
    doc = spec.model_dump()
    assert set(doc) == {
        "pipeline",
        "stage",
        "inputs",
        "outputs",
        "upstream",
        "variables",
        "command",
        "timeout_seconds",
        "joins",
    }
    # the one exception: the fan-in it feeds, which its completion may wake (docs/pipelines.md)
    assert spec.joins == {"scu-export": ["rtstruct-writer", "seg-writer"]}
    # no other stage is named anywhere else in it
    text = spec.model_copy(update={"joins": None}).to_env()
    assert "scu-export" not in text and "rtstruct-writer" not in text
    # a stage that feeds no fan-in names none
    assert "joins" not in stage_spec(p, p.operator("triton-infer"), timeout_seconds=600).to_env()


def test_image_mapping() -> None:
    assert function_for_image("radflow/rtstruct-writer") == "rtstruct_writer"
    assert function_for_image("nvcr.io/nvidia/clara/ai-liver") is None
    assert function_for_image("radflow/Bad_Name") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("from: parser, name: volumes", "from: parsr, name: volumes"),
            (
                "pipelines/demo.yaml: operator 'infer': input[0].from: unknown operator 'parsr' "
                "(operators: infer, parser)"
            ),
        ),
        (
            ("from: parser, name: volumes", "from: parser, name: volume"),
            (
                "pipelines/demo.yaml: operator 'infer': input[0].name: operator 'parser' has no "
                "output named 'volume' (outputs: dicom, volumes)"
            ),
        ),
        (
            ("name: infer", "name: parser"),
            (
                "pipelines/demo.yaml: operator 'parser': name: duplicate operator name "
                "(operators[0] and operators[1])"
            ),
        ),
        (
            ("image: radflow/triton-infer", "image: radflow/triton-inference"),
            "pipelines/demo.yaml: operator 'infer': container.image: no radflow operator "
            "implements 'radflow/triton-inference' (no 'triton_inference' in the operator "
            "registry); use an existing radflow image or a non-radflow image with "
            "container.command to run it as a Clara operator",
        ),
        (
            ("image: radflow/triton-infer", "image: clara/ai-brain"),
            (
                "pipelines/demo.yaml: operator 'infer': container.command: 'clara/ai-brain' is not "
                "a radflow function, so it runs as a bring-your-own Clara operator and needs "
                "container.command"
            ),
        ),
        (
            ("api-version: 0.4.0", "api-version: 0.5.0"),
            (
                "pipelines/demo.yaml: api-version: '0.5.0' is not supported; radflow reads Clara "
                "pipeline api-version 0.4.0"
            ),
        ),
        (
            (
                "    container: {image: radflow/triton-infer}",
                "    contaner: {image: radflow/triton-infer}",
            ),
            (
                "pipelines/demo.yaml: operator 'infer': container: Field required; operator "
                "'infer': contaner: unknown field (not part of Clara api-version 0.4.0)"
            ),
        ),
        (
            ("- {name: dicom, path: /output/dicom}", "- {name: volumes, path: /output/dicom}"),
            (
                "pipelines/demo.yaml: operator 'parser': output[1].name: duplicate output name "
                "'volumes'"
            ),
        ),
        (
            ("name: demo", "name: Demo_Pipeline"),
            (
                "pipelines/demo.yaml: name: 'Demo_Pipeline' must be lower-case letters, digits and "
                "'-' (a DNS label), starting with a letter"
            ),
        ),
    ],
)
def test_invalid_files_give_the_exact_error(change: tuple[str, str], message: str) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value) == message


def test_cycle_is_named_in_data_flow_order() -> None:
    text = BASE.replace(
        "input: [{path: /input}]", "input: [{from: infer, name: masks, path: /input}]"
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "pipelines/demo.yaml: operators form a cycle: infer -> parser -> infer; a pipeline "
            "must be a DAG"
        ),
    ):
        parse(text)


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(
        ConfigError,
        match=r"pipelines/demo.yaml: not valid YAML \(line 4, column 1\): expected the node "
        r"content",
    ):
        parse("api-version: 0.4.0\nname: x\noperators: [\n")


def test_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"{tmp_path / 'nope.yaml'}: cannot read pipeline file")
    ):
        load_pipeline(tmp_path / "nope.yaml", functions=FUNCTIONS)


def test_reserved_variable_rejected() -> None:
    text = BASE.replace(
        "    container: {image: radflow/triton-infer}",
        "    container: {image: radflow/triton-infer}\n    variables: {RADFLOW_STAGE: x}",
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "operator 'infer': variables.RADFLOW_STAGE: reserved for the radflow runtime"
        ),
    ):
        parse(text)


def test_the_entry_point_selector_is_reserved() -> None:
    text = BASE.replace(
        "    container: {image: radflow/triton-infer}",
        "    container: {image: radflow/triton-infer}\n"
        "    variables: {RADFLOW_OPERATOR: seg_writer}",
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "operator 'infer': variables.RADFLOW_OPERATOR: reserved for the radflow runtime"
        ),
    ):
        parse(text)


def test_operator_specific_radflow_variables_are_allowed() -> None:
    text = BASE.replace(
        "    container: {image: radflow/triton-infer}",
        "    container: {image: radflow/triton-infer}\n    variables: {RADFLOW_SEG_TYPE: binary}",
    )
    assert parse(text).operator("infer").variables == {"RADFLOW_SEG_TYPE": "binary"}


def test_variables_become_text_and_byo_command_split() -> None:
    text = BASE.replace(
        "    container: {image: radflow/triton-infer}",
        (
            "    container: {image: clara/ai, tag: 1, command: 'python3 /app/run.py --fast'}\n    "
            "variables: {PORT_X: 104, FLAG: true}"
        ),
    )
    op = parse(text).operator("infer")
    assert op.is_byo and op.function == "clara_operator"
    assert op.container.command == ["python3", "/app/run.py", "--fast"] and op.container.tag == "1"
    assert op.variables == {"PORT_X": "104", "FLAG": "true"}
