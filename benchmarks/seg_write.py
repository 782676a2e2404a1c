"""SEG and RTSTRUCT creation + write time on a 200x512x512 series (performance-baselines G7).

Source headers come from a synthetic 200-slice 512x512 MR series (read once, no pixel data);
masks are the phantom tumour (1 segment) and a 10-label map of ellipsoids. Each variant is
built and written ``--repeat`` times; min and median are printed with the file size.

    .venv/bin/python benchmarks/seg_write.py [--slices 200] [--size 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from radflow.demo.study import make_study
from radflow.imaging import dicom, rtstruct, seg


def many_labels(shape: tuple[int, int, int], n: int, seed: int = 0) -> np.ndarray:
    """``n`` non-overlapping-ish ellipsoids, values 1..n."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    out = np.zeros(shape, np.uint8)
    for label in range(1, n + 1):
        c = rng.uniform(0.25, 0.75, 3) * shape
        r = rng.uniform(0.04, 0.1, 3) * shape
        out[((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1] = (
            label
        )
    return out


def measure(label: str, build: Callable[[], Dataset], out: Path, repeat: int) -> None:
    create, write = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ds = build()
        t1 = time.perf_counter()
        ds.save_as(out, enforce_file_format=True)
        write.append(time.perf_counter() - t1)
        create.append(t1 - t0)
    total = [c + w for c, w in zip(create, write, strict=True)]
    frames = getattr(ds, "NumberOfFrames", "-")
    print(
        f"{label:<38} create {min(create):.3f} s, write {min(write):.3f} s, "
        f"total min {min(total):.3f} / "
        f"median {statistics.median(total):.3f} s, frames {frames}, "
        f"{out.stat().st_size / 1e6:.2f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shape = (args.slices, args.size, args.size)
        study = make_study(
            root / "study", shape, decoys=False, other_series=False, phantom_factor=4, seed=2
        )
        headers = [dicom.read_header(f) for f in study.target.files]
        plan = dicom.plan_slices(dicom.slice_refs(headers))
        sources = [headers[r.instance] for r in plan.slices]
        tumour = study.label
        labels10 = many_labels(shape, 10)
        prov = seg.Provenance("benchmark", "0", "brain-tumour-demo", "1")
        names10 = [f"structure-{i}" for i in range(1, 11)]
        print(
            f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}"
        )
        print(
            f"grid {shape}; tumour in {int(tumour.any(axis=(1, 2)).sum())} slices; 10 labels in "
            f"{int(labels10.any(axis=(1, 2)).sum())} slices"
        )

        def seg_of(mask: np.ndarray, names: list[str], kind: str) -> Callable[[], Dataset]:
            return lambda: seg.build_segmentation(
                sources,
                mask,
                seg.segment_specs(names),
                prov,
                output=seg.OutputRevision("benchmark", 0),
                series_number=1,
                segmentation_type=kind,
            )

        out = root / "out.dcm"
        measure("SEG 1 segment BINARY", seg_of(tumour, ["tumour"], "binary"), out, args.repeat)
        measure("SEG 10 segments BINARY", seg_of(labels10, names10, "binary"), out, args.repeat)
        measure(
            "SEG 10 segments FRACTIONAL JPEG-LS (auto)",
            seg_of(labels10, names10, "auto"),
            out,
            args.repeat,
        )
        measure(
            "SEG 10 segments LABELMAP JPEG-LS",
            seg_of(labels10, names10, "labelmap"),
            out,
            args.repeat,
        )
        measure(
            "RTSTRUCT 1 ROI",
            lambda: rtstruct.build_rtstruct(
                headers,
                plan,
                tumour,
                rtstruct.roi_specs(["tumour"]),
                prov,
                output=seg.OutputRevision("benchmark", 0),
                series_number=1,
            ),
            out,
            args.repeat,
        )
        measure(
            "RTSTRUCT 10 ROIs",
            lambda: rtstruct.build_rtstruct(
                headers,
                plan,
                labels10,
                rtstruct.roi_specs(names10),
                prov,
                output=seg.OutputRevision("benchmark", 0),
                series_number=1,
            ),
            out,
            args.repeat,
        )


if __name__ == "__main__":
    main()
