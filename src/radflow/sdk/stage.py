"""What an operator's pure logic receives: Clara's operator contract as a value.

Every radflow function's ``logic.run(ctx: StageContext) -> dict`` reads its inputs from local
folders, writes its outputs to local folders and returns a small PHI-free summary. The shared
runtime (``radflow.sdk.runtime``) stages the folders from and to the object store, so logic
never touches S3, HTTP or CloudEvents. Raise :class:`~radflow.sdk.errors.InvalidInput` for a
permanent failure and :class:`~radflow.sdk.errors.Unavailable` for a transient one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from radflow.sdk.errors import InvalidInput

#: Clara's unnamed input/output (``/input``, ``/output``) is called this.
DEFAULT = "default"

#: attribute :func:`headers_first` sets on a logic function (read by the runtime)
HEADERS_FIRST_ATTR = "__radflow_headers_first__"

_Fn = TypeVar("_Fn", bound=Callable[..., object])


@dataclass(frozen=True)
class HeadersFirst:
    """What :func:`headers_first` declared: the inputs, and where a file's header ends."""

    inputs: frozenset[str]
    header_end: Callable[[bytes], int | None]


def headers_first(*inputs: str, header_end: Callable[[bytes], int | None]) -> Callable[[_Fn], _Fn]:
    """Declare that ``logic.run`` can start from DICOM headers on the named study inputs.

    The runtime then stages each instance of those inputs (payload inputs: the study) as its
    header only, cut after the PixelData tag: a Range GET of a few KB instead of the whole
    object. The logic must call :meth:`StageContext.complete_files` with every file it reads
    pixels (or copies bytes) from before doing so. Opt-in by the code that knows it reads
    headers first; bring-your-own Clara operators never get truncated files. ``header_end``
    finds the end of a header in a prefix (``sdk.staging.HeaderEnd``; the imaging domain's
    ``dicom_walk.pixel_data_offset`` for DICOM).
    """

    def mark(fn: _Fn) -> _Fn:
        setattr(fn, HEADERS_FIRST_ATTR, HeadersFirst(frozenset(inputs), header_end))
        return fn

    return mark


def _all_whole(paths: Iterable[Path]) -> int:
    return 0


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
    #: make staged files whole: inputs staged header-first (:func:`headers_first`) hold each
    #: DICOM instance cut after its PixelData tag until listed here; whole files are left alone
    complete_files: Callable[[Iterable[Path]], int] = _all_whole
    #: the job's revision of its study (0: the first job; +1 per ``study.revised``): outputs
    #: derive their identifiers from it, so a revision never reuses a previous one's
    revision: int = 0


class StageVariables(BaseModel):
    """Base of every operator's settings: its Clara ``variables``, parsed once per stage.

    Field aliases are the variable names. An empty value counts as unset (the runtime hands a
    declared but absent variable over as ``""``), so the field's default applies.
    """

    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> Self:
        """Parse ``variables``; a bad value is a permanent error naming the variable and the
        rule."""
        try:
            return cls.model_validate({k: v for k, v in variables.items() if v != ""})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInput(f"pipeline variable {problems}", code="invalid_variables") from None
