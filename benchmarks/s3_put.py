"""S3 PUT cost of one 526 KB DICOM-sized object: client CPU and SeaweedFS CPU per PUT.

Compares, against SeaweedFS on loopback (engine.seaweed), in one process:

* ``boto3 default``: a boto3 client with botocore's defaults (CRC32 request checksums, SHA-256
  payload signing over plain HTTP);
* ``radflow put_file``: ``ObjectStore.put_file`` as the adapter's uploader calls it (direct SigV4
  PUT, unsigned payload, the instance's SHA-256 as ``x-amz-checksum-sha256``, ``If-None-Match``).

CPU comes from getrusage (this process) and /proc (the SeaweedFS process); medians over rounds.

    .venv/bin/python benchmarks/s3_put.py [--puts 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.config import Config

from radflow.engine.seaweed import SeaweedServer
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(
    put: Callable[[str], object], n: int, weed_pid: int, prefix: str
) -> tuple[float, float, float]:
    """(wall ms, client CPU ms, SeaweedFS CPU ms) per PUT."""
    c0, w0, t0 = own_cpu(), proc_cpu(weed_pid), time.perf_counter()
    for i in range(n):
        put(f"{prefix}/{i}.dcm")
    wall = time.perf_counter() - t0
    return 1000 * wall / n, 1000 * (own_cpu() - c0) / n, 1000 * (proc_cpu(weed_pid) - w0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puts", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = SeaweedServer(data_dir=root / "weed", log_path=root / "weed.log")
        server.start()
        try:
            settings = StoreSettings(endpoint_url=server.endpoint_url, bucket="putbench")
            store = ObjectStore(settings)
            store.ensure_bucket()
            f = root / "instance.dcm"
            f.write_bytes(os.urandom(526_000))
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            client = boto3.client(
                "s3",
                endpoint_url=settings.endpoint_url,
                region_name=settings.region,
                aws_access_key_id=settings.access_key_id.get_secret_value(),
                aws_secret_access_key=settings.secret_access_key.get_secret_value(),
                config=Config(s3={"addressing_style": "path"}),
            )

            def boto_default(key: str) -> object:
                with open(f, "rb") as fh:
                    return client.put_object(
                        Bucket=settings.bucket, Key=key, Body=fh, ContentType="application/dicom"
                    )

            def radflow_put(key: str) -> object:
                return store.put_file(
                    key, f, content_type="application/dicom", sha256=digest, if_absent=True
                )

            variants = {"boto3 default": boto_default, "radflow put_file": radflow_put}
            for name, put in variants.items():
                put(f"warm/{name}")
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
            for r in range(args.rounds):
                for name, put in variants.items():
                    results[name].append(measure(put, args.puts, server.process.pid, f"{name}/{r}"))
            print(
                f"{args.puts} PUTs of 526 KB x {args.rounds} rounds, "
                "SeaweedFS on loopback (medians per PUT):"
            )
            for name, rows in results.items():
                wall, client_cpu, weed_cpu = (
                    statistics.median(x[i] for x in rows) for i in range(3)
                )
                print(
                    f"  {name:18s} wall {wall:5.1f} ms   client CPU {client_cpu:4.2f} ms   "
                    f"SeaweedFS CPU {weed_cpu:4.2f} ms"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
