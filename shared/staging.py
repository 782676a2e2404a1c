"""Moving a stage's files between the object store and local folders (Clara's volumes).

Clara mounted each operator's inputs and outputs as folders; radflow's runtime fills local
folders from the object store before the operator runs and uploads its output folders after.
Keys are deterministic (``Keys.stage_output``), so a rerun overwrites; files a killed earlier
run left behind and this run did not write are deleted, so a rerun never duplicates outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from radflow.shared.errors import InvalidInput
from radflow.shared.manifest import StudyManifest
from radflow.shared.storage import Keys, NotFound, ObjectStore, safe_component

#: parallel transfers per stage (S3 latency dominates for many small DICOM files)
TRANSFER_THREADS = 8


def _parallel(jobs: Iterable[tuple[str, Path]], fn: Callable[[str, Path], object]) -> int:
    """Run ``fn(key, path)`` for every pair on a small thread pool; the first error propagates."""
    items = list(jobs)
    if not items:
        return 0
    with ThreadPoolExecutor(max_workers=min(TRANSFER_THREADS, len(items))) as pool:
        list(pool.map(lambda kv: fn(*kv), items))
    return len(items)


def load_manifest(store: ObjectStore, key: str) -> StudyManifest:
    try:
        blob = store.get_bytes(key)
    except NotFound:
        raise InvalidInput(f"study manifest {key} does not exist", code="manifest_missing") from None
    try:
        return StudyManifest.model_validate_json(blob)
    except ValueError as exc:
        raise InvalidInput(f"study manifest {key} is not a valid StudyManifest: {type(exc).__name__}", code="manifest_invalid") from None


def stage_study(store: ObjectStore, manifest: StudyManifest, folder: Path) -> int:
    """Download every instance of ``manifest`` as ``<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)

    def fetch(key: str, dest: Path) -> None:
        try:
            store.download_file(key, dest)
        except NotFound:
            raise InvalidInput(f"instance object {key} listed in the manifest does not exist", code="instance_missing") from None

    return _parallel(
        (
            (ref.key, folder / safe_component(ref.series_instance_uid) / f"{safe_component(ref.sop_instance_uid)}.dcm")
            for ref in manifest.instances
        ),
        fetch,
    )


def stage_output_in(store: ObjectStore, job_id: str, stage: str, output: str, folder: Path) -> int:
    """Download an upstream stage's named output into ``folder`` (its relative layout kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = Keys.stage_output(job_id, stage, output)
    pairs = []
    for info in store.list(prefix):
        rel = info.key[len(prefix):]
        if not rel or rel.endswith("/"):
            continue
        pairs.append((info.key, folder.joinpath(*rel.split("/"))))
    return _parallel(pairs, store.download_file)


def upload_output(store: ObjectStore, job_id: str, stage: str, output: str, folder: Path) -> tuple[str, int]:
    """Upload ``folder`` under the output's prefix; delete leftovers of earlier runs.

    Returns the prefix and the number of files.
    """
    prefix = Keys.stage_output(job_id, stage, output)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    wanted: dict[str, Path] = {}
    for path in files:
        rel = path.relative_to(folder).as_posix()
        wanted[Keys.stage_output(job_id, stage, output, rel)] = path
    _parallel(((k, p) for k, p in wanted.items()), lambda k, p: store.put_file(k, p))
    for info in list(store.list(prefix)):
        if info.key not in wanted:
            store.delete(info.key)
    return prefix, len(wanted)


def write_json(store: ObjectStore, key: str, doc: object) -> str:
    return store.put_bytes(key, json.dumps(doc, sort_keys=True).encode(), content_type="application/json")
