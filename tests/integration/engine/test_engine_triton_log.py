"""``radflow logs triton`` (listed by ``radflow logs --help``) shows the engine's Triton log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from radflow.cli.main import main as radflow_cli
from radflow.engine.config import load_engine_config
from radflow.engine.stack import Engine
from radflow.engine.triton import triton_available

AVAILABLE, REASON = triton_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AVAILABLE, reason=f"Triton cannot run here: {REASON}"),
]


def test_radflow_logs_triton_shows_the_servers_output(
    tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the compiled pipeline's embedded Triton Deployment and its Service, as `radflow up` runs them
    compiled = repo_root / "knative/pipelines/brain-tumor-segmentation/clara-services.yaml"
    docs = [
        d
        for d in yaml.safe_load_all(compiled.read_text())
        if d
        and d["metadata"]["name"] == "brain-tumor-segmentation-triton"
        and d["kind"] != "NetworkPolicy"  # cluster-only, beside them
    ]
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    (tmp_path / "knative").mkdir()
    (tmp_path / "knative" / "triton.yaml").write_text(yaml.safe_dump_all(docs))
    (tmp_path / "models").mkdir()  # an empty repository: the server starts in a second
    config = load_engine_config(
        None,
        state_dir=tmp_path / "state",
        manifests=tmp_path / "knative",
        workdir=repo_root,
        model_repository=tmp_path / "models",
    )

    async def scenario() -> int:
        engine = Engine(config)
        await engine.start()
        try:
            assert engine.triton is not None
            return await asyncio.to_thread(
                radflow_cli, ["--state-dir", str(config.state_dir), "logs", "triton", "-n", "50"]
            )
        finally:
            await engine.stop()

    assert asyncio.run(scenario()) == 0, capsys.readouterr().err
    assert "Started HTTPService at 127.0.0.1:" in capsys.readouterr().out
