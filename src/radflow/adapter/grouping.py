"""Study grouping: which instances form a job, and when a group is complete. Pure logic.

A *group* is keyed by (called AE title, value of the grouping tag, StudyInstanceUID by default)
and has one deterministic id for its whole life. Its first emission is revision 0
(``study.received``); instances that arrive after an emission form revision 1, 2 ...
(``study.revised``) of the same group, never a second independent job.

Completion rules (Clara semantics, plus association state, which Clara ignores):

* an instance only counts once its association was **released**; instances of an **aborted**
  association are discarded; while any contributing association is still open the group waits;
* ``timeout == 0``: the group closes as soon as its last contributing association is released;
* ``timeout == N``: it closes after N seconds without a new instance (across associations);
* it is emitted once every counted instance is in the object store.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from radflow.sdk.events import deterministic_id, job_id_for
from radflow.sdk.manifest import InstanceRef


class Decision(Enum):
    IDLE = "idle"  # nothing new to emit
    WAIT = "wait"  # something to emit, not yet complete
    EMIT = "emit"  # complete: write the manifest and the events now


@dataclass(frozen=True)
class GroupState:
    """What the spool index knows about one group's not-yet-emitted instances."""

    open_instances: int  # instances whose association is still open
    ready_instances: int  # instances of released associations, not yet emitted
    unuploaded: int  # of the ready ones, how many are not in the object store yet
    last_activity: float  # wall-clock seconds of the newest instance
    timeout: float  # the AE title's timeout (seconds)


def decide(state: GroupState, now: float) -> Decision:
    """Whether a group should be emitted now (see the module docstring)."""
    if state.ready_instances == 0:
        return Decision.WAIT if state.open_instances else Decision.IDLE
    if state.open_instances:
        return Decision.WAIT
    if state.timeout > 0 and now - state.last_activity < state.timeout:
        return Decision.WAIT
    if state.unuploaded:
        return Decision.WAIT
    return Decision.EMIT


def seconds_until_due(state: GroupState, now: float) -> float | None:
    """How long until a timed group may close (``None`` when time is not what it waits for)."""
    if state.timeout <= 0 or state.ready_instances == 0 or state.open_instances:
        return None
    return max(0.0, state.last_activity + state.timeout - now)


def group_id(called_ae: str, group_value: str) -> str:
    return deterministic_id("dicom-group", called_ae.strip(), group_value)


def study_id(study_instance_uid: str) -> str:
    return deterministic_id("study", study_instance_uid)


def job_id(group: str, pipeline: str, revision: int) -> str:
    """The job id, also the CloudEvent id: a re-send of the same job is the same event.

    Stages and the job tracker check a job request against it
    (:meth:`~radflow.sdk.events.JobRequested.identity_problem`)."""
    return job_id_for(group, pipeline, revision)


def manifest_group(group: str, revision: int) -> str:
    """The per-revision name under which a manifest is stored (revisions never overwrite)."""
    return f"{group}-r{revision}"


def merge_revision(
    previous: list[InstanceRef], arrived: list[InstanceRef], *, overwrite: bool
) -> tuple[list[InstanceRef], int]:
    """The cumulative instance list of the next revision and how many entries changed.

    ``arrived`` is in arrival order. A SOP Instance UID seen before keeps its first entry
    unless ``overwrite`` (Clara's ``overwrite-same-instance``) is set, in which case the newest
    copy replaces it. Zero changes means there is nothing to announce.
    """
    merged: dict[str, InstanceRef] = {i.sop_instance_uid: i for i in previous}
    changed = 0
    for inst in arrived:
        old = merged.get(inst.sop_instance_uid)
        if old is None:
            merged[inst.sop_instance_uid] = inst
            changed += 1
        elif overwrite and old != inst:
            merged[inst.sop_instance_uid] = inst
            changed += 1
    ordered = sorted(merged.values(), key=lambda i: (i.series_instance_uid, i.sop_instance_uid))
    return ordered, changed
