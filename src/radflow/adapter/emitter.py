"""Closes complete groups: writes the study manifest, then queues one job event per pipeline.

Runs in one thread, woken when an association ends or an upload finishes and otherwise every
``tick`` seconds for groups waiting on their timeout. Order of effects, each idempotent:

1. PUT the manifest at a per-revision key (same instances -> same document);
2. one SQLite transaction: insert the events into the outbox, drop the emitted instance rows,
   advance the group's revision.

A crash between 1 and 2 repeats step 1 with identical content and ids on the next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from radflow.adapter import grouping
from radflow.adapter.config import AdapterConfig
from radflow.adapter.loop import WakeableLoop
from radflow.adapter.spool.groups import GroupRow, Groups
from radflow.sdk import events
from radflow.sdk.errors import Unavailable
from radflow.sdk.manifest import InstanceRef, StudyManifest
from radflow.sdk.storage import Keys, NotFound, ObjectStore

log = logging.getLogger(__name__)


class Emitter(WakeableLoop):
    def __init__(
        self,
        groups: Groups,
        store: ObjectStore,
        config: Callable[[], AdapterConfig],
        *,
        on_queued: Callable[[], None],
        tick: float = 0.1,
    ) -> None:
        self.groups = groups
        self.store = store
        self.config = config
        self.on_queued = on_queued
        self.tick = tick
        super().__init__("emitter")
        self.emitted = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once(time.time())
            except Unavailable as exc:
                log.warning("group emission postponed: %s", exc)
                self._wake.wait(1.0)
            except Exception:
                log.exception("group emission pass failed")
                self._wake.wait(1.0)
            self._wake.wait(self.tick)

    def run_once(self, now: float) -> int:
        """Emit every group that is complete at ``now``; returns how many were emitted."""
        cfg = self.config()
        count = 0
        for row in self.groups.rows():
            ae = cfg.ae(row.called_ae)
            timeout = ae.timeout if ae is not None else 0.0
            state = grouping.GroupState(
                row.open_instances, row.ready_instances, row.unuploaded, row.last_activity, timeout
            )
            if grouping.decide(state, now) is grouping.Decision.EMIT:
                if self._emit(row, cfg):
                    count += 1
        return count

    def _emit(self, row: GroupRow, cfg: AdapterConfig) -> bool:
        ae = cfg.ae(row.called_ae)
        overwrite = ae.overwrite_same_instance if ae is not None else False
        ready = self.groups.ready_instances(row.group_id)
        if not ready:
            return False
        revision = row.next_revision
        previous: list[InstanceRef] = []
        if revision > 0 and row.last_manifest:
            try:
                previous = StudyManifest.model_validate_json(
                    self.store.get_bytes(row.last_manifest)
                ).instances
            except NotFound:
                log.error(
                    "manifest of the previous revision is missing; "
                    "revision lists only new instances"
                )
        arrived = [
            InstanceRef(
                sop_instance_uid=r.sop_uid,
                sop_class_uid=r.sop_class,
                series_instance_uid=r.series_uid,
                transfer_syntax_uid=r.ts_uid,
                key=r.key,
                size=r.size,
                sha256=r.sha256,
            )
            for r in ready
        ]
        instances, changed = grouping.merge_revision(previous, arrived, overwrite=overwrite)
        ids = [r.id for r in ready]
        if changed == 0:
            # re-sent instances that change nothing: no new revision, no event
            self.groups.commit_emission(row.group_id, revision, None, ids, [])
            log.info("group re-sent without changes; no revision", extra={"group_id": row.group_id})
            return False
        study_uid = ready[0].study_uid
        sid = grouping.study_id(study_uid)
        manifest = StudyManifest(
            study_id=sid,
            study_instance_uid=study_uid,
            group_id=row.group_id,
            revision=revision,
            called_ae=row.called_ae,
            calling_ae=row.calling_ae,
            instances=instances,
        )
        key = Keys.manifest(sid, grouping.manifest_group(row.group_id, revision))
        self.store.put_bytes(
            key, manifest.model_dump_json(indent=1).encode(), content_type="application/json"
        )
        pipelines = cfg.pipelines_for(row.called_ae)
        if not pipelines:
            log.warning(
                "no pipeline mapped to the called AE; study stored, no job started",
                extra={"called_ae": row.called_ae},
            )
        batch = []
        for pipeline in pipelines:
            jid = grouping.job_id(row.group_id, pipeline, revision)
            data = events.JobRequested(
                job_id=jid,
                pipeline=pipeline,
                study_id=sid,
                group_id=row.group_id,
                revision=revision,
                manifest_key=key,
                instance_count=len(instances),
                called_ae=row.called_ae,
            )
            event = events.make_event(
                events.EventType.STUDY_RECEIVED
                if revision == 0
                else events.EventType.STUDY_REVISED,
                f"/radflow/dicom-adapter/{row.called_ae}",
                data,
                id=jid,
                subject=sid,
                extensions={
                    events.Ext.JOB: jid,
                    events.Ext.PIPELINE: pipeline,
                    events.Ext.DATAREF: self.store.uri(key),
                },
            )
            batch.append((jid, events.to_json(event)))
        if not self.groups.commit_emission(row.group_id, revision, key, ids, batch):
            return False
        self.emitted += 1
        log.info(
            "group emitted",
            extra={
                "group_id": row.group_id,
                "revision": revision,
                "instances": len(instances),
                "jobs": len(batch),
            },
        )
        self.on_queued()
        return True
