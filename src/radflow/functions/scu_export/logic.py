"""scu-export: C-STORE every result file to the named DICOM destinations.

One association per destination per task, proposing one presentation context per SOP class and
transfer syntax pair the files are encoded in (files are sent as stored, never
re-encoded: pynetdicom's ``STORE_SEND_CHUNKED_DATASET`` streams them from disk). A destination
that cannot be reached, or drops the association, is retried with exponential backoff for
``SCU_ATTEMPTS`` attempts, resending only the files it has not answered; then the stage is
``Unavailable`` and the broker retries it later (peers store by SOP Instance UID, so a resend is
harmless). A file the peer answers with a failure status is a permanent failure: the stage
fails with ``InvalidInput`` once more than ``SCU_FAILURE_THRESHOLD`` of the files failed
(default: any). Every file's outcome, with its SOP Instance UID, is written to the export
report (output ``report``, ``export-report.json``); logs and the summary carry counts only.

Pure: the destinations come in as an argument (``deps.run``, the registry entry, loads the
adapter configuration).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config, evt
from pynetdicom.status import code_to_category

from radflow.functions.scu_export.destinations import (
    CONFIG_KEY,
    Destination,
    parse_destinations,
    resolve,
    scu_ae_title,
)
from radflow.functions.scu_export.settings import ScuExportSettings
from radflow.imaging.dicom import read_file_meta
from radflow.imaging.dimse import NODELAY_HANDLERS
from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.retry import retrying
from radflow.sdk.stage import StageContext

log = logging.getLogger(__name__)

# stream files from disk as stored: no decode, no re-encode, no transfer syntax conversion
_config.STORE_SEND_CHUNKED_DATASET = True

REPORT = "report"
REPORT_FILE = "export-report.json"
DEFAULT_AE_TITLE = "RADFLOW"


@dataclass(frozen=True)
class Instance:
    """One file to send and the header fields that pick its presentation context."""

    path: Path
    relpath: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class FileResult:
    file: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    #: sent | warning | failed | pending (never answered: the destination stayed unreachable)
    result: str = "pending"
    status: str = ""
    reason: str = ""


@dataclass
class DestinationReport:
    name: str
    ae_title: str
    host: str
    port: int
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0


def collect(ctx: StageContext, inputs: tuple[str, ...]) -> tuple[list[Instance], list[FileResult]]:
    """Every file of the named inputs; files that are not DICOM Part 10 come back as failures."""
    instances: list[Instance] = []
    unreadable: list[FileResult] = []
    for name in inputs:
        folder = ctx.inputs.get(name)
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f"{name}/{path.relative_to(folder).as_posix()}"
            try:
                meta = read_file_meta(path)
                inst = Instance(
                    path,
                    rel,
                    str(meta.MediaStorageSOPClassUID),
                    str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID),
                )
            except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
                unreadable.append(
                    FileResult(
                        rel,
                        "",
                        "",
                        "",
                        result="failed",
                        reason=f"not a DICOM Part 10 file with file meta: {exc}",
                    )
                )
                continue
            instances.append(inst)
    return instances, unreadable


def _contexts(instances: list[Instance]) -> list[tuple[str, str]]:
    """One presentation context per (SOP class, transfer syntax) pair, in first-seen order.

    A peer accepts one transfer syntax per context, so two syntaxes of one class need two.
    """
    pairs = list(
        dict.fromkeys((inst.sop_class_uid, inst.transfer_syntax_uid) for inst in instances)
    )
    if len(pairs) > 128:
        raise InvalidInput(
            f"{len(pairs)} SOP class/transfer syntax pairs to send: "
            "one association offers at most 128 presentation contexts"
        )
    return pairs


def send_to(
    dest: Destination, instances: list[Instance], settings: ScuExportSettings, calling: str
) -> DestinationReport:
    """Send ``instances`` to ``dest`` over one association, retrying it while the peer is down."""
    report = DestinationReport(dest.name, dest.ae_title, dest.host, dest.port)
    results = {
        inst.relpath: FileResult(
            inst.relpath, inst.sop_instance_uid, inst.sop_class_uid, inst.transfer_syntax_uid
        )
        for inst in instances
    }
    report.files = list(results.values())
    pending = list(instances)
    started = time.perf_counter()
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout
    ae.connection_timeout = settings.timeout
    ae.maximum_pdu_size = settings.max_pdu
    for sop_class, syntax in _contexts(instances):
        ae.add_requested_context(sop_class, syntax)
    permanent_reject = ""

    def attempt() -> list[Instance]:
        """One association: send what is pending; returns what is still pending."""
        nonlocal pending, permanent_reject
        report.attempts += 1
        answer: dict[str, Any] = {}

        def on_open(event: evt.Event) -> None:
            answer["connected"] = True

        def on_acse(event: evt.Event) -> None:
            prim = event.primitive  # type: ignore[attr-defined]
            if getattr(prim, "result", None) in (0x01, 0x02):
                answer.update(
                    result=prim.result,
                    text=f"{prim.result_str}, {prim.source_str}: {prim.reason_str}",
                )

        assoc = ae.associate(
            dest.host,
            dest.port,
            ae_title=dest.ae_title,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, on_open),
                (evt.EVT_ACSE_RECV, on_acse),
                *NODELAY_HANDLERS,
            ],
        )
        if not assoc.is_established:
            if assoc.is_rejected:
                error = f"association rejected ({answer.get('text', 'no reason given')})"
                permanent_reject = error if answer.get("result") == 0x01 else ""
            elif answer.get("connected"):
                error = "association aborted by the peer (no acceptable presentation context?)"
            else:
                error = "no answer (connection refused or timed out)"
            report.errors.append(f"attempt {report.attempts}: {error}")
            return pending
        try:
            still: list[Instance] = []
            for i, inst in enumerate(pending):
                res = results[inst.relpath]
                try:
                    status = assoc.send_c_store(inst.path)
                except ValueError as exc:  # the peer accepted no context for this class/syntax
                    res.result, res.reason = "failed", f"no accepted presentation context: {exc}"
                    continue
                except (AttributeError, OSError) as exc:
                    res.result, res.reason = "failed", f"cannot read the file: {exc}"
                    continue
                if "Status" not in status:  # no answer: aborted, timed out, connection lost
                    still = pending[i:]
                    report.errors.append(
                        f"attempt {report.attempts}: "
                        f"association lost after {i} of {len(pending)} files"
                    )
                    break
                code = int(status.Status)
                res.status = f"0x{code:04X}"
                category = code_to_category(code)
                if category == "Success":
                    res.result, res.reason = "sent", ""
                elif category == "Warning":
                    res.result, res.reason = (
                        "warning",
                        str(status.get("ErrorComment", "")) or "stored with a warning",
                    )
                else:
                    res.result = "failed"
                    res.reason = f"{category.lower()} status" + (
                        f": {status.ErrorComment}" if "ErrorComment" in status else ""
                    )
            pending = still
        finally:
            if assoc.is_established:
                assoc.release()
        return pending

    # a peer that is down or drops the association: again, resending only what it has not
    # answered, SCU_RETRY_DELAY seconds later, doubling
    retrying(
        attempts=settings.attempts,
        while_result=bool,
        first_delay=settings.retry_delay,
        max_delay=float("inf"),
    )(attempt)
    report.seconds = round(time.perf_counter() - started, 4)
    if pending and permanent_reject:
        raise InvalidInput(
            f"destination {dest.name} ({dest.ae_title}@{dest.host}:{dest.port}) {permanent_reject}"
        )
    return report


def _class_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name if uid else ""


def _write_report(
    ctx: StageContext, reports: list[DestinationReport], unreadable: list[FileResult]
) -> None:
    folder = ctx.outputs.get(REPORT)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "unreadable": [asdict(r) for r in unreadable],
        "destinations": [asdict(r) for r in reports],
    }
    (folder / REPORT_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def run(ctx: StageContext, destinations: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Send the stage's result files; ``destinations`` is the adapter configuration document."""
    settings = ScuExportSettings.from_variables(ctx.variables)
    config = destinations or {}
    chosen = resolve(settings.destinations, parse_destinations(config))
    calling = settings.ae_title or scu_ae_title(config) or DEFAULT_AE_TITLE
    instances, unreadable = collect(ctx, settings.inputs)
    reports: list[DestinationReport] = []
    unreachable: list[str] = []
    try:
        for dest in chosen:
            report = (
                send_to(dest, instances, settings, calling)
                if instances
                else DestinationReport(dest.name, dest.ae_title, dest.host, dest.port)
            )
            reports.append(report)
            if any(f.result == "pending" for f in report.files):
                unreachable.append(f"{dest.name} ({'; '.join(report.errors[-1:])})")
            log.info(
                "export to destination finished",
                extra={
                    "destination": dest.name,
                    "attempts": report.attempts,
                    "sent": sum(f.result in ("sent", "warning") for f in report.files),
                    "failed": sum(f.result == "failed" for f in report.files),
                    "seconds": report.seconds,
                },
            )
    finally:
        _write_report(ctx, reports, unreadable)
    if unreachable:
        raise Unavailable(
            f"destinations unreachable after {settings.attempts} attempts: "
            f"{', '.join(unreachable)}; retry later"
        )
    total = len(instances) + len(unreadable)
    failures: list[str] = []
    worst = 0.0
    if unreadable:
        failures.append(f"{len(unreadable)} unreadable file(s)")
    for report in reports:
        bad = [f for f in report.files if f.result == "failed"]
        if total:
            worst = max(worst, (len(bad) + len(unreadable)) / total)
        if bad:
            codes = sorted({f.status or "no status" for f in bad})
            failures.append(
                f"{report.name}: {len(bad)} of {len(report.files)} file(s) failed "
                f"({', '.join(codes)})"
            )
            for f in bad:  # position and class, not the file name: names are often UIDs
                log.warning(
                    "file not stored",
                    extra={
                        "destination": report.name,
                        "input": f.file.split("/", 1)[0],
                        "position": report.files.index(f) + 1,
                        "sop_class": _class_name(f.sop_class_uid),
                        "status": f.status,
                    },
                )
    summary = {
        "destinations": len(chosen),
        "files": total,
        "sent": sum(f.result in ("sent", "warning") for r in reports for f in r.files),
        "warnings": sum(f.result == "warning" for r in reports for f in r.files),
        "failed": sum(f.result == "failed" for r in reports for f in r.files) + len(unreadable),
        # per destination, for the engine's radflow_export_failures metric (engine/metrics.py)
        "failed_by_destination": {
            r.name: sum(f.result == "failed" for f in r.files) for r in reports
        },
        "attempts": {r.name: r.attempts for r in reports},
        "seconds": {r.name: r.seconds for r in reports},
        "report": f"{REPORT}/{REPORT_FILE}" if REPORT in ctx.outputs else None,
    }
    if failures and worst > settings.failure_threshold:
        raise InvalidInput(
            "export failed permanently: "
            + "; ".join(failures)
            + f" (per-file status in output {REPORT!r}, {REPORT_FILE})"
        )
    return summary


__all__ = ["CONFIG_KEY", "run"]
