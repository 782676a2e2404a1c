"""The function contract: what the entry point (``functions/entry.py``) serves every operator with.

``serve(request, logic.run)`` turns one Knative delivery into one stage run::

    decode CloudEvent (400 if not one)
      -> which job, is this event for me (400 if not); a job request's job id must be the id
         of its content (group, pipeline, revision), never just an event id (400
         ``job_identity_mismatch`` if not), so a replay under a new ce-id is the same job
      -> fan-in: every upstream stage completed?  else 202, nothing to do yet
      -> claim the stage (S3 conditional put, leased, heartbeated); if already claimed:
             completed/failed marker present -> reply the stored event again (redelivery)
             busy with this same event -> 503 (the broker retries; a dead run's lease lapses)
             busy with another event   -> 202 (that delivery owns the run)
             stale (its run died)      -> take it over and run
      -> a job request (first stages): its manifest must exist and be about this job (study,
         group, revision, instance count), else 400 ``manifest_missing`` /
         ``job_identity_mismatch`` (the broker dead-letters it; the job tracker fails the job)
      -> stage inputs from S3 into local folders (Clara's /input, named inputs)
      -> logic.run(ctx)                 InvalidInput -> failed marker + STAGE_FAILED reply (200)
                                        Unavailable  -> 503;  anything else -> 500 (retried)
         (the object store refusing a request at any step, StoreRefused, is permanent too:
          STAGE_FAILED with reason ``store_refused``, its marker stored if the store takes it)
      -> upload outputs under deterministic keys, write the completed marker (first writer wins)
      -> reply STAGE_COMPLETED in binary mode (200), with the join attribute of each fan-in
         stage downstream whose upstream stages have now all completed (its Triggers wait
         for that attribute, so it is woken once, not once per upstream)

The Service's environment says who the function is (written by ``radflow pipeline compile``):
``RADFLOW_STAGE_SPEC`` (JSON :class:`~radflow.sdk.pipeline.StageSpec`), ``RADFLOW_PIPELINE``,
``RADFLOW_STAGE``, the operator's Clara variables as plain variables, ``RADFLOW_S3_*`` for the
object store and optionally ``RADFLOW_CLAIM_LEASE_SECONDS`` (default 30) and
``RADFLOW_WORK_DIR`` (where local folders are made; default the system temp dir).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from radflow.sdk import events
from radflow.sdk.claims import Claim, Outcome
from radflow.sdk.errors import ConfigError, InvalidInput, RadflowError, StoreRefused, Unavailable
from radflow.sdk.events import EventType, Ext
from radflow.sdk.logging import JsonFormatter, bind, configure_logging, trace_id
from radflow.sdk.pipeline import StageSpec
from radflow.sdk.settings import ServiceSettings, StoreSettings
from radflow.sdk.stage import HEADERS_FIRST_ATTR, HeadersFirst, StageContext
from radflow.sdk.staging import (
    PartialFiles,
    load_manifest,
    stage_output_in,
    stage_study,
    stage_study_headers,
    upload_output,
    write_json,
)
from radflow.sdk.storage import AlreadyExists, Keys, NotFound, ObjectStore

logger = logging.getLogger(__name__)

__all__ = [
    "Logic",
    "Reply",
    "StageRuntime",
    "completed_event_id",
    "failed_event_id",
    "request_key",
    "serve",
]

Logic = Callable[[StageContext], Mapping[str, Any] | None]
#: what a functions-framework ``@http`` handler may return: (body, status, headers)
Reply = tuple[bytes | str, int, dict[str, str]]

#: Clara's job payload types: the first stages of a pipeline consume these
STUDY_TYPES = (EventType.STUDY_RECEIVED.value, EventType.STUDY_REVISED.value)
#: reason code (400) of a job request that is not the job it names: its job id is not derived
#: from its content, or it disagrees with the manifest it points at
JOB_MISMATCH = "job_identity_mismatch"


class _Request(Protocol):
    headers: Any

    def get_data(self) -> bytes: ...


def completed_event_id(job_id: str, stage: str) -> str:
    return events.deterministic_id(job_id, stage, "completed")


def failed_event_id(job_id: str, stage: str) -> str:
    return events.deterministic_id(job_id, stage, "failed")


def request_key(job_id: str) -> str:
    """Where the job's request (the ``study.received`` payload) is kept for later stages."""
    return Keys.job_prefix(job_id) + "request.json"


def _empty(status: int, reason: str = "") -> Reply:
    # a non-2xx body is never read as a reply; keep it a reason code only (no echo of input)
    if status >= 300 and reason:
        return (json.dumps({"reason": reason}), status, {"content-type": "application/json"})
    return ("", status, {})


def _binary(event: events.CloudEvent) -> Reply:
    headers, body = events.to_binary(event)
    return (body, 200, headers)


@dataclass
class _Job:
    job_id: str
    study_id: str
    traceparent: str | None
    request: events.JobRequested | None


class _StageLog(logging.Handler):
    """Collects this run's log lines (this thread only) for ``jobs/<job>/<stage>/log.jsonl``."""

    def __init__(self, path: Path, stage: str) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.path = path
        self.setFormatter(JsonFormatter(stage))
        self._fh = path.open("a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self._fh.write(self.format(record) + "\n")

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
        super().close()


class StageRuntime:
    """One stage of one pipeline, as configured by its Service's environment."""

    def __init__(
        self,
        spec: StageSpec,
        store: ObjectStore,
        variables: Mapping[str, str],
        *,
        lease_seconds: float = 30.0,
        work_dir: Path | None = None,
        clara_paths: bool = False,
        headers_first: bool = True,
    ) -> None:
        self.spec = spec
        self.store = store
        self.variables = dict(variables)
        self.lease_seconds = lease_seconds
        self.work_dir = work_dir
        #: stage straight into the Clara paths (/input, /output): the cluster wrapper image for
        #: bring-your-own operators, one request per pod
        self.clara_paths = clara_paths
        #: honour a logic's ``headers_first`` declaration (off: always stage whole objects)
        self.headers_first = headers_first
        self.source = f"/radflow/{spec.pipeline}/{spec.stage}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StageRuntime:
        raw = env.get("RADFLOW_STAGE_SPEC")
        if not raw:
            raise ConfigError(
                "RADFLOW_STAGE_SPEC is not set: this function must run as a compiled pipeline stage"
            )
        try:
            spec = StageSpec.model_validate_json(raw)
        except ValueError as exc:
            raise ConfigError(f"RADFLOW_STAGE_SPEC is not a valid stage spec: {exc}") from None
        for name, want in (("RADFLOW_PIPELINE", spec.pipeline), ("RADFLOW_STAGE", spec.stage)):
            if env.get(name, want) != want:
                raise ConfigError(
                    f"{name}={env.get(name)!r} disagrees with RADFLOW_STAGE_SPEC ({want!r})"
                )
        variables = {name: env.get(name, "") for name in spec.variables}
        # the function process's composition root: functions-framework configures no logging
        service = ServiceSettings()
        configure_logging(f"{spec.pipeline}-{spec.stage}", service.log_level, service.log_format)
        store = ObjectStore(StoreSettings())
        work = env.get("RADFLOW_WORK_DIR")
        return cls(
            spec,
            store,
            variables,
            lease_seconds=float(env.get("RADFLOW_CLAIM_LEASE_SECONDS", "30")),
            work_dir=Path(work) if work else None,
            clara_paths=env.get("RADFLOW_CLARA_PATHS", "") in ("1", "true"),
            headers_first=env.get("RADFLOW_HEADERS_FIRST", "1") not in ("0", "false"),
        )

    # ------------------------------------------------------------------ entry point

    def handle(self, headers: Mapping[str, str], body: bytes, logic: Logic) -> Reply:
        received = time.time()
        try:
            event = events.from_http(headers, body)
        except events.InvalidEvent as exc:
            logger.warning("undecodable request: %s", exc.code, extra={"stage": self.spec.stage})
            return _empty(400, exc.code)
        tp = event.get(Ext.TRACEPARENT)
        with bind(
            stage=self.spec.stage,
            pipeline=self.spec.pipeline,
            event_id=event["id"],
            trace_id=trace_id(tp),
        ):
            try:
                job = self._job_of(event)
            except events.InvalidEvent as exc:
                logger.warning("event rejected: %s", exc)
                return _empty(400, exc.code)
            with bind(job=job.job_id):
                try:
                    return self._run(event, job, logic, received)
                except StoreRefused as exc:
                    # before the run had its claim (or after it gave it up): nothing to store
                    logger.error("object store refused a request; stage failed: %s", exc)
                    return _binary(self._failed_event(job, exc))
                except Unavailable as exc:
                    logger.warning("transient failure, broker will retry: %s", exc)
                    return ("", 503, {"Retry-After": "2"})
                except Exception:
                    logger.exception("unexpected failure, broker will retry")
                    return _empty(500, "internal_error")

    # ------------------------------------------------------------------ steps

    def _job_of(self, event: events.CloudEvent) -> _Job:
        etype = event["type"]
        pipeline = event.get(Ext.PIPELINE)
        if pipeline is not None and pipeline != self.spec.pipeline:
            raise events.InvalidEvent(
                f"event for pipeline {pipeline!r} delivered to a stage of {self.spec.pipeline!r}"
            )
        subject = event.get("subject") or ""
        tp = event.get(Ext.TRACEPARENT)
        if etype in STUDY_TYPES:
            if self.spec.upstream:
                raise events.InvalidEvent(
                    f"stage {self.spec.stage!r} waits for {self.spec.upstream}, not for {etype}"
                )
            req = events.parse_payload(event, events.JobRequested)
            if req.pipeline != self.spec.pipeline:
                raise events.InvalidEvent(
                    f"job is for pipeline {req.pipeline!r}, not {self.spec.pipeline!r}"
                )
            problem = req.identity_problem()
            if problem is None and event.get(Ext.JOB) not in (None, req.job_id):
                problem = f"extension {Ext.JOB} differs from data job_id"
            if problem is not None:
                raise events.InvalidEvent(problem, code=JOB_MISMATCH)
            return _Job(req.job_id, subject or req.study_id, tp, req)
        if etype == EventType.STAGE_COMPLETED.value:
            done = events.parse_payload(event, events.StageCompleted)
            if done.stage not in self.spec.upstream:
                raise events.InvalidEvent(
                    f"stage {done.stage!r} is not upstream of {self.spec.stage!r}"
                )
            return _Job(done.job_id, subject, tp, None)
        raise events.InvalidEvent(
            f"stage {self.spec.stage!r} does not consume events of type {etype!r}"
        )

    def _stored_reply(self, job: _Job) -> Reply | None:
        for name in ("completed.json", "failed.json"):
            try:
                doc = json.loads(
                    self.store.get_bytes(Keys.stage_marker(job.job_id, self.spec.stage, name))
                )
            except NotFound:
                continue
            stored = events.from_json(json.dumps(doc["event"]).encode())
            return _binary(self._with_joins(job, stored))
        return None

    def _with_joins(self, job: _Job, event: events.CloudEvent) -> events.CloudEvent:
        """The completion plus the join attribute of each fan-in stage downstream whose
        upstream stages have all completed.

        Called once this stage's own marker is stored, so of two upstream stages finishing
        together the later one always sees both markers (both may: the fan-in stage's claim
        makes a second wake-up harmless). The stored marker holds the event without them; a
        redelivery recomputes them.
        """
        if event["type"] != EventType.STAGE_COMPLETED.value or not self.spec.joins:
            return event
        ready: dict[str, str] = {}
        for stage, ups in sorted(self.spec.joins.items()):
            if all(
                up == self.spec.stage
                or self.store.exists(Keys.stage_marker(job.job_id, up, "completed.json"))
                for up in ups
            ):
                ready[events.join_attribute(stage)] = events.JOIN_READY
        if ready:
            logger.info("fan-in inputs complete", extra={"ready": sorted(ready)})
        return events.with_attributes(event, **ready) if ready else event

    def _run(self, event: events.CloudEvent, job: _Job, logic: Logic, received: float) -> Reply:
        for up in self.spec.upstream:
            if not self.store.exists(Keys.stage_marker(job.job_id, up, "completed.json")):
                logger.info("fan-in: waiting for upstream stage", extra={"waiting_for": up})
                return _empty(202)
        claim = Claim(
            self.store,
            Keys.stage_marker(job.job_id, self.spec.stage, "claim"),
            event["id"],
            self.lease_seconds,
            max_seconds=float(self.spec.timeout_seconds),
        )
        outcome = claim.acquire()
        if outcome is not Outcome.ACQUIRED:
            # the claim is never deleted once a run finished, so only a contested claim can
            # hide a finished stage: look for its result before anything else
            stored = self._stored_reply(job)
            if stored is not None:
                logger.info("stage already finished: replying with the stored event")
                return stored
            if outcome is Outcome.BUSY_SAME_EVENT:
                return ("", 503, {"Retry-After": str(max(1, int(self.lease_seconds / 3)))})
            if outcome is Outcome.BUSY_OTHER_EVENT:
                logger.info("another delivery is running this stage")
                return _empty(202)
            claim.take_over()
        claim.start_heartbeat()
        try:
            if job.request is not None:
                try:
                    self._verify_request(job.request)
                except InvalidInput as exc:
                    claim.release()
                    logger.warning("job request refused: %s", exc)
                    return _empty(400, exc.code)
                write_json(self.store, request_key(job.job_id), job.request.model_dump(mode="json"))
            reply = self._execute(job, logic, claim, received)
        except BaseException:
            claim.release()
            raise
        claim.stop()
        return reply

    def _verify_request(self, req: events.JobRequested) -> None:
        """Refuse (InvalidInput) a job request whose manifest is missing or not about it: a
        forged request must not start a job (module docstring: what a job's identity is)."""
        manifest = load_manifest(self.store, req.manifest_key)
        problem = manifest.mismatch(
            study_id=req.study_id,
            group_id=req.group_id,
            revision=req.revision,
            instance_count=req.instance_count,
        )
        if problem is not None:
            raise InvalidInput(problem, code=JOB_MISMATCH)

    def _execute(self, job: _Job, logic: Logic, claim: Claim, received: float) -> Reply:
        root = Path(tempfile.mkdtemp(prefix=f"radflow-{self.spec.stage}-", dir=self.work_dir))
        log_path = root / "log.jsonl"
        handler = _StageLog(log_path, self.spec.stage)
        logging.getLogger().addHandler(handler)
        try:
            return self._complete(job, logic, claim, received, root, log_path, handler)
        except StoreRefused as exc:
            # permanent, wherever it came from (staging, the logic, uploading outputs, the marker)
            logger.error("object store refused a request; stage failed: %s", exc)
            return self._fail(job, exc, log_path, handler)
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
            shutil.rmtree(root, ignore_errors=True)

    def _complete(
        self,
        job: _Job,
        logic: Logic,
        claim: Claim,
        received: float,
        root: Path,
        log_path: Path,
        handler: _StageLog,
    ) -> Reply:
        """Stage in, run the logic, upload its outputs; STAGE_COMPLETED (or, on InvalidInput,
        STAGE_FAILED) stored as the stage's marker and replied."""
        ctx = self._stage_in(job, root, logic)
        started = time.time()
        try:
            summary = dict(logic(ctx) or {})
        except InvalidInput as exc:
            logger.warning("stage failed permanently: %s", exc.code)
            return self._fail(job, exc, log_path, handler)
        ended = time.time()
        outputs: dict[str, str] = {}
        count = 0
        for out in self.spec.outputs:
            prefix, n = upload_output(
                self.store, job.job_id, self.spec.stage, out.name, ctx.outputs[out.name]
            )
            outputs[out.name] = prefix
            count += n
        logger.info(
            "stage completed",
            extra={"file_count": count, "duration_ms": round((ended - started) * 1000, 1)},
        )
        self._upload_log(job, log_path, handler)
        event = events.make_event(
            EventType.STAGE_COMPLETED,
            self.source,
            events.StageCompleted(
                job_id=job.job_id,
                pipeline=self.spec.pipeline,
                stage=self.spec.stage,
                outputs=outputs,
                file_count=count,
                duration_ms=round((ended - started) * 1000, 3),
                summary=summary,
            ),
            id=completed_event_id(job.job_id, self.spec.stage),
            subject=job.study_id or None,
            extensions=self._extensions(job),
        )
        timings = {
            "received": received,
            "claimed": claim.started_at,
            "logic_start": started,
            "logic_end": ended,
        }
        return self._finish(job, "completed.json", event, timings)

    def _extensions(self, job: _Job) -> dict[str, str]:
        ext = {Ext.JOB: job.job_id, Ext.PIPELINE: self.spec.pipeline, Ext.STAGE: self.spec.stage}
        if job.traceparent:
            ext[Ext.TRACEPARENT] = job.traceparent
        return ext

    def _finish(
        self, job: _Job, marker: str, event: events.CloudEvent, timings: dict[str, float]
    ) -> Reply:
        """Write the marker (first writer wins) and reply with whichever event won."""
        timings["replied"] = time.time()
        blob = json.dumps(
            {"event": json.loads(events.to_json(event)), "timings": timings}, sort_keys=True
        )
        # reply with the stored form, so a redelivery's reply is byte-for-byte the same
        event = events.from_json(json.dumps(json.loads(blob)["event"]).encode())
        key = Keys.stage_marker(job.job_id, self.spec.stage, marker)
        try:
            self.store.put_if_absent(key, blob.encode())
        except AlreadyExists:
            logger.warning("another run finished this stage first; replying with its result")
            stored = self._stored_reply(job)
            if stored is not None:
                return stored
        return _binary(self._with_joins(job, event))

    def _fail(self, job: _Job, exc: RadflowError, log_path: Path, handler: _StageLog) -> Reply:
        """Reply STAGE_FAILED, stored as the failed marker; a store refusing that too is logged."""
        event = self._failed_event(job, exc)
        try:
            self._upload_log(job, log_path, handler)
        except StoreRefused as refused:
            logger.error("stage log not stored: %s", refused)
        try:
            return self._finish(job, "failed.json", event, {})
        except StoreRefused as refused:
            logger.error("failed marker not stored, replying without it: %s", refused)
            return _binary(event)

    def _failed_event(self, job: _Job, exc: RadflowError) -> events.CloudEvent:
        return events.make_event(
            EventType.STAGE_FAILED,
            self.source,
            events.StageFailed(
                job_id=job.job_id,
                pipeline=self.spec.pipeline,
                stage=self.spec.stage,
                reason=exc.code,
                message=str(exc),
            ),
            id=failed_event_id(job.job_id, self.spec.stage),
            subject=job.study_id or None,
            extensions=self._extensions(job),
        )

    def _upload_log(self, job: _Job, log_path: Path, handler: _StageLog) -> None:
        handler.flush()
        if log_path.exists():
            self.store.put_file(
                Keys.stage_marker(job.job_id, self.spec.stage, "log.jsonl"),
                log_path,
                content_type="application/x-ndjson",
            )

    def _stage_in(self, job: _Job, root: Path, logic: Logic) -> StageContext:
        inputs: dict[str, Path] = {}
        paths: dict[str, Path] = {}
        partial = PartialFiles(self.store)
        lazy: HeadersFirst | None = (
            getattr(logic, HEADERS_FIRST_ATTR, None) if self.headers_first else None
        )
        for inp in self.spec.inputs:
            folder = self._folder(root / "in" / inp.name, inp.path)
            if inp.from_stage is None:
                request = job.request or self._stored_request(job.job_id)
                manifest = load_manifest(self.store, request.manifest_key)
                if lazy is not None and inp.name in lazy.inputs:
                    stage_study_headers(self.store, manifest, folder, partial, lazy.header_end)
                else:
                    stage_study(self.store, manifest, folder)
            else:
                stage_output_in(
                    self.store, job.job_id, inp.from_stage, inp.output or inp.name, folder
                )
            inputs[inp.name] = folder
            paths[inp.path] = folder
        outputs: dict[str, Path] = {}
        for out in self.spec.outputs:
            folder = self._folder(root / "out" / out.name, out.path)
            folder.mkdir(parents=True, exist_ok=True)
            outputs[out.name] = folder
            paths[out.path] = folder
        scratch = root / "tmp"
        scratch.mkdir()
        return StageContext(
            revision=self._revision(job),
            job_id=job.job_id,
            pipeline=self.spec.pipeline,
            stage=self.spec.stage,
            inputs=inputs,
            outputs=outputs,
            variables=dict(self.variables),
            work_dir=scratch,
            paths=paths,
            command=tuple(self.spec.command or ()),
            complete_files=partial.complete,
        )

    def _folder(self, local: Path, clara_path: str) -> Path:
        if not self.clara_paths:
            return local
        folder = Path(clara_path)
        if folder.exists():
            shutil.rmtree(folder)  # a previous job's files must not leak into this one
        return folder

    def _revision(self, job: _Job) -> int:
        """The job's revision, from its request (stored by the first stage for later ones)."""
        if job.request is not None:
            return job.request.revision
        try:
            return self._stored_request(job.job_id).revision
        except InvalidInput:
            return 0  # a job started without a request (no study input): its first revision

    def _stored_request(self, job_id: str) -> events.JobRequested:
        try:
            blob = self.store.get_bytes(request_key(job_id))
        except NotFound:
            raise InvalidInput(
                f"job {job_id}: no stored job request ({request_key(job_id)})",
                code="job_request_missing",
            ) from None
        return events.JobRequested.model_validate_json(blob)


_lock = threading.Lock()
_runtimes: dict[tuple[str, ...], StageRuntime] = {}
#: the environment that defines a runtime; a change (tests, reloads) builds a new one
_ENV_KEYS = (
    "RADFLOW_STAGE_SPEC",
    "RADFLOW_S3_ENDPOINT_URL",
    "RADFLOW_S3_BUCKET",
    "RADFLOW_CLAIM_LEASE_SECONDS",
)


def _get_runtime() -> StageRuntime:
    """The process's runtime, built on first use (not at import: nothing connects at import)."""
    key = tuple(os.environ.get(k, "") for k in _ENV_KEYS)
    with _lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = StageRuntime.from_env(os.environ)
        return runtime


def serve(request: _Request, logic_run: Logic) -> Reply:
    """Handle one delivery for the function's stage; see the module docstring for the outcomes."""
    try:
        runtime = _get_runtime()
    except ConfigError as exc:
        logger.error("function is misconfigured: %s", exc)
        return _empty(500, exc.code)
    return runtime.handle(dict(request.headers), request.get_data(), logic_run)
