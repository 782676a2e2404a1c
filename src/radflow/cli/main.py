"""The ``radflow`` command: ``up``, ``status``, ``logs``, ``models``, ``demo``, ``dicom``,
``pipeline``, ``jobs``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radflow.sdk import http
from radflow.sdk.errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from radflow.engine.config import EngineConfig

DEFAULT_STATE = Path(".radflow")


def load_up_config(args: argparse.Namespace) -> EngineConfig:
    """The engine configuration ``radflow up`` runs with: the file's ``radflow:`` section, then
    the options given on the command line (an option left out keeps the file's value).

    The file's adapter part is validated here too, before anything starts: a typo would
    otherwise surface only as an adapter crash-looping with the reason in its log.
    """
    from radflow.adapter.config import load_yaml
    from radflow.engine.config import load_engine_config

    config = load_engine_config(
        args.config,
        state_dir=args.state_dir_option,
        manifests=args.manifests,
        scale_to_zero_after=args.scale_to_zero_after,
    )
    if config.adapter_config is not None:
        load_yaml(config.adapter_config)
    return config


def cmd_up(args: argparse.Namespace) -> int:
    from radflow.engine.stack import Engine
    from radflow.sdk.logging import configure_logging

    config = load_up_config(args)
    configure_logging("engine", args.log_level, "text" if sys.stderr.isatty() else "json")

    async def run() -> None:
        engine = Engine(config)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await engine.start()
            print(_format_status(engine.status()), flush=True)
            print("radflow is up; Ctrl-C stops everything.", flush=True)
            await stopping.wait()
        finally:
            began = time.monotonic()
            print("radflow is stopping ...", flush=True)
            await engine.stop(report=lambda line: print(f"  {line}", flush=True))
            print(f"radflow stopped ({time.monotonic() - began:.1f} s)", flush=True)

    asyncio.run(run())
    return 0


def _format_status(status: dict[str, Any]) -> str:
    lines = [
        f"engine      pid {status['pid']}  control {status['control_url']}  "
        f"state {status['state_dir']}"
    ]
    s3 = status["s3"]
    lines.append(
        f"s3          {s3['endpoint_url']}  bucket {s3['bucket']}"
        f"{'  (SeaweedFS)' if s3['embedded'] else ''}"
    )
    if status.get("triton"):
        lines.append(f"triton      {status['triton']['url']}")
    for a in status.get("adapters", []):
        titles = ", ".join(a["ae_titles"]) or "none"
        lines.append(f"dicom       {a['dicom']}  AE titles {titles}  ({a['name']})")
        lines.append(f"rest api    {a['rest_api']}  (radflow dicom --api, Clara /api/config)")
        if a.get("rest_changes"):
            lines.append(
                f"config      {a.get('config') or 'no file'} + REST changes: "
                f"{', '.join(a['rest_changes'])}"
            )
        for note in a.get("config_notes", []):
            lines.append(f"            {note}")
        if a.get("config_problem"):
            lines.append(f"            configuration problem: {a['config_problem']}")
    for b in status["brokers"]:
        lines.append(f"broker      {b['namespace']}/{b['name']}  {b['url']}  (ingress)")
    for w in status["workloads"]:
        lines.append(f"deployment  {w.get('name')}  {w.get('state', '')}  pid {w.get('pid', '-')}")
    for f in status["functions"]:
        n = len(f.get("instances", []))
        lines.append(f"function    {f['name']:<40} {n} running  {f['url']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from radflow.engine.runfile import locate

    located = locate(args.state_dir_option)
    state = located.engine
    if state is None:
        print(located.not_running(), file=sys.stderr)
        return 1
    try:
        status = http.get_json(state["control_url"] + "/status", timeout=5)
    except (http.ServiceUnavailable, http.RequestRejected) as exc:
        print(
            f"radflow engine pid {state['pid']} does not answer at {state['control_url']}: "
            f"{exc.detail}",
            file=sys.stderr,
        )
        return 1
    for adapter in status.get("adapters", []):
        _live_ae_titles(adapter)
    print(json.dumps(status, indent=2) if args.json else _format_status(status))
    return 0


def _live_ae_titles(adapter: dict[str, Any]) -> None:
    """Replace the file's AE titles with those the adapter serves now (REST changes included);
    keep the file's when its API does not answer yet."""
    try:
        served = http.get_json(adapter["rest_api"] + "/api/config/claraaetitle", timeout=2)
    except (http.ServiceUnavailable, http.RequestRejected):
        return
    if isinstance(served, list):
        adapter["ae_titles"] = [str(e.get("aeTitle")) for e in served if isinstance(e, dict)]
    try:
        health = http.get_json(adapter["rest_api"] + "/health/status", timeout=2)
    except (http.ServiceUnavailable, http.RequestRejected):
        return
    config = health.get("config") if isinstance(health, dict) else None
    if isinstance(config, dict):
        adapter["rest_changes"] = list(config.get("rest_changes") or [])
        adapter["config_notes"] = list(config.get("notes") or [])
        if config.get("file_problem"):
            adapter["config_problem"] = f"{config['file_problem']} (not applied)"


def cmd_logs(args: argparse.Namespace) -> int:
    from radflow.engine.host import tail_log
    from radflow.engine.runfile import locate

    logs = locate(args.state_dir_option).state_dir / "logs"
    path = logs / f"{args.function}.log"
    if not path.exists():  # `triton`: the one pipeline's `<pipeline>-triton` Service
        suffixed = sorted(logs.glob(f"*-{args.function}.log"))
        path = suffixed[0] if len(suffixed) == 1 else path
    if not path.exists():
        known = sorted(p.stem for p in logs.glob("*.log"))
        print(f"no log for {args.function!r}; known: {', '.join(known) or 'none'}", file=sys.stderr)
        return 1
    from radflow.sdk.logging import render_line

    readable = sys.stdout.isatty() and not args.json
    try:
        for line in tail_log(path, follow=args.follow, lines=args.lines):
            line = render_line(line) if readable else line
            print(line, end="" if line.endswith("\n") else "\n", flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_models_push(args: argparse.Namespace) -> int:
    """Mirror a Triton model repository folder into ``<bucket>/models/`` of the object store."""
    from radflow.engine import models
    from radflow.engine.runfile import locate
    from radflow.sdk.settings import StoreSettings
    from radflow.sdk.storage import ObjectStore

    settings = StoreSettings()
    if not settings.endpoint_url:  # the running local engine's embedded store, if any
        located = locate(args.state_dir_option)
        if located.engine is not None and isinstance(located.engine.get("s3"), dict):
            settings = StoreSettings(**located.engine["s3"])
    store = ObjectStore(settings)
    store.ensure_bucket()
    report = models.push(store, args.repository, prune=args.prune)
    url = models.repository_url(settings.endpoint_url, settings.bucket)
    print(
        f"{url}: {len(report.uploaded)} uploaded, {len(report.unchanged)} unchanged, "
        f"{len(report.deleted)} deleted"
    )
    if report.kept:
        print(f"not in {args.repository} (kept; --prune deletes them): {', '.join(report.kept)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from radflow.demo.runner import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radflow",
        description="Event-driven AI pipelines for medical imaging: run the engine, "
        "manage the DICOM adapter, compile pipelines, follow jobs.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="engine state folder (default: up: the config's radflow.state-dir, else .radflow; "
        "other commands: the running engine's, found from any folder)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the embedded engine in the foreground")
    up.add_argument(
        "--config", type=Path, help="Clara DICOM adapter YAML (optional radflow: section)"
    )
    up.add_argument("--manifests", type=Path, help="manifest folder (default: the repo's knative/)")
    up.add_argument(
        "--scale-to-zero-after", type=float, help="idle seconds before a function stops"
    )
    up.add_argument("--log-level", default="INFO", help="engine log level (default INFO)")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="what runs where")
    st.add_argument("--json", action="store_true", help="print the engine's status as JSON")
    st.set_defaults(func=cmd_status)

    lg = sub.add_parser("logs", help="a function's log")
    lg.add_argument(
        "function",
        help="Knative Service name (Triton's too, e.g. brain-tumor-segmentation-triton), "
        "seaweedfs or a Deployment name",
    )
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.add_argument(
        "-n", "--lines", type=int, default=200, help="last lines to print (default 200)"
    )
    lg.add_argument(
        "--json",
        action="store_true",
        help="print the JSON lines as written (default on a terminal: readable text)",
    )
    lg.set_defaults(func=cmd_logs)

    md = sub.add_parser("models", help="the Triton model repository in the object store")
    md_sub = md.add_subparsers(dest="models_command", required=True)
    push = md_sub.add_parser(
        "push",
        help="upload a model repository to <bucket>/models/ (what Triton reads via s3://)",
    )
    push.add_argument(
        "repository",
        type=Path,
        nargs="?",
        default=Path("models/triton"),
        help="model repository folder (default: models/triton)",
    )
    push.add_argument(
        "--prune",
        action="store_true",
        help="also delete objects under models/ that the folder does not have",
    )
    push.set_defaults(func=cmd_models_push)

    demo = sub.add_parser(
        "demo", help="push a synthetic brain MR study through the reference pipeline"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's state folder")
    demo.add_argument("--slices", type=int, default=None, help="slices of the synthetic series")
    demo.set_defaults(func=cmd_demo)

    from radflow.cli.dicom import add_dicom_commands
    from radflow.cli.jobs import add_jobs_commands, add_pipeline_commands

    add_dicom_commands(sub)
    add_pipeline_commands(sub)
    add_jobs_commands(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``state_dir`` defaults to ``.radflow`` while
    ``state_dir_option`` keeps what was given, so ``up`` lets the file's ``state-dir`` decide."""
    args = build_parser().parse_args(argv)
    args.state_dir_option = args.state_dir
    args.state_dir = args.state_dir or DEFAULT_STATE
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"radflow: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:  # the engine or one of its parts went away: one line, no trace
        print(f"radflow: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
