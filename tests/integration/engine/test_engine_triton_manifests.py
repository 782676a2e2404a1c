"""Manifests from before Triton became a Knative Service are refused, naming the fix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from radflow.engine.config import load_engine_config
from radflow.engine.stack import Engine
from radflow.sdk.errors import ConfigError


def test_a_triton_deployment_from_old_manifests_is_refused_naming_the_fix(tmp_path: Path) -> None:
    old = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "p-triton", "annotations": {"radflow.dev/embedded": "triton"}},
        "spec": {
            "selector": {"matchLabels": {"app": "t"}},
            "template": {
                "metadata": {"labels": {"app": "t"}},
                "spec": {
                    "containers": [{"name": "triton", "image": "nvcr.io/nvidia/tritonserver"}]
                },
            },
        },
    }
    (tmp_path / "knative").mkdir()
    (tmp_path / "knative" / "old.yaml").write_text(yaml.safe_dump(old))
    config = load_engine_config(
        None, state_dir=tmp_path / "state", manifests=tmp_path / "knative", prewarm=False
    )

    async def main() -> None:
        engine = Engine(config)
        await engine.start()  # stops what it started before raising
        await engine.stop()

    with pytest.raises(
        ConfigError, match="Deployment default/p-triton: .*radflow pipeline compile"
    ):
        asyncio.run(main())
    assert not (tmp_path / "state" / "engine.json").exists()
