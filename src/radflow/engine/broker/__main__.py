"""Standalone broker: ``python -m radflow.engine.broker --manifests DIR --state DIR [--port N]``.

Reads every ``*.yaml``/``*.yml`` under DIR (multi-document), keeps kind Broker and Trigger
(eventing.knative.dev/v1) and serves them until SIGINT/SIGTERM. Destinations must be absolute
``uri``s here (there is no resolver for ``ref``s). Prints one line ``READY <port>`` on stdout
once the ingress accepts events.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from radflow.engine.broker.runtime import BrokerRuntime
from radflow.sdk.errors import ConfigError
from radflow.sdk.logging import configure_logging


def read_manifests(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(brokers, triggers) from every YAML document under ``folder``."""
    brokers: list[dict[str, Any]] = []
    triggers: list[dict[str, Any]] = []
    files = sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")])
    for path in files:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "Broker":
                brokers.append(doc)
            elif doc.get("kind") == "Trigger":
                triggers.append(doc)
    return brokers, triggers


async def _serve(args: argparse.Namespace) -> None:
    brokers, triggers = read_manifests(Path(args.manifests))
    runtime = BrokerRuntime(
        brokers=brokers,
        triggers=triggers,
        state_dir=Path(args.state),
        host=args.host,
        port=args.port,
    )
    await runtime.start()
    print(f"READY {runtime.port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await runtime.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radflow.engine.broker", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--manifests", required=True, help="folder with Broker/Trigger YAML manifests"
    )
    parser.add_argument(
        "--state", required=True, help="folder for the durable queue (broker.sqlite3)"
    )
    parser.add_argument("--port", type=int, default=0, help="ingress port (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging("broker", args.log_level)
    try:
        asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
