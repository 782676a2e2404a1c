"""Clara pipeline definitions (``api-version: 0.4.0``): models, loader and DAG validation.

Hospital teams already have Clara pipeline files; radflow reads them unchanged. A pipeline is a
DAG of operators; each operator is one container (Clara) or one radflow function (here). Data
flows by name: an input ``from`` an upstream operator reads that operator's output ``name``
(no ``name`` = the unnamed output, Clara's ``/output``); an input without ``from`` is the job's
payload (the study's instances). Everything here is pure: the loader reads one YAML file and
raises :class:`~radflow.sdk.errors.ConfigError` naming the file, the operator and the field.

Image to operator mapping: an image ``radflow/<kebab-name>`` is the radflow operator
``<snake_name>``; which operators exist is the caller's to say (``functions=``: the operator
registry's names, ``radflow.functions.registry``), this model knows none of them. Any other image
is a *bring-your-own* Clara operator: it must give ``container.command``, which the
``clara_operator`` operator runs with its inputs and outputs mapped to local folders (see
``docs/pipelines.md``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radflow.sdk.errors import ConfigError
from radflow.sdk.stage import DEFAULT

__all__ = [
    "API_VERSION",
    "BYO_FUNCTION",
    "Container",
    "Operator",
    "Pipeline",
    "StageInput",
    "StageOutput",
    "StageSpec",
    "stage_spec",
    "function_for_image",
    "load_pipeline",
    "parse_pipeline",
]

#: the Clara pipeline definition language version radflow reads
API_VERSION = "0.4.0"
#: the operator that runs bring-your-own Clara operators (``functions/clara_operator``)
BYO_FUNCTION = "clara_operator"
#: radflow's own images are ``radflow/<kebab-name>``
RADFLOW_IMAGE = re.compile(r"^radflow/(?P<name>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)$")
#: a DNS-1035 label: Knative Service and Trigger names are built from these
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: environment the runtime, functions-framework and Knative set themselves; operator-specific
#: ``RADFLOW_*`` settings (``RADFLOW_SEG_TYPE``) stay allowed
RESERVED_VARIABLES = frozenset(
    {
        "RADFLOW_PIPELINE",
        "RADFLOW_STAGE",
        "RADFLOW_STAGE_SPEC",
        "RADFLOW_OPERATOR",
        "RADFLOW_CLAIM_LEASE_SECONDS",
        "RADFLOW_WORK_DIR",
        "RADFLOW_CLARA_PATHS",
        "RADFLOW_DAGS",
        "RADFLOW_LOG_LEVEL",
        "RADFLOW_LOG_FORMAT",
        "PORT",
        "THREADS",
        "WORKERS",
        "HOST",
    }
)
RESERVED_PREFIXES = ("RADFLOW_S3_", "RADFLOW_INPUT_", "RADFLOW_OUTPUT_", "FUNCTION_", "K_")
#: Knative appends ``-00001``-style revision suffixes to a 63-character limit
MAX_SERVICE_NAME = 50


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Container(_Model):
    """Clara ``container``: which image runs, and (bring-your-own) its command line."""

    image: str = Field(min_length=1)
    tag: str = "latest"
    command: list[str] | None = None

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        # Clara accepts a single string too; split it like a shell would, without a shell
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value

    @field_validator("tag", mode="before")
    @classmethod
    def _tag_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value


class Requests(_Model):
    """Clara ``requests``: minimum resources (``memory`` in MB, as in Clara)."""

    cpu: float | None = Field(None, gt=0)
    gpu: int = Field(0, ge=0)
    memory: int | None = Field(None, gt=0, description="MB; Clara treats it as a limit")


class Connection(_Model):
    """One entry of a service's ``connections.http`` / ``connections.grpc``."""

    name: str = Field(min_length=1, description="environment variable the operator receives")
    port: int = Field(gt=0, lt=65536)
    path: str | None = None


class Connections(_Model):
    http: list[Connection] = Field(default_factory=list)
    grpc: list[Connection] = Field(default_factory=list)


class Scaling(_Model):
    """How a model server scales (radflow extension): Knative autoscaling annotations.

    ``min-scale: 0`` (the default) lets the GPU node pool scale to zero when no job needs the
    model; ``retention`` keeps the last instance that long after its last request.
    """

    min_scale: int = Field(0, ge=0, alias="min-scale")
    max_scale: int = Field(1, ge=1, alias="max-scale")
    retention: str = Field("60s", pattern=r"^\d+(ms|s|m|h)$")

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_scale > self.max_scale:
            raise ValueError(
                f"min-scale {self.min_scale} is greater than max-scale {self.max_scale}"
            )
        return self


class Service(_Model):
    """Clara ``services``: a long-lived helper (Triton) the operator reaches over the network."""

    name: str
    container: Container
    requests: Requests = Field(default_factory=Requests)
    connections: Connections = Field(default_factory=Connections)
    scaling: Scaling = Field(default_factory=Scaling)
    shm: int = Field(1024, gt=0, description="MB of /dev/shm (radflow extension)")


class Input(_Model):
    """Clara ``input``: no ``from`` = the job payload; ``from`` + ``name`` = an upstream output."""

    name: str | None = None
    from_: str | None = Field(None, alias="from")
    path: str = "/input"


class Output(_Model):
    """Clara ``output``: no ``name`` = the unnamed output (``/output``)."""

    name: str | None = None
    path: str = "/output"


class Operator(_Model):
    """One Clara operator = one radflow stage = one Knative Service."""

    name: str
    description: str = ""
    container: Container
    input: list[Input] = Field(default_factory=list)
    output: list[Output] = Field(default_factory=list)
    variables: dict[str, str] = Field(default_factory=dict)
    requests: Requests = Field(default_factory=Requests)
    services: list[Service] = Field(default_factory=list)
    timeout: int | None = Field(None, gt=0, le=600, description="seconds (radflow extension)")

    @field_validator("variables", mode="before")
    @classmethod
    def _variables_as_text(cls, value: Any) -> Any:
        # YAML turns `PORT: 104` into an int; environment variables are text
        if isinstance(value, Mapping):
            return {
                str(k): ("" if v is None else str(v) if not isinstance(v, bool) else str(v).lower())
                for k, v in value.items()
            }
        return value

    @property
    def function(self) -> str:
        """The radflow operator (registry name) that runs this one (``clara_operator`` for BYO)."""
        return function_for_image(self.container.image) or BYO_FUNCTION

    @property
    def is_byo(self) -> bool:
        return function_for_image(self.container.image) is None

    @property
    def gpu(self) -> int:
        return self.requests.gpu

    def connection_names(self) -> list[str]:
        """Environment variables that carry this operator's Clara service addresses."""
        return sorted(
            {
                c.name
                for svc in self.services
                for c in [*svc.connections.http, *svc.connections.grpc]
            }
        )

    def output_names(self) -> list[str]:
        return [o.name or DEFAULT for o in self.output]

    def stage_inputs(self) -> list[StageInput]:
        return [
            StageInput(
                name=i.name or DEFAULT,
                from_stage=i.from_,
                output=(i.name or DEFAULT) if i.from_ else None,
                path=i.path,
            )
            for i in self.input
        ]

    def stage_outputs(self) -> list[StageOutput]:
        return [StageOutput(name=o.name or DEFAULT, path=o.path) for o in self.output]

    def upstream(self) -> list[str]:
        """Operators this one waits for (sorted, unique): its fan-in set."""
        return sorted({i.from_ for i in self.input if i.from_})


class StageInput(_Model):
    """An input as the runtime sees it: local folder ``name`` filled from ``from_stage``'s
    ``output``."""

    name: str
    from_stage: str | None = None
    output: str | None = None
    path: str = "/input"


class StageOutput(_Model):
    name: str
    path: str = "/output"


class Pipeline(_Model):
    """A Clara pipeline definition. Its id is its ``name``."""

    api_version: str = Field(alias="api-version")
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    pull_secrets: list[str] = Field(default_factory=list, alias="pull-secrets")
    operators: list[Operator] = Field(min_length=1)

    @property
    def id(self) -> str:
        return self.name

    def operator(self, name: str) -> Operator:
        for op in self.operators:
            if op.name == name:
                return op
        raise KeyError(name)

    def stage_names(self) -> list[str]:
        """Operators in a deterministic topological order (ties broken by name)."""
        return topological_order({op.name: op.upstream() for op in self.operators})

    def roots(self) -> list[str]:
        return sorted(op.name for op in self.operators if not op.upstream())

    def downstream(self, name: str) -> list[str]:
        return sorted(op.name for op in self.operators if name in op.upstream())

    def leaves(self) -> list[str]:
        used = {u for op in self.operators for u in op.upstream()}
        return sorted(op.name for op in self.operators if op.name not in used)

    def dag(self) -> dict[str, list[str]]:
        """stage -> upstream stages: the whole DAG, the shape the job tracker carries in env."""
        return {op.name: op.upstream() for op in sorted(self.operators, key=lambda o: o.name)}


def topological_order(upstream: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm with sorted ties, so the order is stable across runs."""
    pending = {name: set(ups) for name, ups in upstream.items()}
    order: list[str] = []
    while pending:
        ready = sorted(n for n, ups in pending.items() if not ups)
        if not ready:
            raise ValueError("cycle")
        for n in ready:
            order.append(n)
            del pending[n]
        for ups in pending.values():
            ups.difference_update(ready)
    return order


def function_for_image(image: str) -> str | None:
    """``radflow/seg-writer`` -> ``seg_writer``; ``None`` for any other image (bring-your-own)."""
    m = RADFLOW_IMAGE.match(image)
    return m.group("name").replace("-", "_") if m else None


def load_pipeline(path: str | Path, *, functions: Collection[str]) -> Pipeline:
    """Read and validate one Clara pipeline file.

    Parameters
    ----------
    path:
        The YAML file (``pipelines/<name>.yaml``).
    functions:
        The radflow operators that exist (snake_case names), from the caller: the operator
        registry's ``names()`` for the shipped ones.

    Raises
    ------
    ConfigError
        The message starts with the file, names the operator and the field, and says the rule.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc.strerror}") from None
    return parse_pipeline(text, source=str(path), functions=functions)


def parse_pipeline(
    text: str, *, source: str = "<pipeline>", functions: Collection[str]
) -> Pipeline:
    """Validate pipeline YAML ``text``; ``source`` names it in error messages."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(
            f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: a pipeline definition is a YAML mapping "
            "with api-version, name and operators"
        )
    version = raw.get("api-version")
    if str(version) != API_VERSION:
        raise ConfigError(
            f"{source}: api-version: {version!r} is not supported; radflow reads Clara pipeline "
            f"api-version {API_VERSION}"
        )
    try:
        pipeline = Pipeline.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(source, raw, exc)) from None
    _check(pipeline, source, set(functions))
    return pipeline


def _describe(source: str, raw: dict[str, Any], exc: ValidationError) -> str:
    """One line per problem: ``operator 'x': field.path: message``."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        prefix = ""
        if len(loc) >= 2 and loc[0] == "operators" and isinstance(loc[1], int):
            ops = raw.get("operators") or []
            name = (
                ops[loc[1]].get("name")
                if loc[1] < len(ops) and isinstance(ops[loc[1]], dict)
                else None
            )
            prefix = f"operator {name!r}: " if name else f"operators[{loc[1]}]: "
            loc = loc[2:]
        field = _field_path(loc) or "<pipeline>"
        msg = (
            "unknown field (not part of Clara api-version 0.4.0)"
            if err["type"] == "extra_forbidden"
            else err["msg"]
        )
        lines.append(f"{prefix}{field}: {msg}")
    return f"{source}: " + "; ".join(lines)


def _field_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = "from" if part == "from_" else str(part)
            out += f".{name}" if out else name
    return out


def _check(p: Pipeline, source: str, functions: set[str]) -> None:
    """DAG rules the schema cannot express. Raises on the first problem, naming it exactly."""

    def fail(msg: str) -> None:
        raise ConfigError(f"{source}: {msg}")

    if not NAME.match(p.name):
        fail(
            f"name: {p.name!r} must be lower-case letters, digits and '-' (a DNS label), "
            "starting with a letter"
        )
    seen: dict[str, int] = {}
    for idx, op in enumerate(p.operators):
        if op.name in seen:
            fail(
                f"operator {op.name!r}: name: duplicate operator name "
                f"(operators[{seen[op.name]}] and operators[{idx}])"
            )
        seen[op.name] = idx
        if not NAME.match(op.name):
            fail(
                f"operator {op.name!r}: name: must be lower-case letters, digits and '-' "
                "(a DNS label), starting with a letter"
            )
        if len(p.name) + 1 + len(op.name) > MAX_SERVICE_NAME:
            fail(
                f"operator {op.name!r}: name: the Knative Service name {p.name}-{op.name!r} "
                "is longer "
                f"than {MAX_SERVICE_NAME} characters; shorten the pipeline or operator name"
            )
    for op in p.operators:
        _check_operator(op, p, functions, fail)
    try:
        topological_order(p.dag())
    except ValueError:
        fail(f"operators form a cycle: {' -> '.join(_find_cycle(p))}; a pipeline must be a DAG")


def _check_operator(op: Operator, p: Pipeline, functions: set[str], fail: Any) -> None:
    who = f"operator {op.name!r}"
    fn = function_for_image(op.container.image)
    if fn is not None and fn not in functions:
        fail(
            f"{who}: container.image: no radflow operator implements {op.container.image!r} "
            f"(no {fn!r} in the operator registry); use an existing radflow image or a "
            f"non-radflow image with container.command to run it as a Clara operator"
        )
    if fn is None and not op.container.command:
        fail(
            f"{who}: container.command: {op.container.image!r} is not a radflow function, "
            "so it runs as a "
            f"bring-your-own Clara operator and needs container.command"
        )
    outs = op.output_names()
    for i, name in enumerate(outs):
        if name in outs[:i]:
            fail(f"{who}: output[{i}].name: duplicate output name {name!r}")
    ins = [s.name for s in op.stage_inputs()]
    for i, name in enumerate(ins):
        if name in ins[:i]:
            fail(
                f"{who}: input[{i}].name: duplicate input name {name!r} "
                "(each input needs its own folder name)"
            )
    paths = [i.path for i in op.input] + [o.path for o in op.output]
    for i, path in enumerate(paths):
        if not path.startswith("/"):
            fail(f"{who}: path {path!r}: Clara paths are absolute (e.g. /input)")
        if path in paths[:i]:
            fail(f"{who}: path {path!r} is used by two inputs/outputs")
    for i, inp in enumerate(op.input):
        if inp.from_ is None:
            continue
        if inp.from_ == op.name:
            fail(f"{who}: input[{i}].from: an operator cannot read its own output")
        try:
            upstream = p.operator(inp.from_)
        except KeyError:
            fail(
                f"{who}: input[{i}].from: unknown operator {inp.from_!r} "
                f"(operators: {', '.join(sorted(o.name for o in p.operators))})"
            )
            raise  # unreachable: fail raises
        wanted = inp.name or DEFAULT
        if wanted not in upstream.output_names():
            have = ", ".join(sorted(upstream.output_names())) or "none"
            fail(
                f"{who}: input[{i}].name: operator {inp.from_!r} has no output named {wanted!r} "
                f"(outputs: {have})"
            )
    for i, svc in enumerate(op.services):
        if not NAME.match(svc.name):
            fail(f"{who}: services[{i}].name: {svc.name!r} must be a DNS label")
        if not (svc.connections.http or svc.connections.grpc):
            fail(
                f"{who}: services[{i}].connections: "
                "a service needs at least one http or grpc connection"
            )
    for name in op.variables:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            fail(f"{who}: variables.{name}: not a valid environment variable name")
        if name in RESERVED_VARIABLES or name.startswith(RESERVED_PREFIXES):
            fail(f"{who}: variables.{name}: reserved for the radflow runtime")


def _find_cycle(p: Pipeline) -> list[str]:
    """One cycle, starting from its smallest member, for the error message."""
    graph = {op.name: op.upstream() for op in p.operators}
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = 1
        stack.append(n)
        for m in graph.get(n, []):
            if color.get(m) == 1:
                cyc = stack[stack.index(m) :]
                k = cyc.index(min(cyc))
                cyc = cyc[k:] + cyc[:k]
                # edges point upstream; print them in data-flow order
                cyc = list(reversed(cyc))
                k = cyc.index(min(cyc))
                cyc = cyc[k:] + cyc[:k]
                return [*cyc, cyc[0]]
            if color.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(graph):
        if color.get(n) is None:
            found = visit(n)
            if found:
                return found
    return []


class StageSpec(_Model):
    """What one stage's runtime needs (env ``RADFLOW_STAGE_SPEC``), and nothing about the others.

    The compiler writes it into the stage's Knative Service; the runtime reads it once per
    process. It holds only this stage's inputs, outputs, upstream stages (its fan-in) and
    variable names, so editing another stage leaves this Service's revision alone; the one
    exception is ``joins``, the fan-in stages this one feeds and their upstream stages
    (editing a fan-in's inputs rolls its last upstreams' revisions too). The whole DAG is the
    job tracker's (``RADFLOW_DAGS`` in its own Service).
    """

    pipeline: str
    stage: str
    inputs: list[StageInput]
    outputs: list[StageOutput]
    #: the stages this one waits for (fan-in): every one must have completed
    upstream: list[str] = Field(default_factory=list)
    #: names of the operator's Clara ``variables`` (their values are plain env vars)
    variables: list[str] = Field(default_factory=list)
    #: bring-your-own operators: the command line to run
    command: list[str] | None = None
    timeout_seconds: int = 300
    #: fan-in stages downstream of this one -> their upstream stages: when this stage completes
    #: and every one of them has, its completion carries that stage's join attribute
    #: (:func:`radflow.sdk.events.join_attribute`), which the fan-in stage's Triggers filter on
    joins: dict[str, list[str]] | None = None

    def to_env(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def stage_spec(pipeline: Pipeline, op: Operator, *, timeout_seconds: int) -> StageSpec:
    return StageSpec(
        pipeline=pipeline.name,
        stage=op.name,
        inputs=op.stage_inputs(),
        outputs=op.stage_outputs(),
        upstream=op.upstream(),
        # Clara handed service addresses to operators like variables (NVIDIA_TRITON_HTTPURI)
        variables=sorted({*op.variables, *op.connection_names()}),
        command=op.container.command if op.is_byo else None,
        timeout_seconds=timeout_seconds,
        joins=fan_in_joins(pipeline, op.name) or None,
    )


def last_upstreams(dag: Mapping[str, Sequence[str]], stage: str) -> list[str]:
    """The upstream stages of ``stage`` that can be the last to complete: those that are not an
    ancestor of another of its upstream stages (sorted). Only their completions wake ``stage``:
    ``dicom-parser`` -> ``triton-infer`` -> ``seg-writer`` <- ``dicom-parser`` needs only
    ``triton-infer``'s."""
    ups = list(dag.get(stage, ()))

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(dag.get(name, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(dag.get(n, ()))
        return seen

    hidden = set().union(*(ancestors(u) for u in ups)) if ups else set()
    return sorted(u for u in ups if u not in hidden)


def fan_in_joins(pipeline: Pipeline, stage: str) -> dict[str, list[str]]:
    """The fan-in stages (two or more :func:`last_upstreams`) that ``stage`` is one of the last
    upstreams of, each with all its upstream stages."""
    dag = pipeline.dag()
    return {
        name: ups
        for name, ups in dag.items()
        if stage in (last := last_upstreams(dag, name)) and len(last) > 1
    }
