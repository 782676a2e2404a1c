"""Moving a stage's files between the object store and local folders (Clara's volumes).

Clara mounted each operator's inputs and outputs as folders; radflow's runtime fills local
folders from the object store before the operator runs and uploads its output folders after.
Keys are deterministic (``Keys.stage_output``), so a rerun overwrites; files a killed earlier
run left behind and this run did not write are deleted, so a rerun never duplicates outputs.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.manifest import StudyManifest
from radflow.sdk.storage import Changed, Keys, NotFound, ObjectStore, safe_component


class NeedMoreBytes(Exception):
    """A header probe was given a prefix that ends before the header does: fetch a longer one."""


#: Where a file's header ends, from a prefix of it: the offset when the prefix holds the whole
#: header, ``None`` when the format cannot be walked with certainty (take the whole object), or
#: :class:`NeedMoreBytes`. The imaging domain provides it (``radflow.imaging.dicom_walk``);
#: the SDK knows no file format.
HeaderEnd = Callable[[bytes], int | None]

#: parallel transfers per stage (S3 latency dominates for many small DICOM files)
TRANSFER_THREADS = 8

#: An output folder holding at least this many small files is stored as tar bundles: every
#: S3 request costs a few ms of CPU on both ends, so 200 header files as 200 PUTs (and 200
#: GETs per consumer) cost far more than their bytes.
BUNDLE_MIN_FILES = 16
#: files up to this size go into bundles; larger ones stay objects of their own
BUNDLE_MAX_MEMBER = 1 << 20
#: a bundle is closed at this size (bounded memory; several bundles when needed)
BUNDLE_MAX_BYTES = 64 << 20
#: bundle object names: '@' never survives ``safe_filename``, so no operator file maps here
BUNDLE_PREFIX = "@bundle-"
BUNDLE_SUFFIX = ".tar"

#: header-first staging: bytes read first per instance (headers are 2-10 KB for most images)
HEADER_PREFIX_BYTES = 16 * 1024


_A = TypeVar("_A")
_B = TypeVar("_B")


def _parallel(jobs: Iterable[tuple[_A, _B]], fn: Callable[[_A, _B], object]) -> int:
    """Run ``fn(a, b)`` for every pair on a small thread pool; the first error propagates."""
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
        raise InvalidInput(
            f"study manifest {key} does not exist", code="manifest_missing"
        ) from None
    try:
        return StudyManifest.model_validate_json(blob)
    except ValueError as exc:
        raise InvalidInput(
            f"study manifest {key} is not a valid StudyManifest: {type(exc).__name__}",
            code="manifest_invalid",
        ) from None


def _study_layout(manifest: StudyManifest, folder: Path) -> list[tuple[str, Path]]:
    return [
        (
            ref.key,
            folder
            / safe_component(ref.series_instance_uid)
            / f"{safe_component(ref.sop_instance_uid)}.dcm",
        )
        for ref in manifest.instances
    ]


def _missing(key: str) -> InvalidInput:
    return InvalidInput(
        f"instance object {key} listed in the manifest does not exist", code="instance_missing"
    )


def stage_study(store: ObjectStore, manifest: StudyManifest, folder: Path) -> int:
    """Download every instance of ``manifest`` as ``<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)

    def fetch(key: str, dest: Path) -> None:
        try:
            store.download_file(key, dest)
        except NotFound:
            raise _missing(key) from None

    return _parallel(_study_layout(manifest, folder), fetch)


@dataclass
class _Partial:
    key: str
    etag: str
    size: int


class PartialFiles:
    """Staged files that hold only a prefix of their object, and the way to fetch the rest.

    :func:`stage_study_headers` fills it; the runtime hands :meth:`complete` to the operator
    (``StageContext.complete_files``), which calls it with the files it needs whole. The rest
    is fetched with ``If-Match`` on the ETag of the prefix: an object replaced in between
    raises :class:`Unavailable` (the stage is retried and stages a consistent study) rather
    than gluing two versions together.
    """

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._pending: dict[Path, _Partial] = {}
        self._lock = threading.Lock()
        #: objects completed and bytes fetched by :meth:`complete` (summaries, tests)
        self.completed = 0
        self.bytes_fetched = 0

    def add(self, path: Path, key: str, etag: str, size: int) -> None:
        self._pending[path.resolve()] = _Partial(key, etag, size)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, Path) and path.resolve() in self._pending

    def complete(self, paths: Iterable[Path]) -> int:
        """Make every listed file whole (files already whole are left alone); returns how many."""
        with self._lock:
            todo = [
                (p, self._pending.pop(p))
                for p in dict.fromkeys(Path(x).resolve() for x in paths)
                if p in self._pending
            ]

        def fetch(path: Path, part: _Partial) -> None:
            have = path.stat().st_size
            if have >= part.size:
                return
            try:
                got = self._store.get_range(part.key, have, if_match=part.etag)
            except Changed:
                raise Unavailable(
                    f"instance object {part.key} was replaced while the stage ran; retrying"
                ) from None
            except NotFound:
                raise _missing(part.key) from None
            if have + len(got.data) != part.size:
                raise Unavailable(
                    f"instance object {part.key}: short read "
                    f"({have + len(got.data)} of {part.size} bytes)"
                )
            with open(path, "ab") as fh:
                fh.write(got.data)
            with self._lock:
                self.completed += 1
                self.bytes_fetched += len(got.data)

        try:
            _parallel(todo, fetch)
        except BaseException:
            with self._lock:  # whatever was not completed stays completable
                for path, part in todo:
                    if path.exists() and path.stat().st_size < part.size:
                        self._pending.setdefault(path, part)
            raise
        return len(todo)


def _fetch_header(
    store: ObjectStore, key: str, dest: Path, partial: PartialFiles, header_end: HeaderEnd
) -> None:
    """Stage the first bytes of a DICOM object, enough for its whole header (else all of it)."""
    try:
        got = store.get_range(key, 0, HEADER_PREFIX_BYTES)
        data, want = got.data, HEADER_PREFIX_BYTES
        while len(data) < got.size:
            try:
                if header_end(data) is not None:
                    break  # the header is complete: the rest waits for complete()
            except NeedMoreBytes:
                want *= 4
                more = store.get_range(key, len(data), want, if_match=got.etag)
            else:  # not walkable with certainty: take the whole object, as before
                more = store.get_range(key, len(data), if_match=got.etag)
            data += more.data
    except NotFound:
        raise _missing(key) from None
    except Changed:
        raise Unavailable(f"instance object {key} was replaced while staging; retrying") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    if len(data) < got.size:
        partial.add(dest, key, got.etag, got.size)


def stage_study_headers(
    store: ObjectStore,
    manifest: StudyManifest,
    folder: Path,
    partial: PartialFiles,
    header_end: HeaderEnd,
) -> int:
    """Like :func:`stage_study`, but each file holds only its header (through the PixelData tag).

    One ranged GET of :data:`HEADER_PREFIX_BYTES` per instance (more when the header is longer;
    the whole object when it cannot be walked with certainty, see ``dicom_walk``). Every
    truncated file is registered in ``partial`` so the operator can complete the ones it selects.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return _parallel(
        _study_layout(manifest, folder),
        lambda key, dest: _fetch_header(store, key, dest, partial, header_end),
    )


def _is_bundle(rel: str) -> bool:
    return "/" not in rel and rel.startswith(BUNDLE_PREFIX) and rel.endswith(BUNDLE_SUFFIX)


def _unpack_bundle(store: ObjectStore, key: str, folder: Path) -> int:
    """Extract one bundle into ``folder``: regular files only, names kept inside the folder."""
    blob = store.get_range(key).data
    count = 0
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if (
                not member.isfile()
                or not parts
                or member.name.startswith("/")
                or any(p in ("", ".", "..") for p in parts)
            ):
                raise InvalidInput(
                    f"bundle {key} holds an entry radflow does not write; not extracted",
                    code="invalid_bundle",
                )
            src = tar.extractfile(member)
            assert src is not None
            dest = folder.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read())
            count += 1
    return count


def stage_output_in(store: ObjectStore, job_id: str, stage: str, output: str, folder: Path) -> int:
    """Download an upstream stage's named output into ``folder`` (its relative layout kept).

    Bundles (see :func:`upload_output`) are unpacked in place, so the operator sees the same
    files whether or not they travelled bundled. Returns the number of files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    prefix = Keys.stage_output(job_id, stage, output)
    pairs, bundles = [], []
    for info in store.list(prefix):
        rel = info.key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue
        if _is_bundle(rel):
            bundles.append((info.key, folder))
        else:
            pairs.append((info.key, folder.joinpath(*rel.split("/"))))
    counts: list[int] = []

    def fetch(key: str, dest: Path) -> None:
        if dest is folder:
            counts.append(_unpack_bundle(store, key, dest))
        else:
            store.download_file(key, dest)
            counts.append(1)

    _parallel(pairs + bundles, fetch)
    return sum(counts)


def _bundles(members: list[tuple[str, Path]]) -> list[bytes]:
    """Deterministic tar archives of ``(name, path)``: sorted, zero mtime/owner, mode 0644."""
    out: list[bytes] = []
    buffer, tar, size = io.BytesIO(), None, 0
    for name, path in members:
        data = path.read_bytes()
        if tar is None or size + len(data) > BUNDLE_MAX_BYTES:
            if tar is not None:
                tar.close()
                out.append(buffer.getvalue())
            buffer, size = io.BytesIO(), 0
            tar = tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
        size += len(data)
    if tar is not None:
        tar.close()
        out.append(buffer.getvalue())
    return out


def upload_output(
    store: ObjectStore, job_id: str, stage: str, output: str, folder: Path
) -> tuple[str, int]:
    """Upload ``folder`` under the output's prefix; delete leftovers of earlier runs.

    A folder with at least :data:`BUNDLE_MIN_FILES` files of up to :data:`BUNDLE_MAX_MEMBER`
    bytes stores those as ``@bundle-NNNN.tar`` objects (larger files stay single objects);
    :func:`stage_output_in` unpacks them. Bundles are byte-for-byte deterministic, so a rerun
    overwrites the same keys. Returns the prefix and the number of files.
    """
    prefix = Keys.stage_output(job_id, stage, output)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    singles: dict[str, Path] = {}
    small: list[tuple[str, Path]] = []
    for path in files:
        key = Keys.stage_output(job_id, stage, output, path.relative_to(folder).as_posix())
        if path.stat().st_size <= BUNDLE_MAX_MEMBER:
            small.append((key[len(prefix) :], path))
        singles[key] = path
    wanted = set(singles)
    uploads: list[tuple[str, Path | bytes]] = list(singles.items())
    if len(small) >= BUNDLE_MIN_FILES:
        for _, path in small:
            del singles[
                Keys.stage_output(job_id, stage, output, path.relative_to(folder).as_posix())
            ]
        blobs = _bundles(small)
        named = {
            prefix + f"{BUNDLE_PREFIX}{n:04d}{BUNDLE_SUFFIX}": blob for n, blob in enumerate(blobs)
        }
        uploads = [*singles.items(), *named.items()]
        wanted = set(singles) | set(named)

    def put(key: str, item: Path | bytes) -> None:
        if isinstance(item, bytes):
            store.put_bytes(key, item, content_type="application/x-tar")
        else:
            store.put_file(key, item)

    _parallel(uploads, put)
    for info in list(store.list(prefix)):
        if info.key not in wanted:
            store.delete(info.key)
    return prefix, len(files)


def write_json(store: ObjectStore, key: str, doc: object) -> str:
    return store.put_bytes(
        key, json.dumps(doc, sort_keys=True).encode(), content_type="application/json"
    )
