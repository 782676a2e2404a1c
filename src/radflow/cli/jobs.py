"""``radflow pipeline …`` and ``radflow jobs …``: sub-commands the ``radflow`` console script
mounts.

Every sub-command sets ``func`` (``args -> exit status``) on its parser; the coordinator's
``cli/main.py`` calls ``args.func(args)``.

``radflow jobs`` reads the job tracker's documents, either straight from the object store
(``RADFLOW_S3_*`` when set, else the running engine's, found by :mod:`radflow.engine.runfile`)
or from a running tracker (``--url http://…``, the same JSON
the tracker serves on ``GET /jobs`` and ``GET /jobs/<id>``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from radflow.engine.compiler import TRACKER, add_compile_parser
from radflow.engine.jobs import load_job, load_jobs, redrive_job
from radflow.engine.runfile import locate
from radflow.functions import registry
from radflow.sdk import http
from radflow.sdk.errors import ConfigError
from radflow.sdk.pipeline import load_pipeline
from radflow.sdk.settings import StoreSettings


def add_pipeline_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pipeline", help="Clara pipeline definitions: validate, compile to Knative"
    )
    sub = p.add_subparsers(dest="pipeline_command", required=True)
    add_compile_parser(sub)
    v = sub.add_parser("validate", help="check pipeline files and print their DAGs")
    v.add_argument("pipelines", nargs="*", help="Clara pipeline files (default: pipelines/*.yaml)")
    v.set_defaults(func=cmd_validate)


def add_jobs_commands(subparsers: Any) -> None:
    j = subparsers.add_parser("jobs", help="list jobs and their stages (job tracker)")
    j.add_argument("--json", action="store_true", help="print JSON (as served by the tracker)")
    j.add_argument("--url", help="job tracker URL (default: read the object store directly)")
    j.set_defaults(func=cmd_jobs)
    sub = j.add_subparsers(dest="jobs_command")
    show = sub.add_parser("show", help="one job: stage timeline, outputs and logs")
    show.add_argument("job_id", help="a job id or a unique prefix of one")
    show.add_argument("--json", action="store_true", help="print JSON (as served by the tracker)")
    show.add_argument("--url", help="job tracker URL (default: read the object store directly)")
    show.set_defaults(func=cmd_show)
    redrive = sub.add_parser(
        "redrive", help="start a failed job again from its failed stage (asks the tracker)"
    )
    redrive.add_argument("job_id", help="the failed job's id")
    redrive.add_argument(
        "--url",
        help="job tracker URL (it publishes the events; default: the running engine's tracker)",
    )
    redrive.set_defaults(func=cmd_redrive)


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.pipelines] or sorted(Path("pipelines").glob("*.yaml"))
    status = 0
    for path in paths:
        try:
            p = load_pipeline(path, functions=registry.names())
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"{path}: pipeline {p.name!r} ok")
        for stage in p.stage_names():
            ups = p.operator(stage).upstream()
            print(f"  {stage:<28} after {', '.join(ups) if ups else '(job request)'}")
    return status


# ---------------------------------------------------------------------------- rendering


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value) / 1000
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def _short_time(value: Any) -> str:
    if not value:
        return "-"
    try:
        return _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
    except ValueError:
        return str(value)


def render_jobs(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs yet"
    rows = [("JOB", "PIPELINE", "STUDY", "STATE", "CREATED", "STAGES")]
    for j in jobs:
        stages = "  ".join(
            f"{name}:{s['state']}({_ms(s.get('duration_ms'))})" for name, s in j["stages"].items()
        )
        rows.append(
            (
                j["job_id"],
                j["pipeline"],
                j.get("study_instance_uid") or j.get("study_id") or "-",
                j["state"],
                _short_time(j.get("created_at")),
                stages,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows)


def render_job(doc: dict[str, Any]) -> str:
    lines = [
        f"job       {doc['job_id']}",
        f"pipeline  {doc['pipeline']}",
        f"study     {doc.get('study_instance_uid') or '-'}  "
        f"(radflow id {doc.get('study_id') or '-'})",
        f"state     {doc['state']}"
        + (
            f" (stage {doc.get('failed_stage') or '-'}: {doc['reason']})"
            if doc.get("reason")
            else ""
        ),
        f"created   {_short_time(doc.get('created_at'))}    "
        f"finished {_short_time(doc.get('finished_at'))}",
        "",
        "stage timeline:",
    ]
    order = sorted(doc["stages"].items(), key=lambda kv: (kv[1].get("started_at") or "~", kv[0]))
    for name, s in order:
        lines.append(
            f"  {name:<24} {s['state']:<13} start {_short_time(s.get('started_at'))}  "
            f"end {_short_time(s.get('completed_at') or s.get('failed_at'))}  "
            f"took {_ms(s.get('duration_ms'))}"
        )
        if s.get("reason"):
            lines.append(f"      reason:  {s['reason']}: {s.get('message', '')}")
        for out, uri in sorted((s.get("outputs") or {}).items()):
            lines.append(f"      output {out}: {uri}")
        if s.get("log"):
            lines.append(f"      log: {s['log']}")
    for dl in doc.get("dead_letters", []):
        lines.append(
            f"  dead letter: {dl['type']} -> {dl.get('stage') or dl.get('destination')} "
            f"(HTTP {dl['code']}) at {_short_time(dl['at'])}"
        )
    return "\n".join(lines)


def _store_settings(args: argparse.Namespace) -> StoreSettings | None:
    """Where to read job documents: ``RADFLOW_S3_*`` when set, else the running engine's store;
    ``None`` (after saying so) when neither is there."""
    if args.url or os.environ.get("RADFLOW_S3_ENDPOINT_URL"):
        return StoreSettings()
    located = locate(getattr(args, "state_dir_option", None))
    if located.engine is None or not isinstance(located.engine.get("s3"), dict):
        print(located.not_running(), file=sys.stderr)
        return None
    return StoreSettings(**located.engine["s3"])


def cmd_jobs(args: argparse.Namespace) -> int:
    store = _store_settings(args)
    if store is None:
        return 1
    jobs = load_jobs(args.url, store)
    print(json.dumps({"jobs": jobs}, indent=2, sort_keys=True) if args.json else render_jobs(jobs))
    return 0


def find_job(
    url: str | None, given: str, store: StoreSettings | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The job whose id is ``given`` or, failing that, the one job whose id starts with it
    (job ids are 36-character UUIDs nobody types); else ``None`` and why."""
    doc = load_job(url, given, store)
    if doc is not None:
        return doc, ""
    candidates = sorted(j["job_id"] for j in load_jobs(url, store) if j["job_id"].startswith(given))
    if not candidates:
        return None, f"job {given} not found"
    if len(candidates) > 1:
        return None, f"job id prefix {given!r} is ambiguous: {', '.join(candidates)}"
    return load_job(url, candidates[0], store), ""


def cmd_show(args: argparse.Namespace) -> int:
    store = _store_settings(args)
    if store is None:
        return 1
    doc, problem = find_job(args.url, args.job_id, store)
    if doc is None:
        print(problem or f"job {args.job_id} not found", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else render_job(doc))
    return 0


def tracker_url(args: argparse.Namespace) -> str | None:
    """``--url``, else the running engine's job tracker (its Service ``job-tracker``); ``None``
    (after saying why) when there is neither."""
    if args.url:
        return str(args.url)
    located = locate(getattr(args, "state_dir_option", None))
    if located.engine is None:
        print(located.not_running(), file=sys.stderr)
        return None
    status = http.get_json(str(located.engine["control_url"]) + "/status", timeout=5)
    for function in status.get("functions", []) if isinstance(status, dict) else []:
        if function.get("name") == TRACKER:
            return str(function["url"])
    print(f"radflow: the running engine has no {TRACKER} service; give --url", file=sys.stderr)
    return None


def cmd_redrive(args: argparse.Namespace) -> int:
    url = tracker_url(args)
    if url is None:
        return 1
    try:
        answer = redrive_job(url, args.job_id)
    except http.RequestRejected as exc:
        reason = exc.body.get("reason") if isinstance(exc.body, dict) else None
        print(f"job {args.job_id} not re-driven: {reason or exc}", file=sys.stderr)
        return 1
    if answer is None:
        print(f"job {args.job_id} not found", file=sys.stderr)
        return 1
    print(
        f"job {args.job_id} re-driven (#{answer['redriven']}) from "
        f"{', '.join(answer['stages'])}: {answer['events']} event(s) published"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m radflow.cli.jobs``) until ``radflow`` mounts these."""
    parser = argparse.ArgumentParser(prog="radflow")
    sub = parser.add_subparsers(dest="command", required=True)
    add_pipeline_commands(sub)
    add_jobs_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
