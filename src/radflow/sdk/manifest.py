"""The study manifest: the document a job's ``dataref`` points at.

One manifest per emitted instance group (and revision). It lists each instance's UIDs, object
key, size and checksum; it lives in the object store, never in an event, because UIDs and the
AE titles of the sender are identifiers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class InstanceRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    key: str = Field(description="Object key of the instance, stored byte for byte as received.")
    size: int = Field(ge=0)
    sha256: str


class StudyManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: str = "radflow.study-manifest/v1"
    study_id: str
    study_instance_uid: str
    group_id: str
    revision: int = 0
    called_ae: str
    calling_ae: str = ""
    instances: list[InstanceRef]

    def mismatch(
        self, *, study_id: str, group_id: str, revision: int, instance_count: int
    ) -> str | None:
        """Why a job request naming this manifest is not about it (a forged request), or None.

        The message names the fields that disagree, never their values.
        """
        theirs = {
            "study_id": study_id,
            "group_id": group_id,
            "revision": revision,
            "instance_count": instance_count,
        }
        mine = {
            "study_id": self.study_id,
            "group_id": self.group_id,
            "revision": self.revision,
            "instance_count": len(self.instances),
        }
        wrong = sorted(name for name, value in theirs.items() if mine[name] != value)
        if wrong:
            return "job request disagrees with its manifest on " + ", ".join(wrong)
        return None
