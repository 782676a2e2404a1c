"""The operators radflow ships: one entry each, the one place that says how an operator is served.

An entry names the operator's code and how it is built and sized; everything else is generated
from it (``radflow pipeline compile``, and ``--check`` fails when a committed file drifts):

- the container that serves it: every image runs the ONE entry point
  :data:`ENTRY_SOURCE` (``functions/entry.py``), which reads ``RADFLOW_OPERATOR`` and serves this
  entry's ``logic`` through the stage runtime (or its own ``handler``);
- its image ``radflow/<kebab-name>`` and its skaffold artifact (``skaffold.yaml``, between the
  generated markers) with the pip ``extras`` the image installs;
- in every compiled Knative Service of a pipeline that uses it: the image, ``RADFLOW_OPERATOR``,
  ``FUNCTION_SOURCE``, default resources and GPU (a pipeline's Clara ``requests`` win),
  ``timeoutSeconds``, ``containerConcurrency`` and ``THREADS``.

A pipeline's ``container.image: radflow/<kebab-name>`` picks the entry; any other image is a
bring-your-own Clara operator, run by the ``clara_operator`` entry. Entries name code as text
(``module:function``), so reading the registry imports no operator and no imaging library: the
compiler and the CLI read it for free, and only the entry point imports the one it serves.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ENTRY_SOURCE",
    "ENTRY_TARGET",
    "OPERATORS",
    "OPERATOR_ENV",
    "OperatorEntry",
    "Resources",
    "by_name",
    "get",
    "names",
]

#: the one functions-framework source every operator's image serves (relative to the image's
#: WORKDIR and to the engine's workdir, both a copy of the repository)
ENTRY_SOURCE = "src/radflow/functions/entry.py"
#: the ``@functions_framework.http`` function in it
ENTRY_TARGET = "handle"
#: the environment variable that tells the entry point which operator it serves
OPERATOR_ENV = "RADFLOW_OPERATOR"

_SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_TARGET = re.compile(r"^radflow\.functions\.(?P<op>[a-z0-9_]+)(?:\.[a-z0-9_]+)+:[A-Za-z_]\w*$")
#: Kubernetes quantities as radflow writes them (``500m``, ``2``; ``2048Mi``, ``4Gi``)
_CPU = r"^\d+(?:\.\d+)?m?$"
_MEMORY = r"^\d+(?:Ki|Mi|Gi|Ti)?$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Model):
    """Default requests and limits of the operator's container (Kubernetes quantities).

    A pipeline's Clara ``requests`` override them per stage: ``cpu`` sets the CPU request,
    ``memory`` (MB) the memory request and limit (Clara treats memory as a limit).
    """

    cpu_request: str | None = Field(None, pattern=_CPU)
    cpu_limit: str | None = Field(None, pattern=_CPU)
    memory_request: str | None = Field(None, pattern=_MEMORY)
    memory_limit: str | None = Field(None, pattern=_MEMORY)


class OperatorEntry(_Model):
    """One operator: its code, its image's extras, and how its Services are sized."""

    #: snake_case; the code lives in ``src/radflow/functions/<name>/``
    name: str = Field(pattern=_SNAKE.pattern)
    #: ``radflow.functions.<name>.<module>:<function>``: ``run(ctx: StageContext) -> summary``,
    #: served by the stage runtime (``radflow.sdk.runtime.serve``)
    logic: str | None = Field(None, pattern=_TARGET.pattern)
    #: instead of ``logic``, for an operator that is a service of its own (the job tracker):
    #: ``handle(method, path, headers, body) -> (body, status, headers)``
    handler: str | None = Field(None, pattern=_TARGET.pattern)
    #: ``radflow[...]`` extras its image installs (pyproject's optional dependencies)
    extras: tuple[str, ...] = ()
    resources: Resources = Resources()
    #: GPUs each instance requests when the pipeline asks for none
    gpu: int = Field(0, ge=0)
    #: Knative ``timeoutSeconds``; unset: 600 for operators that call a model (Clara
    #: ``services`` or a GPU), else 300. A pipeline's ``timeout`` wins.
    timeout_seconds: int | None = Field(None, gt=0, le=600)
    #: requests one instance serves at once (Knative ``containerConcurrency``)
    container_concurrency: int = Field(1, ge=1)
    #: functions-framework threads per instance
    threads: int = Field(1, ge=1)
    #: Knative ``max-scale`` of its Services (GPU stages get 1)
    max_scale: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _one_entry(self) -> OperatorEntry:
        targets = [t for t in (self.logic, self.handler) if t]
        if len(targets) != 1:
            raise ValueError(f"operator {self.name!r}: give exactly one of logic or handler")
        match = _TARGET.match(targets[0])
        if match is None or match.group("op") != self.name:
            raise ValueError(
                f"operator {self.name!r}: {targets[0]!r} must live in radflow.functions.{self.name}"
            )
        return self

    @property
    def kebab(self) -> str:
        return self.name.replace("_", "-")

    @property
    def image(self) -> str:
        return f"radflow/{self.kebab}"

    @property
    def target(self) -> str:
        """``module:function`` the entry point serves."""
        return self.logic or self.handler or ""

    def load(self) -> Callable[..., Any]:
        """Import :attr:`target` (only the entry point does, for the one operator it serves)."""
        module, _, attr = self.target.partition(":")
        fn = getattr(importlib.import_module(module), attr, None)
        if not callable(fn):
            raise LookupError(f"operator {self.name!r}: {self.target!r} is not a function")
        return fn


OPERATORS: tuple[OperatorEntry, ...] = (
    OperatorEntry(
        name="dicom_parser",
        logic="radflow.functions.dicom_parser.logic:run",
        extras=("imaging",),
    ),
    OperatorEntry(
        name="triton_infer",
        logic="radflow.functions.triton_infer.logic:run",
        extras=("imaging", "inference"),
    ),
    OperatorEntry(
        name="seg_writer",
        logic="radflow.functions.seg_writer.logic:run",
        extras=("imaging",),
    ),
    OperatorEntry(
        name="rtstruct_writer",
        logic="radflow.functions.rtstruct_writer.logic:run",
        extras=("imaging",),
    ),
    OperatorEntry(
        name="scu_export",
        # logic stays pure of S3: deps.run reads the adapter's destinations and calls logic.run
        logic="radflow.functions.scu_export.deps:run",
    ),
    OperatorEntry(
        name="clara_operator",
        logic="radflow.functions.clara_operator.logic:run",
    ),
    OperatorEntry(
        name="job_tracker",
        handler="radflow.functions.job_tracker.service:handle",
        timeout_seconds=60,
        container_concurrency=16,
        threads=8,
        max_scale=2,
    ),
)


def by_name(operators: tuple[OperatorEntry, ...] | None = None) -> dict[str, OperatorEntry]:
    """name -> entry (default: :data:`OPERATORS`); a name given twice is a mistake."""
    out: dict[str, OperatorEntry] = {}
    for entry in OPERATORS if operators is None else operators:
        if entry.name in out:
            raise ValueError(f"operator {entry.name!r} is registered twice")
        out[entry.name] = entry
    return out


def names() -> frozenset[str]:
    """The operators a pipeline may name (``radflow/<kebab-name>`` images)."""
    return frozenset(by_name())


def get(name: str) -> OperatorEntry:
    """The entry called ``name``; ``LookupError`` naming the known ones otherwise."""
    try:
        return by_name()[name]
    except KeyError:
        known = ", ".join(sorted(names()))
        raise LookupError(f"no operator {name!r} in the registry (known: {known})") from None
