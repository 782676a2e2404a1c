"""``radflow models push``: the object store's ``models/`` mirrors the repository folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from radflow.cli.main import main as radflow_cli
from radflow.engine import models
from radflow.sdk.errors import ConfigError
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore


def test_push_uploads_changes_only_and_prunes_only_when_asked(
    store: ObjectStore, tmp_path: Path, repo_root: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repo_root / "models/triton", repo)
    (repo / "brain_tumor_seg/1/__pycache__").mkdir(exist_ok=True)
    (repo / "brain_tumor_seg/1/__pycache__/model.cpython-311.pyc").write_bytes(b"cache")
    first = models.push(store, repo)
    assert sorted(first.uploaded) == [
        "models/brain_tumor_seg/1/model.onnx",
        "models/brain_tumor_seg/1/model.py",
        "models/brain_tumor_seg/configs/cpu.pbtxt",
        "models/brain_tumor_seg/configs/gpu.pbtxt",
    ]
    assert (
        store.get_bytes("models/brain_tumor_seg/1/model.onnx")
        == (repo / "brain_tumor_seg/1/model.onnx").read_bytes()
    )

    (repo / "brain_tumor_seg/configs/gpu.pbtxt").unlink()
    (repo / "brain_tumor_seg/configs/cpu.pbtxt").write_text('name: "brain_tumor_seg"\n')
    second = models.push(store, repo)  # without prune nothing is deleted
    assert second.uploaded == ["models/brain_tumor_seg/configs/cpu.pbtxt"]
    assert second.deleted == [] and second.kept == ["models/brain_tumor_seg/configs/gpu.pbtxt"]
    assert store.exists("models/brain_tumor_seg/configs/gpu.pbtxt")
    assert len(second.unchanged) == 2
    third = models.push(store, repo, prune=True)
    assert third.uploaded == [] and len(third.unchanged) == 3
    assert third.deleted == ["models/brain_tumor_seg/configs/gpu.pbtxt"]
    assert {o.key for o in store.list("models/")} == {
        "models/brain_tumor_seg/1/model.onnx",
        "models/brain_tumor_seg/1/model.py",
        "models/brain_tumor_seg/configs/cpu.pbtxt",
    }


def test_push_refuses_a_missing_or_empty_folder(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        models.push(store, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no files"):
        models.push(store, tmp_path / "empty")


def test_cli_pushes_to_the_configured_store(
    store_settings: StoreSettings,
    repo_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RADFLOW_S3_ENDPOINT_URL", str(store_settings.endpoint_url))
    monkeypatch.setenv("RADFLOW_S3_BUCKET", store_settings.bucket)
    assert radflow_cli(["models", "push", str(repo_root / "models/triton")]) == 0
    out = capsys.readouterr().out
    assert f"s3://{store_settings.endpoint_url}/{store_settings.bucket}/models: 4 uploaded" in out
    keys = {o.key for o in ObjectStore(store_settings).list("models/")}
    assert "models/brain_tumor_seg/configs/cpu.pbtxt" in keys
