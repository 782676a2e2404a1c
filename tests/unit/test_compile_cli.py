"""`radflow pipeline compile` / `validate`: writes, checks and prunes the generated files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from radflow.cli import jobs as jobs_cli


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
