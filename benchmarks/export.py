"""SCU export time to dcmtk storescp (TCP_NODELAY=1), associate + C-STORE + release included.

    .venv/bin/python benchmarks/export.py [--repeat 5] [--sizes-mb 5,50]

Goal (shared/docs/performance-baselines.md, G8): <= 100 ms for a SEG <= 10 MB and <= 0.5 s for
50 MB against a Nagle-off peer. Each size is one synthetic Segmentation Storage file (the SCU
streams files as stored, so only the byte count matters). ``radflow`` is scu-export's
``send_to`` (one association, STORE_SEND_CHUNKED_DATASET); ``storescu`` is dcmtk's storescu
sending the same file to the same peer, for reference. Prints JSON (median and min, seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import SegmentationStorage

from radflow.engine.ports import free_port, wait_for_port
from radflow.functions.scu_export.destinations import Destination
from radflow.functions.scu_export.logic import Instance, send_to
from radflow.functions.scu_export.settings import ScuExportSettings


def make_file(path: Path, nbytes: int) -> Instance:
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SegmentationStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SegmentationStorage, uid, "SEG"
    ds.add_new(0x00090010, "LO", "RADFLOW BENCH")
    ds.add_new(
        0x00091010,
        "OB",
        np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8).tobytes(),
    )
    ds.save_as(path, enforce_file_format=True)
    return Instance(path, path.name, str(SegmentationStorage), uid, str(ExplicitVRLittleEndian))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes-mb", default="5,50")
    args = ap.parse_args()
    if not shutil.which("storescp"):
        raise SystemExit("dcmtk storescp is required (apt-get install dcmtk)")
    env = {**os.environ, "TCP_NODELAY": "1"}
    settings = ScuExportSettings.model_validate({"DESTINATIONS": "BENCH", "SCU_ATTEMPTS": "1"})
    result: dict[str, object] = {
        "machine": f"{platform.machine()} cpus={os.cpu_count()}",
        "peer": "storescp +B --max-pdu 131072, TCP_NODELAY=1, writing to a temp folder",
        "repeat": args.repeat,
    }
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        out = Path(tmp) / "received"
        out.mkdir()
        scp = subprocess.Popen(
            ["storescp", "-aet", "BENCH", "+B", "--max-pdu", "131072", "-od", str(out), str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not wait_for_port("127.0.0.1", port, 10):
                raise SystemExit("storescp did not start")
            dest = Destination("BENCH", "BENCH", "127.0.0.1", port)
            for mb in (float(v) for v in args.sizes_mb.split(",")):
                inst = make_file(Path(tmp) / f"seg-{mb}.dcm", int(mb * 1_000_000))
                ours, theirs = [], []
                send_to(dest, [inst], settings, "RADFLOW")  # warm-up
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    report = send_to(dest, [inst], settings, "RADFLOW")
                    ours.append(time.perf_counter() - t0)
                    assert report.files[0].result == "sent", report
                    t0 = time.perf_counter()
                    subprocess.run(
                        [
                            "storescu",
                            "-R",
                            "-aec",
                            "BENCH",
                            "--max-pdu",
                            "131072",
                            "127.0.0.1",
                            str(port),
                            str(inst.path),
                        ],
                        env=env,
                        check=True,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    theirs.append(time.perf_counter() - t0)
                    for f in out.iterdir():
                        f.unlink()
                result[f"{mb:g} MB"] = {
                    "file_bytes": inst.path.stat().st_size,
                    "radflow_s": {
                        "median": round(statistics.median(ours), 4),
                        "min": round(min(ours), 4),
                    },
                    "storescu_s": {
                        "median": round(statistics.median(theirs), 4),
                        "min": round(min(theirs), 4),
                    },
                }
        finally:
            scp.terminate()
            scp.wait(10)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
