"""`radflow pipeline compile` / `validate`: writes, checks and prunes the generated files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from radflow.cli import jobs as jobs_cli
from radflow.engine.compiler import compile_pipelines
from radflow.functions import registry


@pytest.fixture
def workdir(tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pipelines").mkdir()
    shutil.copy(
        repo_root / "pipelines/examples/fan-in-example.yaml",
        tmp_path / "pipelines/fan-in-example.yaml",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_compile_then_check_then_prune(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 1
    assert "out of date: knative/broker.yaml" in capsys.readouterr().out
    assert jobs_cli.main(["pipeline", "compile"]) == 0
    assert (workdir / "knative/pipelines/fan-in-example/services.yaml").is_file()
    assert (workdir / "deploy/overlays/dev-cpu/kustomization.yaml").is_file()
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 0
    # renaming the pipeline leaves the old folder stale: --check says so, compile removes it
    text = (
        (workdir / "pipelines/fan-in-example.yaml")
        .read_text()
        .replace("name: fan-in-example", "name: fan-in-renamed")
    )
    (workdir / "pipelines/fan-in-example.yaml").write_text(text)
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 1
    assert jobs_cli.main(["pipeline", "compile"]) == 0
    assert not (workdir / "knative/pipelines/fan-in-example/services.yaml").exists()
    assert (workdir / "knative/pipelines/fan-in-renamed/triggers.yaml").is_file()


def test_invalid_pipeline_exits_2_with_the_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir / "pipelines/fan-in-example.yaml"
    path.write_text(path.read_text().replace("from: left", "from: lft"))
    assert jobs_cli.main(["pipeline", "compile"]) == 2
    assert "operator 'join': input[0].from: unknown operator 'lft'" in capsys.readouterr().err
    assert jobs_cli.main(["pipeline", "validate"]) == 1


@pytest.fixture
def repo_copy(tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What `radflow pipeline compile` reads and writes, copied from the repository."""
    for name in ("pipelines", "knative", "deploy"):
        shutil.copytree(repo_root / name, tmp_path / name)
    shutil.copy(repo_root / "skaffold.yaml", tmp_path / "skaffold.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_names_each_generated_file_that_drifted(
    repo_copy: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 0, capsys.readouterr().out
    skaffold = repo_copy / "skaffold.yaml"
    skaffold.write_text(
        skaffold.read_text().replace("EXTRAS: imaging,inference", "EXTRAS: imaging")
    )
    services = repo_copy / "knative/pipelines/brain-tumor-segmentation/services.yaml"
    services.write_text(services.read_text().replace("timeoutSeconds: 600", "timeoutSeconds: 60"))
    capsys.readouterr()
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "out of date: knative/pipelines/brain-tumor-segmentation/services.yaml",
        "out of date: skaffold.yaml",
    ]
    assert jobs_cli.main(["pipeline", "compile"]) == 0
    assert skaffold.read_text() == (repo_root / "skaffold.yaml").read_text()
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 0


def test_check_fails_when_the_registry_changes(
    repo_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bigger = tuple(
        e.model_copy(update={"timeout_seconds": 120}) if e.name == "seg_writer" else e
        for e in registry.OPERATORS
    )
    monkeypatch.setattr(registry, "OPERATORS", bigger)
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 1
    # the stage's timeout, and the delivery of the Triggers that feed it (derived from it)
    assert capsys.readouterr().out.splitlines() == [
        "out of date: knative/pipelines/brain-tumor-segmentation/services.yaml",
        "out of date: knative/pipelines/brain-tumor-segmentation/triggers.yaml",
    ]
    fewer = tuple(e for e in registry.OPERATORS if e.name != "clara_operator")
    monkeypatch.setattr(registry, "OPERATORS", fewer)
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 1
    assert "out of date: skaffold.yaml" in capsys.readouterr().out.splitlines()


def test_skaffold_without_the_generated_markers_is_an_error(
    repo_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skaffold = repo_copy / "skaffold.yaml"
    skaffold.write_text(skaffold.read_text().replace("    # END generated\n", ""))
    assert jobs_cli.main(["pipeline", "compile", "--check"]) == 2
    assert re.search(
        r"skaffold.yaml: needs one '# BEGIN generated by .*' line and, after it, one "
        r"'# END generated' line under build.artifacts",
        capsys.readouterr().err,
    )


def objects_by_name(files: dict[Path, str]) -> dict[str, str]:
    """Every object the compile wrote, as YAML text, by kind and name (kustomizations by file)."""
    out = {}
    for path, text in files.items():
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and "metadata" in doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = yaml.safe_dump(doc)
            elif doc:
                out[f"{doc['kind']}@{path.parent.name}"] = yaml.safe_dump(doc)
    return out


def changed_objects(root: Path, edit: tuple[str, str]) -> set[str]:
    """The objects (added, removed or changed) that ``edit`` of the reference pipeline rolls."""
    src = root / "pipelines/brain-tumor-segmentation.yaml"
    before = objects_by_name(compile_pipelines([src], root / "knative", root=root))
    text = src.read_text()
    assert edit[0] in text
    src.write_text(text.replace(*edit))
    after = objects_by_name(compile_pipelines([src], root / "knative", root=root))
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def test_editing_one_stages_variables_changes_only_that_stages_service(repo_copy: Path) -> None:
    edit = ("NVIDIA_SEG_LABELS: '[\"Tumor\"]'", "NVIDIA_SEG_LABELS: '[\"Lesion\"]'")
    assert changed_objects(repo_copy, edit) == {"Service/brain-tumor-segmentation-seg-writer"}


def test_a_dag_edit_changes_the_stage_it_touches_and_the_tracker_only(repo_copy: Path) -> None:
    # rtstruct-writer stops reading dicom-parser's output: one edge less
    src = repo_copy / "pipelines/brain-tumor-segmentation.yaml"
    text = src.read_text()
    block = text[text.index("  - name: rtstruct-writer") : text.index("  - name: scu-export")]
    edited = block.replace(
        "      - from: dicom-parser\n        name: dicom\n        path: /input/dicom\n", ""
    )
    assert edited != block
    assert changed_objects(repo_copy, (block, edited)) == {
        "Service/brain-tumor-segmentation-rtstruct-writer",
        "Service/job-tracker",
        "Service/job-tracker-dead-letters",  # the tracker's twin, the dead-letter sink
    }


def test_compile_outside_a_checkout_fails_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from radflow.cli.main import main as radflow_cli

    monkeypatch.chdir(tmp_path)
    assert radflow_cli(["pipeline", "compile"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"radflow: no pipelines to compile: \S+/pipelines has no \*\.yaml; run this in a radflow "
        r"checkout or name pipeline files\n",
        err,
    ), err
    assert list(tmp_path.iterdir()) == []  # no empty knative/
