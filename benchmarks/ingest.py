r"""DICOM ingest benchmark: the radflow adapter (ack after durable store) vs dcmtk storescp to disk.

What it measures, in one run on one machine (medians over ``--runs``):

* ``storescp``: dcmtk ``storescp --fork`` writing files to a folder (page cache, no fsync);
* ``adapter``: ``python -m radflow.adapter`` (a subprocess, as deployed): C-STORE success only
  after the instance is fsync'd in the spool and indexed; the spool drains to SeaweedFS while
  the study is still arriving;

both fed by ``--assocs`` parallel dcmtk ``storescu`` processes (``TCP_NODELAY=1``, PDU 128 KiB)
sending a fresh ``--instances`` x ~526 KB MR study (512x512 16-bit). Reported: instances/s and
MB/s (launch of the senders -> last sender exits, i.e. every instance acknowledged), the ratio
adapter/storescp, and the latency from the last sender's release to the job event at a
loopback event sink (``timeout: 0``), plus the time until the event (everything in S3). For
context it also measures pynetdicom's own ceiling on the machine (the same chunked fast path
with a handler that stores nothing) and the adapter fed by a single association (a modality's
view: instances/s and release -> job event).

Usage::

    .venv/bin/python benchmarks/ingest.py [--runs 3] [--instances 200] [--assocs 4] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from pydicom.uid import generate_uid  # noqa: E402

from adapter_data import make_instance  # noqa: E402
from radflow.engine.ports import free_port, wait_for_port  # noqa: E402
from radflow.engine.seaweed import SeaweedServer  # noqa: E402
from radflow.sdk.settings import StoreSettings  # noqa: E402
from radflow.sdk.storage import ObjectStore  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


class Sink:
    """Records the arrival time of each POSTed event."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[str, str]]] = []
        self.cond = threading.Condition()
        sink = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                with sink.cond:
                    sink.arrivals.append((now, {k.lower(): v for k, v in self.headers.items()}))
                    sink.cond.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/default/radflow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals) < n and time.monotonic() < deadline:
                self.cond.wait(0.5)
            return self.arrivals[n - 1][0] if len(self.arrivals) >= n else None


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU of these processes so far (from /proc; 0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def make_series(folder: Path, n: int) -> list[Path]:
    shutil.rmtree(folder, ignore_errors=True)
    study, series = generate_uid(), generate_uid()
    files = []
    for i in range(n):
        p = folder / f"{i:04d}.dcm"
        make_instance(p, study_uid=study, series_uid=series, index=i, size=512)
        files.append(p)
    return files


def send_parallel(port: int, called: str, files: list[Path], assocs: int) -> tuple[float, float]:
    """``assocs`` storescu processes, files dealt round-robin; returns (start, last exit)."""
    chunks = [files[i::assocs] for i in range(assocs)]
    start = time.time()
    procs = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                "STORESCU",
                "-aec",
                called,
                "--max-pdu",
                "131072",
                "127.0.0.1",
                str(port),
                *map(str, c),
            ],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for c in chunks
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return start, time.time()


def run_storescp(files: list[Path], assocs: int, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            "storescp",
            "--fork",
            "--max-pdu",
            "131072",
            "-aet",
            "STORESCP",
            "-od",
            str(out),
            str(port),
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 10), "storescp did not start"
        start, end = send_parallel(port, "STORESCP", files, assocs)
        written = len(list(out.iterdir()))
        if written != len(files):
            raise RuntimeError(f"storescp wrote {written} of {len(files)} files")
        return end - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


FLOOR_SCP = """
import sys
from pynetdicom import AE, _config, evt
_config.STORE_RECV_CHUNKED_DATASET = True
_config.UNRESTRICTED_STORAGE_SERVICE = True
ae = AE(ae_title="FLOOR")
ae.maximum_pdu_size = 131072
ae.maximum_associations = 16
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
"""


def run_pynetdicom_floor(files: list[Path], assocs: int) -> float:
    """pynetdicom's own ceiling here: the same fast path, handler acks without storing anything."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_SCP, str(port)],
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 20), "pynetdicom floor SCP did not start"
        start, end = send_parallel(port, "FLOOR", files, assocs)
        return end - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def start_adapter(work: Path, store: StoreSettings, sink: Sink) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = work / "adapter.yaml"
    cfg.write_text(
        f"""dicom:
  scp:
    port: {port}
    ae-titles:
      - ae-title: RADFLOW
        timeout: 0
    max-associations: 16
    reject-unknown-sources: true
    sources:
      - ae-title: STORESCU
        host-ip: 127.0.0.1
pipeline-mappings:
  - name: bench
    clara-ae-title: RADFLOW
    pipeline-id: bench
"""
    )
    env = {
        **ENV,
        "RADFLOW_ADAPTER_CONFIG": str(cfg),
        "RADFLOW_ADAPTER_SPOOL_DIR": str(work / "spool"),
        "RADFLOW_ADAPTER_REST_PORT": str(free_port()),
        "RADFLOW_ADAPTER_DROP_POLL_SECONDS": "0",
        "RADFLOW_LOG_LEVEL": "WARNING",
        "RADFLOW_S3_ENDPOINT_URL": store.endpoint_url or "",
        "RADFLOW_S3_BUCKET": store.bucket,
        "K_SINK": sink.url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "radflow.adapter"],
        env=env,
        stderr=open(work / "adapter.log", "ab"),
        start_new_session=True,
    )
    if not wait_for_port("127.0.0.1", port, 30):
        raise RuntimeError(f"adapter did not start; see {work / 'adapter.log'}")
    return proc, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--assocs", type=int, default=4)
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    args = ap.parse_args()
    if not shutil.which("storescu") or not shutil.which("storescp"):
        print("dcmtk (storescu/storescp) is required: apt-get install dcmtk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="radflow-bench-"))
    seaweed = SeaweedServer(data_dir=work / "s3", log_path=work / "weed.log")
    seaweed.start()
    store = StoreSettings(endpoint_url=seaweed.endpoint_url, bucket="bench")
    ObjectStore(store).ensure_bucket()
    sink = Sink()
    adapter, port = start_adapter(work, store, sink)
    rows: list[dict[str, float]] = []
    try:
        for run in range(args.runs):
            files = make_series(work / "study", args.instances)
            mb = sum(f.stat().st_size for f in files) / 1e6
            t_dcmtk = run_storescp(files, args.assocs, work / "storescp-out")
            t_floor = run_pynetdicom_floor(files, args.assocs)
            n_before = len(sink.arrivals)
            parts = {
                "adapter": [adapter.pid],
                "receivers": child_pids(adapter.pid),
                "seaweedfs": [seaweed.process.pid],
            }
            cpu0 = {k: cpu_seconds(v) for k, v in parts.items()}
            start, end = send_parallel(port, "RADFLOW", files, args.assocs)
            event_at = sink.wait(n_before + 1, timeout=300)
            if event_at is None:
                raise RuntimeError("no job event within 300 s")
            cpu_ms = {
                k: 1000 * (cpu_seconds(v) - cpu0[k]) / args.instances for k, v in parts.items()
            }
            t_adapter = end - start
            # a modality's view: the same study over one association, release -> job event
            single = make_series(work / "study1", args.instances)
            s_start, s_end = send_parallel(port, "RADFLOW", single, 1)
            single_event = sink.wait(n_before + 2, timeout=300)
            if single_event is None:
                raise RuntimeError("no job event within 300 s (single association)")
            row = {
                "storescp_s": t_dcmtk,
                "storescp_inst_s": args.instances / t_dcmtk,
                "storescp_mb_s": mb / t_dcmtk,
                "adapter_s": t_adapter,
                "adapter_inst_s": args.instances / t_adapter,
                "adapter_mb_s": mb / t_adapter,
                "ratio": t_dcmtk / t_adapter,
                "pynetdicom_floor_inst_s": args.instances / t_floor,
                "adapter_1assoc_inst_s": args.instances / (s_end - s_start),
                "release_to_event_1assoc_s": single_event - s_end,
                "release_to_event_s": event_at - end,
                "start_to_event_s": event_at - start,
                "mb": mb,
                "receivers": len(parts["receivers"]),
                **{f"cpu_ms_per_inst_{k}": v for k, v in cpu_ms.items()},
            }
            rows.append(row)
            print(
                f"run {run + 1}: storescp {row['storescp_inst_s']:.0f} inst/s"
                f" | adapter {row['adapter_inst_s']:.0f} inst/s "
                f"{row['adapter_mb_s']:.0f} MB/s (x{row['ratio']:.2f})"
                f" | release->event {row['release_to_event_s'] * 1000:.0f} ms"
                f" | start->event {row['start_to_event_s']:.2f} s"
                f" | pynetdicom no-op {row['pynetdicom_floor_inst_s']:.0f} inst/s"
                f" | 1 assoc {row['adapter_1assoc_inst_s']:.0f} inst/s"
                f", release->event {row['release_to_event_1assoc_s'] * 1000:.0f} ms"
                f" | CPU ms/inst: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu_ms.items()),
                flush=True,
            )
    finally:
        os.killpg(adapter.pid, signal.SIGTERM)
        adapter.wait(timeout=30)
        seaweed.stop()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result = {
        "machine": (
            f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu, "
            f"Python {platform.python_version()}"
        ),
        "instances": args.instances,
        "assocs": args.assocs,
        "runs": rows,
        "median": med,
    }
    print(
        f"\nmedian of {len(rows)}: {args.instances} instances ({med['mb']:.0f} MB), "
        f"{args.assocs} associations\n"
        f"  dcmtk storescp (disk):        {med['storescp_inst_s']:7.0f} inst/s  "
        f"{med['storescp_mb_s']:6.0f} MB/s\n"
        f"  radflow adapter (durable ack): {med['adapter_inst_s']:6.0f} inst/s  "
        f"{med['adapter_mb_s']:6.0f} MB/s"
        f"  = {med['ratio']:.2f} x storescp\n"
        f"  pynetdicom no-op SCP:          {med['pynetdicom_floor_inst_s']:6.0f} inst/s "
        "(same fast path, nothing stored)\n"
        f"  last release -> job event:    {med['release_to_event_s'] * 1000:7.0f} ms "
        "(timeout 0; all instances in S3)\n"
        f"  first byte -> job event:      {med['start_to_event_s']:7.2f} s\n"
        f"  one association:              {med['adapter_1assoc_inst_s']:7.0f} inst/s, "
        "release -> job event "
        f"{med['release_to_event_1assoc_s'] * 1000:.0f} ms\n"
        "  CPU per instance (send -> job event): receivers "
        f"{med['cpu_ms_per_inst_receivers']:.1f} ms"
        f" ({med['receivers']:.0f} processes), adapter process "
        f"{med['cpu_ms_per_inst_adapter']:.1f} ms,"
        f" SeaweedFS {med['cpu_ms_per_inst_seaweedfs']:.1f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
