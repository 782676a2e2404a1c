"""Pure mapping from Kubernetes/Knative manifests to local process specs.

A Knative Service's container becomes one local process per instance: this module decides the
argv, the environment and the serving parameters (concurrency, timeouts, scale bounds) from the
parsed manifest, and rejects what cannot be emulated with a :class:`ConfigError` that names the
service and the field. Nothing here touches processes, sockets or the clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radflow.sdk.errors import ConfigError

AUTOSCALING = "autoscaling.knative.dev/"
#: Knative's ``max-revision-timeout-seconds`` default (config-defaults); ``timeoutSeconds`` may not
#: exceed it.
MAX_TIMEOUT_S = 600
DEFAULT_TIMEOUT_S = 300
#: KPA ``stable-window`` default: the last instance goes after a full window without traffic.
DEFAULT_WINDOW_S = 60.0
#: KPA ``container-concurrency-target-default``: used as the per-process limit when
#: containerConcurrency is 0.
DEFAULT_TARGET = 100
#: Knative's own upper bound for containerConcurrency (config-defaults
#: ``container-concurrency-max-limit``).
MAX_CONTAINER_CONCURRENCY = 1000
#: Env names Knative reserves for itself (serving ``k8s_validation.go`` ``reservedEnvVars``).
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
#: Executables that name the interpreter itself.
PYTHON_NAMES = re.compile(r"^python(\d+(\.\d+)?)?$")
FUNCTION_ENV = ("FUNCTION_TARGET", "FUNCTION_SOURCE", "FUNCTION_SIGNATURE_TYPE")


@dataclass(frozen=True)
class ServiceSpec:
    """What the host needs to know about one Knative Service (its single Revision)."""

    name: str
    namespace: str
    container: dict[str, Any]
    env: dict[str, str]
    container_concurrency: int
    timeout_s: float
    min_scale: int
    max_scale: int  # 0 = unlimited in Knative; the host applies its local default
    initial_scale: int | None  # only when annotated explicitly
    window_s: float
    retention_s: float
    scale_down_delay_s: float
    target: int
    readiness_path: str | None
    progress_deadline_s: float = 600.0
    #: ``radflow.dev/embedded`` on the Service: a launcher registered for that kind
    #: (:func:`radflow.engine.host.activator.register_service_launcher`) says what runs locally
    embedded: str | None = None
    #: the Service's ``metadata.labels`` (what a SinkBinding's subject selector matches)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def revision(self) -> str:
        return f"{self.name}-00001"

    @property
    def slot_limit(self) -> int:
        """In-flight requests one process may hold (containerConcurrency, else the soft target)."""
        return self.container_concurrency or self.target


@dataclass(frozen=True)
class DeploymentSpec:
    """An apps/v1 Deployment reduced to what one local process needs."""

    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    container: dict[str, Any]
    env: dict[str, str]
    replicas: int
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def embedded_kind(self) -> str | None:
        return self.annotations.get("radflow.dev/embedded")


def _meta(manifest: Mapping[str, Any]) -> tuple[str, str]:
    meta = manifest.get("metadata") or {}
    name = meta.get("name")
    if not name or not isinstance(name, str):
        raise ConfigError(f"{manifest.get('kind', 'manifest')}: metadata.name is required")
    return name, str(meta.get("namespace") or "default")


def _duration_s(value: Any, where: str) -> float:
    """Knative durations: ``60s``, ``1m30s``, ``500ms``, ``1h`` (Go time.ParseDuration subset)."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{where}: {text!r} is not a duration such as '60s', '1m30s' or '500ms'")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _int(value: Any, where: str, low: int = 0, high: int | None = None) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an integer") from None
    if number < low or (high is not None and number > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{where}: {number} is out of range ({bound})")
    return number


def _serving_container(containers: Sequence[Mapping[str, Any]], where: str) -> dict[str, Any]:
    if not containers:
        raise ConfigError(f"{where}: spec.template.spec.containers is empty")
    if len(containers) == 1:
        return dict(containers[0])
    with_ports = [c for c in containers if c.get("ports")]
    raise ConfigError(
        f"{where}: {len(containers)} containers ({len(with_ports)} with ports); "
        "the local host runs one "
        "process per instance, so sidecars are not supported: move them to their own Deployment"
    )


def container_env(container: Mapping[str, Any], where: str) -> dict[str, str]:
    """The container's ``env`` as a dict; ``valueFrom`` (Secrets, ConfigMaps, fieldRef) cannot be
    resolved locally."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            raise ConfigError(f"{where}: an env entry has no name")
        if "valueFrom" in item:
            raise ConfigError(
                f"{where}: env {name} uses valueFrom, which the local host cannot resolve; "
                "give it a literal value (or pass it through the engine's base environment)"
            )
        env[name] = "" if item.get("value") is None else str(item["value"])
    if container.get("envFrom"):
        raise ConfigError(
            f"{where}: envFrom is not supported locally; list the variables under env"
        )
    return env


def parse_service(manifest: Mapping[str, Any]) -> ServiceSpec:
    """Validate a ``serving.knative.dev/v1`` Service the way the Knative webhook would, for what we
    emulate."""
    if manifest.get("kind") != "Service" or not str(manifest.get("apiVersion", "")).startswith(
        "serving.knative.dev/"
    ):
        raise ConfigError(
            f"{manifest.get('apiVersion')}/{manifest.get('kind')}: "
            "expected apiVersion serving.knative.dev/v1, kind Service"
        )
    name, namespace = _meta(manifest)
    where = f"Service {namespace}/{name}"
    template = (manifest.get("spec") or {}).get("template") or {}
    annotations = {
        str(k): str(v)
        for k, v in ((template.get("metadata") or {}).get("annotations") or {}).items()
    }
    pod = template.get("spec") or {}
    container = _serving_container(pod.get("containers") or [], where)
    env = container_env(container, where)
    reserved = sorted(RESERVED_ENV & env.keys())
    if reserved:
        raise ConfigError(
            f"{where}: env {', '.join(reserved)} is reserved by Knative and set by the host"
        )

    timeout = pod.get("timeoutSeconds", DEFAULT_TIMEOUT_S)
    timeout_s = _int(timeout, f"{where}: spec.template.spec.timeoutSeconds", 1, MAX_TIMEOUT_S)
    cc = _int(
        pod.get("containerConcurrency", 0),
        f"{where}: containerConcurrency",
        0,
        MAX_CONTAINER_CONCURRENCY,
    )

    def ann(key: str) -> str | None:
        return annotations.get(AUTOSCALING + key)

    min_scale = _int(ann("min-scale") or 0, f"{where}: {AUTOSCALING}min-scale")
    max_scale = _int(ann("max-scale") or 0, f"{where}: {AUTOSCALING}max-scale")
    if max_scale and min_scale > max_scale:
        raise ConfigError(f"{where}: min-scale {min_scale} is greater than max-scale {max_scale}")
    initial = ann("initial-scale")
    initial_scale = (
        _int(initial, f"{where}: {AUTOSCALING}initial-scale") if initial is not None else None
    )
    window_s = _duration_s(ann("window") or DEFAULT_WINDOW_S, f"{where}: {AUTOSCALING}window")
    if not 6 <= window_s <= 3600:
        raise ConfigError(
            f"{where}: {AUTOSCALING}window must be between 6s and 1h (Knative's bounds), "
            f"got {window_s}s"
        )
    retention_s = _duration_s(
        ann("scale-to-zero-pod-retention-period") or 0, f"{where}: retention period"
    )
    delay_s = _duration_s(ann("scale-down-delay") or 0, f"{where}: {AUTOSCALING}scale-down-delay")
    target = _int(ann("target") or DEFAULT_TARGET, f"{where}: {AUTOSCALING}target", 1)
    deadline_s = _duration_s(
        annotations.get("serving.knative.dev/progress-deadline") or 600,
        f"{where}: progress-deadline",
    )
    if any(str(p.get("name", "")).startswith("h2c") for p in container.get("ports") or []):
        raise ConfigError(
            f"{where}: port name h2c (gRPC): the local activator proxies HTTP/1.1 only, so a "
            "gRPC Knative Service cannot run in the engine; serve HTTP (port name http1)"
        )
    # a declared startup (else readiness) probe: ready = it answers 2xx/3xx, as the kubelet says
    probe = None
    for kind in ("startupProbe", "readinessProbe"):
        probe = probe or ((container.get(kind) or {}).get("httpGet") or {}).get("path")
    embedded = ((manifest.get("metadata") or {}).get("annotations") or {}).get(
        "radflow.dev/embedded"
    )
    return ServiceSpec(
        name=name,
        namespace=namespace,
        container=container,
        env=env,
        container_concurrency=cc,
        timeout_s=float(timeout_s),
        min_scale=min_scale,
        max_scale=max_scale,
        initial_scale=initial_scale,
        window_s=window_s,
        retention_s=retention_s,
        scale_down_delay_s=delay_s,
        target=target,
        readiness_path=probe,
        progress_deadline_s=deadline_s,
        embedded=str(embedded) if embedded else None,
        labels={
            str(k): str(v)
            for k, v in ((manifest.get("metadata") or {}).get("labels") or {}).items()
        },
    )


def parse_deployment(manifest: Mapping[str, Any]) -> DeploymentSpec:
    """An ``apps/v1`` Deployment: its one container, labels, annotations and replica count."""
    if manifest.get("kind") != "Deployment":
        raise ConfigError(f"{manifest.get('kind')}: expected kind Deployment")
    name, namespace = _meta(manifest)
    where = f"Deployment {namespace}/{name}"
    meta = manifest.get("metadata") or {}
    spec = manifest.get("spec") or {}
    template = spec.get("template") or {}
    annotations = {
        **{
            str(k): str(v)
            for k, v in ((template.get("metadata") or {}).get("annotations") or {}).items()
        },
        **{str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
    }
    container = _serving_container((template.get("spec") or {}).get("containers") or [], where)
    return DeploymentSpec(
        name=name,
        namespace=namespace,
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        annotations=annotations,
        container=container,
        env=container_env(container, where),
        replicas=_int(spec.get("replicas", 1), f"{where}: spec.replicas"),
        raw=dict(manifest),
    )


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion in command/args: unknown references stay as written, ``$$``
    escapes."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(sub, text)


def resolve_executable(first: str, python: str) -> list[str]:
    """Map the container's first command word onto this machine.

    A bare name found in the interpreter's bin folder (``python``, ``functions-framework``,
    ``radflow``) resolves to that virtualenv's copy. Console scripts are run through the
    interpreter, because a copied virtualenv keeps stale ``#!`` lines.
    """
    if "/" in first:
        return [first]
    if PYTHON_NAMES.match(first):
        return [python]
    candidate = Path(python).parent / first
    if candidate.is_file():
        try:
            with open(candidate, "rb") as fh:
                head = fh.readline(256)
        except OSError:
            head = b""
        if head.startswith(b"#!") and b"python" in head:
            return [python, str(candidate)]
        return [str(candidate)]
    return [first]


def container_argv(
    container: Mapping[str, Any], env: Mapping[str, str], python: str, host: str, where: str
) -> list[str]:
    """The local command line for a container (see docs/host.md, "From container to process")."""
    command = [str(c) for c in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    if command:
        command = [expand(c, env) for c in command]
        return resolve_executable(command[0], python) + command[1:] + args
    if any(key in env for key in FUNCTION_ENV):
        if "FUNCTION_TARGET" not in env:
            raise ConfigError(
                f"{where}: FUNCTION_SOURCE/FUNCTION_SIGNATURE_TYPE set "
                "but FUNCTION_TARGET is missing"
            )
        argv = [python, "-m", "functions_framework", "--target", env["FUNCTION_TARGET"]]
        if env.get("FUNCTION_SOURCE"):
            argv += ["--source", env["FUNCTION_SOURCE"]]
        argv += ["--signature-type", env.get("FUNCTION_SIGNATURE_TYPE") or "http"]
        argv += ["--host", host, "--port", env["PORT"]] if "PORT" in env else ["--host", host]
        return argv + args
    raise ConfigError(
        f"{where}: container {container.get('name') or container.get('image')!r} "
        "has no command and no "
        "FUNCTION_TARGET env, so the local host cannot tell what the image runs; add command/args"
    )


def knative_env(spec: ServiceSpec, port: int) -> dict[str, str]:
    """The env Knative itself sets in a revision's user container."""
    return {
        "PORT": str(port),
        "K_SERVICE": spec.name,
        "K_REVISION": spec.revision,
        "K_CONFIGURATION": spec.name,
    }


# --- SinkBinding ----------------------------------------------------------------------------------


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != str(value):
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = (
            expr.get("key"),
            expr.get("operator"),
            [str(v) for v in expr.get("values") or []],
        )
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in {"In", "NotIn", "Exists", "DoesNotExist"}:
            raise ConfigError(
                f"label selector: operator {op!r} is not In, NotIn, Exists or DoesNotExist"
            )
    return True


#: the subject kinds a SinkBinding binds here: (apiVersion group prefix, kind) per spec type;
#: Knative binds any PodSpecable, and a Knative Service is one (its Revisions get ``K_SINK``)
_SUBJECT_KINDS: dict[type, tuple[str, str]] = {
    DeploymentSpec: ("apps/", "Deployment"),
    ServiceSpec: ("serving.knative.dev/", "Service"),
}


def binding_matches(binding: Mapping[str, Any], workload: DeploymentSpec | ServiceSpec) -> bool:
    """Whether a SinkBinding's ``subject`` (by name or label selector) is this Deployment or
    Knative Service."""
    b_name, b_namespace = _meta(binding)
    subject = (binding.get("spec") or {}).get("subject") or {}
    group, kind = _SUBJECT_KINDS[type(workload)]
    if subject.get("kind") != kind or not str(subject.get("apiVersion", "")).startswith(group):
        return False
    if str(subject.get("namespace") or b_namespace) != workload.namespace:
        return False
    if subject.get("name"):
        return bool(subject["name"] == workload.name)
    if subject.get("selector") is not None:
        return _selector_matches(subject["selector"], workload.labels)
    raise ConfigError(
        f"SinkBinding {b_namespace}/{b_name}: spec.subject needs a name or a selector"
    )


def binding_for(
    bindings: Sequence[Mapping[str, Any]], workload: DeploymentSpec | ServiceSpec
) -> Mapping[str, Any] | None:
    """The one SinkBinding whose subject is ``workload`` (None if none; several: ConfigError)."""
    matches = [b for b in bindings if binding_matches(b, workload)]
    if len(matches) > 1:
        names = ", ".join(str((b.get("metadata") or {}).get("name")) for b in matches)
        kind = _SUBJECT_KINDS[type(workload)][1]
        raise ConfigError(
            f"{kind} {workload.namespace}/{workload.name} is the subject of several SinkBindings "
            f"({names}); keep one"
        )
    return matches[0] if matches else None


def sink_env(
    binding: Mapping[str, Any], sink_url: Callable[[dict[str, Any]], str]
) -> dict[str, str]:
    """``K_SINK`` and ``K_CE_OVERRIDES`` as Knative injects them into a binding's subject;
    ``sink_url`` resolves the binding's ``spec.sink`` (a Knative Destination)."""
    sink = (binding.get("spec") or {}).get("sink")
    if not sink:
        raise ConfigError(
            f"SinkBinding {(binding.get('metadata') or {}).get('name')}: spec.sink is required"
        )
    return {"K_SINK": sink_url(dict(sink)), "K_CE_OVERRIDES": ce_overrides_json(binding)}


def ce_overrides_json(binding: Mapping[str, Any]) -> str:
    """``K_CE_OVERRIDES`` exactly as Knative writes it: Go ``json.Marshal`` of ``spec.ceOverrides``
    or ``""``."""
    overrides = (binding.get("spec") or {}).get("ceOverrides")
    if overrides is None:
        return ""
    extensions = {str(k): str(v) for k, v in (overrides.get("extensions") or {}).items()}
    doc = {"extensions": extensions} if extensions else {}
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    # Go escapes these three for safe embedding in HTML
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
