"""Staging mechanisms against a real SeaweedFS: ranged reads, output bundles, header-first
studies."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from pipeline_support import study_event
from radflow.demo.study import make_study
from radflow.functions.dicom_parser import logic as parser_logic
from radflow.imaging.dicom_walk import pixel_data_offset
from radflow.sdk import events, staging
from radflow.sdk.errors import Unavailable
from radflow.sdk.events import EventType
from radflow.sdk.manifest import InstanceRef, StudyManifest
from radflow.sdk.pipeline import parse_pipeline, stage_spec
from radflow.sdk.runtime import StageRuntime
from radflow.sdk.stage import StageContext
from radflow.sdk.storage import Changed, Fetched, Keys, NotFound, ObjectStore


class CountingStore(ObjectStore):
    """The real store, counting the bytes every read brings back per key."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.read_bytes: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def get_range(
        self, key: str, start: int = 0, length: int | None = None, *, if_match: str | None = None
    ) -> Fetched:
        got = super().get_range(key, start, length, if_match=if_match)
        with self._count_lock:
            self.read_bytes[key] += len(got.data)
        return got

    def download_file(self, key: str, path: Path) -> None:
        super().download_file(key, path)
        with self._count_lock:
            self.read_bytes[key] += path.stat().st_size


# ----------------------------------------------------------------------------- ranged reads


def test_get_range_reads_a_prefix_then_the_rest_of_the_same_version(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    store.put_bytes("obj", data)
    head = store.get_range("obj", 0, 100)
    assert (head.data, head.size) == (data[:100], len(data)) and head.etag
    rest = store.get_range("obj", 100, if_match=head.etag)
    assert head.data + rest.data == data
    assert store.get_range("obj", 5000, 10).data == data[5000:5010]
    assert store.get_range("obj", len(data)).data == b""  # past the end: nothing, not an error
    assert store.get_range("obj", 0, 10**9).data == data  # longer than the object: all of it
    store.put_bytes("obj", b"replaced")
    with pytest.raises(Changed):
        store.get_range("obj", 100, if_match=head.etag)
    with pytest.raises(NotFound):
        store.get_range("missing", 0, 10)


def test_download_file_streams_the_whole_object(store: ObjectStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # 2.3 MB: several stream chunks
    store.put_bytes("big", data)
    store.download_file("big", tmp_path / "a" / "big.bin")
    assert (tmp_path / "a" / "big.bin").read_bytes() == data
    with pytest.raises(NotFound):
        store.download_file("nope", tmp_path / "nope")


def test_iter_objects_yields_every_object_in_key_order(store: ObjectStore) -> None:
    keys = [f"k/{i:03d}" for i in range(25)]
    for i, key in enumerate(reversed(keys)):
        store.put_bytes(key, bytes([i]) * (i * 1000 + 1))
    assert list(store.iter_objects(keys, threads=3)) == [store.get_bytes(k) for k in keys]
    with pytest.raises(NotFound):
        list(store.iter_objects([keys[0], "k/missing"], threads=2))


# ----------------------------------------------------------------------------- bundles


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _fill(folder: Path, n: int, *, big: bool = True) -> None:
    for i in range(n):
        sub = folder / f"1.2.826.0.1.3680043.8.498.{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"1.2.826.0.1.3680043.8.498.{i % 3}.{i}.dcm").write_bytes(bytes([i]) * (100 + i))
    if big:
        (folder / "volume.nii.gz").write_bytes(b"v" * (staging.BUNDLE_MAX_MEMBER + 1))


def test_many_small_files_travel_as_bundles_and_arrive_unchanged(
    store: ObjectStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _fill(out, 40)
    prefix, count = staging.upload_output(store, "job", "parser", "dicom", out)
    assert count == 41
    names = sorted(i.key[len(prefix) :] for i in store.list(prefix))
    assert names == ["@bundle-0000.tar", "volume.nii.gz"]  # 40 small files -> one object
    got = tmp_path / "in"
    assert staging.stage_output_in(store, "job", "parser", "dicom", got) == 41
    assert _tree(got) == _tree(out)


def test_bundled_output_rerun_overwrites_the_same_keys_and_drops_leftovers(
    store: ObjectStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _fill(out, 20, big=False)
    prefix, _ = staging.upload_output(store, "job", "w", "o", out)
    first = {i.key: i.etag for i in store.list(prefix)}
    staging.upload_output(store, "job", "w", "o", out)  # a redelivered run: same bytes, same key
    assert {i.key: i.etag for i in store.list(prefix)} == first
    smaller = tmp_path / "smaller"
    _fill(smaller, 3, big=False)  # a rerun writing fewer files: single objects, old bundle gone
    staging.upload_output(store, "job", "w", "o", smaller)
    assert sorted(i.key[len(prefix) :] for i in store.list(prefix)) == sorted(_tree(smaller))
    got = tmp_path / "in"
    staging.stage_output_in(store, "job", "w", "o", got)
    assert _tree(got) == _tree(smaller)


# ----------------------------------------------------------------------------- header-first studies


def _seed(store: ObjectStore, files: list[Path], pipeline: str = "parse") -> events.JobRequested:
    refs = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = Keys.instance("study", ds.SeriesInstanceUID, ds.SOPInstanceUID)
        store.put_file(key, path)
        refs.append(
            InstanceRef(
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                series_instance_uid=ds.SeriesInstanceUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                key=key,
                size=path.stat().st_size,
                sha256="0" * 64,
            )
        )
    manifest = StudyManifest(
        study_id="study",
        study_instance_uid="1.2.3",
        group_id="g",
        called_ae="RADFLOW",
        instances=refs,
    )
    store.put_bytes(Keys.manifest("study", "g"), manifest.model_dump_json().encode())
    return events.JobRequested(
        job_id=events.job_id_for("g", pipeline, 0),
        pipeline=pipeline,
        study_id="study",
        group_id="g",
        manifest_key=Keys.manifest("study", "g"),
        instance_count=len(refs),
        called_ae="RADFLOW",
    )


def test_header_first_staging_reads_headers_and_completes_only_what_is_asked(
    store: ObjectStore, tmp_path: Path
) -> None:
    study = make_study(tmp_path / "study", (4, 128, 128), seed=3, decoys=False, other_series=False)
    files = sorted(study.files)
    req = _seed(store, files)
    manifest = staging.load_manifest(store, req.manifest_key)
    partial = staging.PartialFiles(store)
    folder = tmp_path / "in"
    assert staging.stage_study_headers(store, manifest, folder, partial, pixel_data_offset) == len(
        files
    )
    staged = {
        ref.key: folder / ref.series_instance_uid / f"{ref.sop_instance_uid}.dcm"
        for ref in manifest.instances
    }
    by_key = {
        Keys.instance(
            "study",
            *(lambda d: (d.SeriesInstanceUID, d.SOPInstanceUID))(
                pydicom.dcmread(f, stop_before_pixels=True)
            ),
        ): f
        for f in files
    }
    assert len(partial) == len(files)
    for key, path in staged.items():
        original = by_key[key].read_bytes()
        cut = path.read_bytes()
        assert len(cut) <= staging.HEADER_PREFIX_BYTES < len(original) and original.startswith(cut)
        head = pydicom.dcmread(path, stop_before_pixels=True)  # the whole header is there
        assert head == pydicom.dcmread(by_key[key], stop_before_pixels=True)
    first, *rest = list(staged)
    assert partial.complete([staged[first], staged[first]]) == 1
    assert staged[first].read_bytes() == by_key[first].read_bytes()
    assert partial.complete([staged[first]]) == 0  # already whole: nothing fetched again
    assert all(staged[k].stat().st_size < by_key[k].stat().st_size for k in rest)
    store.put_bytes(rest[0], b"a different object now")
    with pytest.raises(Unavailable, match="replaced"):
        partial.complete([staged[rest[0]]])


SELECT_T1C = {
    "selections": [
        {
            "name": "T1C",
            "conditions": {
                "Modality": "(?i)^MR",
                "StudyDescription": "(?i)Brain",
                "ImageType": ["ORIGINAL", "PRIMARY"],
                "SeriesDescription": "^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*",
            },
        }
    ]
}
PARSER_PIPELINE = """\
api-version: 0.4.0
name: parse
operators:
  - name: dicom-parser
    container: {image: radflow/dicom-parser}
    variables: {NVIDIA_CLARA_SELECTION_RULES_BASE64: "%s", RADFLOW_DICOM_OUTPUT: headers}
    input: [{path: /input}]
    output: [{name: volumes, path: /output/volumes}, {name: dicom, path: /output/dicom}]
"""


def test_dicom_parser_downloads_pixels_of_the_selected_series_only(
    store_settings, tmp_path: Path
) -> None:
    """Decoys' pixel data never leaves the store; selection and trace equal a full local run."""
    study = make_study(tmp_path / "study", (6, 128, 128), seed=7)
    files = sorted(study.files)
    rules = base64.b64encode(json.dumps(SELECT_T1C).encode()).decode()
    pipeline = parse_pipeline(
        PARSER_PIPELINE % rules, source="parse.yaml", functions={"dicom_parser"}
    )
    op = pipeline.operator("dicom-parser")
    store = CountingStore(store_settings)
    store.ensure_bucket()
    req = _seed(store, files)
    runtime = StageRuntime(
        stage_spec(pipeline, op, timeout_seconds=300), store, dict(op.variables), work_dir=tmp_path
    )
    headers, body = events.to_binary(study_event(store, req))
    _, status, reply_headers = runtime.handle(headers, body, parser_logic.run)
    assert status == 200 and reply_headers["ce-type"] == EventType.STAGE_COMPLETED.value

    target = {str(f) for f in study.target.files}
    sizes = {
        Keys.instance("study", ds.SeriesInstanceUID, ds.SOPInstanceUID): (
            f.stat().st_size,
            str(f) in target,
        )
        for f in files
        for ds in [pydicom.dcmread(f, stop_before_pixels=True)]
    }
    big_decoys = [
        k
        for k, (size, selected) in sizes.items()
        if not selected and size > staging.HEADER_PREFIX_BYTES
    ]
    assert len(big_decoys) >= 12  # "T1c ref" and the other full-size series
    for key, (size, selected) in sizes.items():
        assert (
            store.read_bytes[key] == size
            if selected
            else store.read_bytes[key] <= staging.HEADER_PREFIX_BYTES
        )

    # the same study parsed from whole local files gives the same selection, trace and volume
    local = StageContext(
        job_id="j",
        pipeline="parse",
        stage="dicom-parser",
        inputs={"default": study.root},
        outputs={"volumes": tmp_path / "v", "dicom": tmp_path / "d"},
        variables=dict(op.variables),
        work_dir=tmp_path,
    )
    for folder in local.outputs.values():
        folder.mkdir()
    parser_logic.run(local)
    staged = tmp_path / "staged"
    staging.stage_output_in(store, req.job_id, "dicom-parser", "volumes", staged)
    for name in ("selected-series.json", "series-images.json", "dicom-metadata.json"):
        assert json.loads((staged / name).read_text()) == json.loads(
            (tmp_path / "v" / name).read_text()
        ), name
    trace, local_trace = (
        json.loads((d / "match-trace.json").read_text()) for d in (staged, tmp_path / "v")
    )
    assert trace["series"] == local_trace["series"] and trace["rules"] == local_trace["rules"]
    volume = next(p.name for p in staged.glob("*.nii.gz"))
    from radflow.imaging.volume import read_volume

    assert (read_volume(staged / volume)[0] == read_volume(tmp_path / "v" / volume)[0]).all()
