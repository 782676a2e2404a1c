"""``radflow dicom ...``: manage the adapter's AE titles over its REST API (Clara's CLI verbs).

::

    radflow dicom create aetitle --name brain --ae-title BRAIN --pipeline brain-seg [--timeout 0]
    radflow dicom create src --name pacs --ae-title PACS --host-ip 10.0.0.5
    radflow dicom create dest --name mypacs --ae-title MYPACS --host-ip 10.0.0.6 --port 104
    radflow dicom list aetitle|src|dest
    radflow dicom delete aetitle|src|dest --name NAME

The coordinator mounts :func:`add_dicom_commands` under the ``radflow`` console command; the
module also runs on its own as ``python -m radflow.cli.dicom dicom ...``. The API URL comes
from ``--api`` or ``RADFLOW_ADAPTER_API``, else from the running engine (``radflow status``),
else ``http://127.0.0.1:5000``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from radflow.sdk import http

DEFAULT_API = "http://127.0.0.1:5000"
_RESOURCE = {"aetitle": "claraaetitle", "src": "sourceaetitle", "dest": "destinationaetitle"}


def add_dicom_commands(subparsers: Any) -> None:
    """Register ``dicom create|list|delete`` on an argparse subparsers object."""
    dicom = subparsers.add_parser("dicom", help="manage the DICOM adapter's AE titles (REST API)")
    dicom.add_argument(
        "--api",
        default=None,
        help="adapter REST URL (env RADFLOW_ADAPTER_API; default: the running engine's "
        f"adapter, else {DEFAULT_API})",
    )
    verbs = dicom.add_subparsers(dest="dicom_verb", required=True)

    create = verbs.add_parser("create", help="create an AE title, a source or a destination")
    kinds = create.add_subparsers(dest="kind", required=True)
    ae = kinds.add_parser("aetitle", help="a Clara AE title the adapter listens as")
    ae.add_argument("--name", help="entity name (default: the AE title)")
    ae.add_argument("--ae-title", required=True, help="the AE title senders call")
    ae.add_argument(
        "--pipeline",
        action="append",
        default=[],
        metavar="PIPELINE_ID",
        help="pipeline to start (repeatable)",
    )
    ae.add_argument(
        "--timeout", type=float, help="grouping timeout in seconds (0 = on association release)"
    )
    ae.add_argument("--group-by", help="grouping tag, e.g. 0020,000D")
    ae.add_argument("--overwrite", action="store_true", help="overwrite-same-instance")
    ae.add_argument(
        "--ignore-sop-class",
        action="append",
        default=[],
        metavar="UID",
        help="SOP class to accept and drop (repeatable)",
    )
    src = kinds.add_parser("src", help="a DICOM source allowed to send")
    src.add_argument("--name", help="entity name (default: the AE title)")
    src.add_argument("--ae-title", required=True, help="the calling AE title of the source")
    src.add_argument("--host-ip", required=True, help="the address it connects from")
    dest = kinds.add_parser("dest", help="a DICOM destination for exports")
    dest.add_argument("--name", required=True, help="entity name results are exported by")
    dest.add_argument("--ae-title", required=True, help="the destination's AE title")
    dest.add_argument("--host-ip", required=True, help="the destination's address")
    dest.add_argument("--port", type=int, required=True, help="the destination's DICOM port")

    lst = verbs.add_parser("list", help="list AE titles, sources or destinations")
    lst.add_argument("kind", choices=sorted(_RESOURCE), help="what to list")
    delete = verbs.add_parser("delete", help="delete an AE title, a source or a destination")
    delete.add_argument("kind", choices=sorted(_RESOURCE), help="what to delete")
    delete.add_argument("--name", required=True, help="the entity's name")
    dicom.set_defaults(func=run_dicom)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    if args.kind == "aetitle":
        settings: dict[str, Any] = {}
        if args.timeout is not None:
            settings["timeout"] = args.timeout
        if args.group_by:
            settings["groupBy"] = args.group_by
        for i, pid in enumerate(args.pipeline):
            settings[f"pipeline-{i}" if len(args.pipeline) > 1 else "pipeline-default"] = pid
        body: dict[str, Any] = {
            "name": args.name or args.ae_title,
            "aeTitle": args.ae_title,
            "overwriteSameInstance": args.overwrite,
            "ignoredSopClasses": args.ignore_sop_class,
            "processorSettings": settings,
        }
        return body
    if args.kind == "src":
        return {
            "name": args.name or args.ae_title,
            "aeTitle": args.ae_title,
            "hostIp": args.host_ip,
        }
    return {"name": args.name, "aeTitle": args.ae_title, "hostIp": args.host_ip, "port": args.port}


def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """The status and JSON answer of the API; :class:`http.ServiceUnavailable` without one."""
    try:
        resp = http.request(method, url, json_body=body, timeout=10)
    except (http.RequestRejected, http.ServiceUnavailable) as exc:
        if exc.status is None:
            raise
        return exc.status, exc.body if not isinstance(exc.body, str) else {"error": exc.body}
    return resp.status, resp.json()


def adapter_api(args: argparse.Namespace) -> str:
    """``--api``, else ``RADFLOW_ADAPTER_API``, else the REST API of the running engine's
    adapter (``radflow status``), else Clara's default."""
    if args.api or os.environ.get("RADFLOW_ADAPTER_API"):
        return str(args.api or os.environ["RADFLOW_ADAPTER_API"])
    from radflow.engine.runfile import locate

    engine = locate(getattr(args, "state_dir_option", None)).engine
    if engine is not None:
        try:
            status = http.get_json(str(engine["control_url"]) + "/status", timeout=5)
        except (http.ServiceUnavailable, http.RequestRejected):
            return DEFAULT_API
        adapters = status.get("adapters") or [] if isinstance(status, dict) else []
        if adapters:
            return str(adapters[0]["rest_api"])
    return DEFAULT_API


def run_dicom(args: argparse.Namespace) -> int:
    base = adapter_api(args).rstrip("/")
    try:
        if args.dicom_verb == "create":
            status, out = _call("POST", f"{base}/api/config/{_RESOURCE[args.kind]}", _body(args))
        elif args.dicom_verb == "list":
            status, out = _call("GET", f"{base}/api/config/{_RESOURCE[args.kind]}")
        else:
            status, out = _call("DELETE", f"{base}/api/config/{_RESOURCE[args.kind]}/{args.name}")
    except http.ServiceUnavailable as exc:
        print(f"error: cannot reach the DICOM adapter API at {base}: {exc.detail}", file=sys.stderr)
        return 2
    if status >= 400:
        print(f"error: {status}: {(out or {}).get('error', out)}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radflow.cli.dicom")
    sub = parser.add_subparsers(dest="command", required=True)
    add_dicom_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
