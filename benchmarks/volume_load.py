"""Series -> volume: radflow (pydicom + np.frombuffer) vs SimpleITK ImageSeriesReader, same run.

A synthetic 200-slice 512x512 MR series (uint16, 526 KB per instance) is loaded
* from local disk: ours = ``read_series_volume`` (header parse, then pixels read into place);
  SimpleITK = GDCM file ordering + ``ImageSeriesReader``;
* from S3 (SeaweedFS on loopback, engine.seaweed): ours = ``ObjectStore.iter_objects`` (GETs in 4
  threads, in order) feeding ``volume_from_bytes``, which parses each header as its object arrives
  (pixels copied from the fetched bytes); SimpleITK = the same store's ``download_file`` in 4
  threads into a temp folder + the reader. Both sides use the same GET transport
  (``ObjectStore``'s direct signed GETs).

Goal (performance-baselines G6): ours <= 0.5x SimpleITK; <= 0.3 s local, <= 1.0 s from S3.

    .venv/bin/python benchmarks/volume_load.py [--slices 200] [--size 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radflow.demo.study import make_study
from radflow.engine.seaweed import SeaweedServer
from radflow.imaging import dicom
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore


def compare(
    ours: Callable[[], np.ndarray], theirs: Callable[[], np.ndarray], repeat: int, label: str
) -> None:
    """Run both alternately (shared machines drift) and print min and median of each."""
    t_ours, t_theirs, c_ours, c_theirs = [], [], [], []
    for _ in range(repeat):
        for fn, times, cpu in ((ours, t_ours, c_ours), (theirs, t_theirs, c_theirs)):
            t0, c0 = time.perf_counter(), time.process_time()
            result = fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if fn is ours:
                a = result
            else:
                assert np.array_equal(a, result), "readers disagree"
    print(
        f"{label}: radflow min {min(t_ours):.3f} s / median {statistics.median(t_ours):.3f} s; "
        f"SimpleITK min {min(t_theirs):.3f} s / median {statistics.median(t_theirs):.3f} s; "
        f"ratio (min) {min(t_ours) / min(t_theirs):.2f}x, "
        f"(median) {statistics.median(t_ours) / statistics.median(t_theirs):.2f}x; "
        f"process CPU min {min(c_ours):.3f} s vs {min(c_theirs):.3f} s "
        f"({min(c_ours) / min(c_theirs):.2f}x)"
    )


def ours_local(files: list[Path]) -> np.ndarray:
    return dicom.read_series_volume(files).array


def sitk_local(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = make_study(
            root / "study",
            (args.slices, args.size, args.size),
            decoys=False,
            other_series=False,
            phantom_factor=4,
            shuffle=True,
        )
        files = list(study.target.files)
        folder = files[0].parent
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}, "
            f"python {platform.python_version()}"
        )
        print(f"series: {len(files)} instances, {args.size}x{args.size}, {mb:.0f} MB")
        ours_local(files), sitk_local(folder)  # warm the page cache and imports
        compare(lambda: ours_local(files), lambda: sitk_local(folder), args.repeat, "local disk")

        server = SeaweedServer(data_dir=root / "weed", log_path=root / "weed.log")
        server.start()
        try:
            store = ObjectStore(
                StoreSettings(endpoint_url=server.endpoint_url, bucket=f"b{uuid.uuid4().hex[:12]}")
            )
            store.ensure_bucket()
            keys = [f"series/{f.name}" for f in files]
            with ThreadPoolExecutor(args.threads) as pool:
                list(
                    pool.map(lambda kf: store.put_file(kf[0], kf[1]), zip(keys, files, strict=True))
                )

            def ours_s3() -> np.ndarray:
                # headers parsed as the objects arrive, while the next GETs are in flight
                return dicom.volume_from_bytes(store.iter_objects(keys, threads=args.threads)).array

            def sitk_s3() -> np.ndarray:
                with tempfile.TemporaryDirectory() as dl:
                    with ThreadPoolExecutor(args.threads) as pool:
                        list(
                            pool.map(
                                lambda k: store.download_file(k, Path(dl) / Path(k).name), keys
                            )
                        )
                    return sitk_local(Path(dl))

            ours_s3()
            compare(ours_s3, sitk_s3, args.repeat, f"S3, {args.threads} GET threads")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
