"""What an operator's pure logic receives: Clara's operator contract as a value.

Every radflow function's ``logic.run(ctx: StageContext) -> dict`` reads its inputs from local
folders, writes its outputs to local folders and returns a small PHI-free summary. The shared
runtime (``radflow.shared.runtime``) stages the folders from and to the object store, so logic
never touches S3, HTTP or CloudEvents. Raise :class:`~radflow.shared.errors.InvalidInput` for a
permanent failure and :class:`~radflow.shared.errors.Unavailable` for a transient one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, ValidationError
from radflow.shared.errors import InvalidInput

#: Clara's unnamed input/output (``/input``, ``/output``) is called this.
DEFAULT = "default"


@dataclass(frozen=True)
class StageContext:
    job_id: str
    pipeline: str
    stage: str
    #: input name -> local folder holding that input's files (Clara ``input[].name``)
    inputs: Mapping[str, Path]
    #: output name -> empty local folder to fill (Clara ``output[].name``)
    outputs: Mapping[str, Path]
    #: the operator's pipeline variables (Clara ``variables``), also its environment
    variables: Mapping[str, str] = field(default_factory=dict)
    #: scratch space, removed after the stage
    work_dir: Path = Path("/tmp")
    #: Clara path (``/input``, ``/output/seg``) -> the local folder standing in for it
    paths: Mapping[str, Path] = field(default_factory=dict)
    #: bring-your-own operators only: the Clara ``container.command`` to run
    command: Sequence[str] = ()


class StageVariables(BaseModel):
    """Base of every operator's settings: its Clara ``variables``, parsed once per stage.

    Field aliases are the variable names. An empty value counts as unset (the runtime hands a
    declared but absent variable over as ``""``), so the field's default applies.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, hide_input_in_errors=True)

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> Self:
        """Parse ``variables``; a bad value is a permanent error naming the variable and the rule."""
        try:
            return cls.model_validate({k: v for k, v in variables.items() if v != ""})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise InvalidInput(f"pipeline variable {problems}", code="invalid_variables") from None
