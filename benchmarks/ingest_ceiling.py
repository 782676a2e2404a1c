"""What limits DICOM ingest on this machine: pynetdicom's own ceiling and the receive path alone.

Companion to ``benchmarks/ingest.py`` (same study, same senders: ``--assocs`` dcmtk ``storescu``
processes with ``TCP_NODELAY=1``, PDU 128 KiB, 200 x 526 KB MR). Each round measures, next to
dcmtk ``storescp --fork`` writing to disk in the same round:

* ``no-op 1 proc``: one pynetdicom process (chunked receive, PDU 128 KiB) whose C-STORE handler
  stores nothing — with one association and with ``--assocs``, reporting the CPU it spends per
  instance (the polling threads of several associations share one interpreter);
* ``no-op N procs``: ``--assocs`` such processes behind one port (``SO_REUSEPORT``): the most any
  pynetdicom-based SCP could ack here, storing nothing;
* ``adapter, no S3``: the radflow adapter (default receivers, ack after fsync) with its object
  store stopped after start-up, so the drain does nothing: the receive path alone.

    .venv/bin/python benchmarks/ingest_ceiling.py [--rounds 3] [--instances 200] [--assocs 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # the shared study, senders and adapter launcher (benchmarks/ingest.py)

from radflow.engine.ports import free_port, wait_for_port
from radflow.engine.seaweed import SeaweedServer
from radflow.sdk.settings import StoreSettings
from radflow.sdk.storage import ObjectStore

NOOP_SCP = """
import socket, sys
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

class ReusePort(ThreadedAssociationServer):
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

_config.STORE_RECV_CHUNKED_DATASET = True
_config.UNRESTRICTED_STORAGE_SERVICE = True
ae = AE(ae_title="FLOOR")
ae.maximum_pdu_size = 131072
ae.maximum_associations = 16
ae.make_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)],
               server_class=ReusePort).serve_forever()
"""


def listeners(port: int) -> int:
    """How many sockets listen on ``port`` (``/proc/net/tcp``, state 0A)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


def noop(files: list[Path], processes: int, assocs: int) -> tuple[float, float]:
    """(instances/s, CPU ms per instance of the SCP processes)."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", NOOP_SCP, str(port)],
            env=ingest.ENV,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    try:
        assert wait_for_port("127.0.0.1", port, 20), "no-op SCP did not start"
        deadline = time.monotonic() + 20
        while listeners(port) < processes and time.monotonic() < deadline:
            time.sleep(0.05)  # every process must have bound the port before the senders start
        pids = [p.pid for p in procs]
        c0 = ingest.cpu_seconds(pids)
        start, end = ingest.send_parallel(port, "FLOOR", files, assocs)
        return len(files) / (end - start), 1000 * (ingest.cpu_seconds(pids) - c0) / len(files)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--assocs", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radflow-ceiling-"))
    seaweed = SeaweedServer(data_dir=work / "s3", log_path=work / "weed.log")
    seaweed.start()
    store = StoreSettings(endpoint_url=seaweed.endpoint_url, bucket="ceiling")
    ObjectStore(store).ensure_bucket()
    adapter, port = ingest.start_adapter(work, store, ingest.Sink())
    seaweed.stop()  # from here on every upload fails and backs off: the drain does nothing
    rows: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds):
            files = ingest.make_series(work / "study", args.instances)
            dcmtk = args.instances / ingest.run_storescp(files, args.assocs, work / "storescp-out")
            one, one_cpu = noop(files, 1, 1)
            many, many_cpu = noop(files, 1, args.assocs)
            procs, _ = noop(files, args.assocs, args.assocs)
            start, end = ingest.send_parallel(port, "RADFLOW", files, args.assocs)
            spool = args.instances / (end - start)
            row = {
                "storescp inst/s": dcmtk,
                "no-op 1 proc, 1 assoc: x storescp": one / dcmtk,
                "no-op 1 proc, 1 assoc: CPU ms/inst": one_cpu,
                f"no-op 1 proc, {args.assocs} assoc: x storescp": many / dcmtk,
                f"no-op 1 proc, {args.assocs} assoc: CPU ms/inst": many_cpu,
                f"no-op {args.assocs} procs: x storescp": procs / dcmtk,
                "adapter, no S3 drain: x storescp": spool / dcmtk,
            }
            for k, v in row.items():
                rows.setdefault(k, []).append(v)
            print(
                f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True
            )
    finally:
        os.killpg(adapter.pid, signal.SIGKILL)
        adapter.wait(timeout=10)
    print(
        f"\nmedians of {args.rounds} rounds ({args.instances} x 526 KB, "
        f"{args.assocs} storescu senders):"
    )
    for k, values in rows.items():
        print(
            f"  {k:40s} {statistics.median(values):8.2f}   "
            f"[{', '.join(f'{v:.2f}' for v in values)}]"
        )


if __name__ == "__main__":
    main()
