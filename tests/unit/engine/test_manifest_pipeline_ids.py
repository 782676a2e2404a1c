"""The pipelines an engine runs, as the adapter's REST API checks them against."""

from __future__ import annotations

from pathlib import Path

from radflow.engine.manifests import ManifestSet, load_manifests


def test_the_committed_manifests_run_the_reference_pipeline(repo_root: Path) -> None:
    assert load_manifests(repo_root / "knative").pipeline_ids() == {"brain-tumor-segmentation"}


def test_pipeline_ids_come_from_both_trigger_filter_forms() -> None:
    triggers = [
        {"spec": {"filter": {"attributes": {"type": "t", "radflowpipeline": "old-form"}}}},
        {"spec": {"filters": [{"exact": {"radflowpipeline": "new-form"}}, {"prefix": {"x": "y"}}]}},
        {"spec": {"filters": [{"exact": {"type": "no-pipeline"}}]}},
    ]
    assert ManifestSet(triggers=triggers).pipeline_ids() == {"old-form", "new-form"}
