"""Validating Knative manifests and ``skaffold.yaml`` without a cluster.

Three layers, because no PyPI validator understands Knative CRDs (knative-contracts.md §12):

1. **Schema**: the CRD's ``openAPIV3Schema`` (from ``../shared/schemas/knative``) with
   ``jsonschema`` draft 7: wrong types, missing required fields.
2. **Strict**: the same schema with every declared object closed, so a misspelled field
   (``containerConcurency``) is reported. Where the CRD keeps unknown fields
   (``x-kubernetes-preserve-unknown-fields``) but declares properties, unknown keys are still
   reported: the API server would store them and Knative would silently ignore them.
3. **Admission rules** the schemas do not encode but Knative's webhooks enforce: one dialect per
   Trigger filter entry, attribute names ``^[a-z][a-z0-9]*$``, ``backoffPolicy`` enum, ISO-8601
   durations, ``timeoutSeconds`` within ``max-revision-timeout-seconds``, one container port,
   reserved env names, and the PodSpec fields gated by ``config-features`` flags.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9]*$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ISO_DURATION = re.compile(
    r"^P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$"
)
DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")
#: Knative's default ``max-revision-timeout-seconds`` (config-defaults)
MAX_REVISION_TIMEOUT = 600
RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
#: PodSpec field -> the ``config-features`` flag that must be "enabled" for the webhook to accept it
FEATURE_FLAGS = {
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "tolerations": "kubernetes.podspec-tolerations",
    "affinity": "kubernetes.podspec-affinity",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "initContainers": "kubernetes.podspec-init-containers",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
    "securityContext": "kubernetes.podspec-securitycontext",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "hostNetwork": "kubernetes.podspec-hostnetwork",
    "hostIPC": "kubernetes.podspec-hostipc",
    "hostPID": "kubernetes.podspec-hostpid",
}
#: delivery fields behind feature flags that the CRD does not declare (kept by preserve-unknown)
DELIVERY_EXTRAS = {"timeout", "retryAfterMax", "format"}
CRD_FILES = {
    ("serving.knative.dev/v1", "Service"): "knative/serving.knative.dev_services.yaml",
    ("eventing.knative.dev/v1", "Broker"): "knative/eventing.knative.dev_brokers.yaml",
    ("eventing.knative.dev/v1", "Trigger"): "knative/eventing.knative.dev_triggers.yaml",
    ("sources.knative.dev/v1", "SinkBinding"): "knative/sources.knative.dev_sinkbindings.yaml",
    (
        "sources.knative.dev/v1",
        "ContainerSource",
    ): "knative/sources.knative.dev_containersources.yaml",
    ("sources.knative.dev/v1", "PingSource"): "knative/sources.knative.dev_pingsources.yaml",
    (
        "sources.knative.dev/v1",
        "ApiServerSource",
    ): "knative/sources.knative.dev_apiserversources.yaml",
}
SKAFFOLD_SCHEMA = "skaffold/v4beta14.json"


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def default_schemas_dir(repo_root: Path) -> Path:
    """``../shared/schemas`` next to the repository (how the project ships them)."""
    return (repo_root / ".." / "shared" / "schemas").resolve()


def _closed(schema: Any, *, path: tuple[str, ...] = ()) -> Any:
    """A copy of ``schema`` where every object with declared properties rejects unknown keys."""
    if isinstance(schema, list):
        return [_closed(s, path=path) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v, path=(*path, k)) for k, v in schema.items()}
    props = out.get("properties")
    if isinstance(props, dict) and props and "additionalProperties" not in out:
        out["additionalProperties"] = False
        if path and path[-1] == "delivery":
            for extra in DELIVERY_EXTRAS:
                props.setdefault(extra, {})
    return out


@dataclass
class Validator:
    """Validates manifests against the CRD schemas in ``schemas_dir`` plus Knative's admission
    rules."""

    schemas_dir: Path
    max_timeout_seconds: int = MAX_REVISION_TIMEOUT
    #: ``config-features`` flags the target cluster enables (see docs/deploy.md)
    enabled_features: frozenset[str] = field(
        default_factory=lambda: frozenset(
            {"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"}
        )
    )

    @cached_property
    def _schemas(self) -> dict[tuple[str, str], tuple[Any, Any]]:
        out = {}
        for key, rel in CRD_FILES.items():
            crd = yaml.safe_load((self.schemas_dir / rel).read_text(encoding="utf-8"))
            version = key[0].split("/")[1]
            schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"][
                "openAPIV3Schema"
            ]
            schema = copy.deepcopy(schema)
            schema.setdefault("properties", {})
            for top in ("apiVersion", "kind", "metadata"):
                schema["properties"].setdefault(top, {})
            out[key] = (schema, _closed(schema))
        return out

    def knows(self, obj: Mapping[str, Any]) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in CRD_FILES

    def validate(self, obj: Mapping[str, Any], where: str = "") -> list[Problem]:
        key = (str(obj.get("apiVersion")), str(obj.get("kind")))
        name = (obj.get("metadata") or {}).get("name", "?")
        where = f"{where}{'#' if where else ''}{key[1]}/{name}"
        problems: list[Problem] = []
        if key in CRD_FILES:
            schema, strict = self._schemas[key]
            problems += [
                Problem(where, f"schema: {_loc(e)}: {e.message}") for e in _errors(schema, obj)
            ]
            if not problems:
                problems += [
                    Problem(where, f"strict: {_loc(e)}: {e.message}") for e in _errors(strict, obj)
                ]
        problems += [
            Problem(where, m)
            for m in admission(obj, self.max_timeout_seconds, self.enabled_features)
        ]
        return problems

    def validate_files(self, paths: Iterable[Path]) -> list[Problem]:
        problems: list[Problem] = []
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if doc:
                    problems += self.validate(doc, str(path))
        return problems

    def validate_skaffold(
        self, config: Mapping[str, Any], where: str = "skaffold.yaml"
    ) -> list[Problem]:
        schema = json.loads((self.schemas_dir / SKAFFOLD_SCHEMA).read_text(encoding="utf-8"))
        validator = jsonschema.Draft7Validator(schema)
        problems = []
        for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
            deepest = _deepest(err)
            problems.append(Problem(where, f"{_loc(deepest)}: {deepest.message}"))
        if config.get("apiVersion") != "skaffold/v4beta14":
            problems.append(
                Problem(where, f"apiVersion: {config.get('apiVersion')!r} is not skaffold/v4beta14")
            )
        return problems


def _deepest(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """``anyOf``/``oneOf`` hide the useful message (the misspelled key) in their sub-errors."""
    if not err.context:
        return err
    return max(
        (_deepest(c) for c in err.context),
        key=lambda e: (len(e.absolute_path), e.validator == "additionalProperties"),
    )


def _errors(schema: Any, obj: Any) -> Iterator[jsonschema.ValidationError]:
    return iter(
        sorted(
            jsonschema.Draft7Validator(schema).iter_errors(obj),
            key=lambda e: list(map(str, e.absolute_path)),
        )
    )


def _loc(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<root>"


# ---------------------------------------------------------------------------- admission rules


def admission(
    obj: Mapping[str, Any],
    max_timeout: int = MAX_REVISION_TIMEOUT,
    features: frozenset[str] = frozenset(),
) -> list[str]:
    kind = obj.get("kind")
    api = str(obj.get("apiVersion", ""))
    out: list[str] = []
    name = str((obj.get("metadata") or {}).get("name", ""))
    if api.startswith(("serving.knative.dev", "eventing.knative.dev")) and not (
        DNS_1035.match(name) and len(name) <= 63
    ):
        out.append(f"metadata.name: {name!r} must be a DNS-1035 label of at most 63 characters")
    spec = obj.get("spec") or {}
    if kind == "Trigger" and api.startswith("eventing.knative.dev"):
        out += _trigger_rules(spec)
    if (
        kind in ("Trigger", "Broker")
        and api.startswith("eventing.knative.dev")
        and isinstance(spec.get("delivery"), dict)
    ):
        out += _delivery_rules(spec["delivery"], "spec.delivery")
    if kind == "Service" and api.startswith("serving.knative.dev"):
        out += _service_rules(obj, max_timeout, features)
    return out


def _trigger_rules(spec: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if not spec.get("broker") and not spec.get("brokerRef"):
        out.append("spec.broker: a Trigger needs a broker")
    if not spec.get("subscriber"):
        out.append("spec.subscriber: a Trigger needs a subscriber")
    legacy = (spec.get("filter") or {}).get("attributes") or {}
    for attr in legacy:
        if not ATTRIBUTE_NAME.match(str(attr)):
            out.append(
                f"spec.filter.attributes.{attr}: "
                f"attribute names must match {ATTRIBUTE_NAME.pattern}"
            )
    for i, entry in enumerate(spec.get("filters") or []):
        out += _filter_rules(entry, f"spec.filters[{i}]")
    return out


def _filter_rules(entry: Any, where: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: a filter entry is an object with one dialect"]
    dialects = [k for k in entry if k in DIALECTS]
    unknown = [k for k in entry if k not in DIALECTS]
    out = [f"{where}.{k}: unknown filter dialect (one of {', '.join(DIALECTS)})" for k in unknown]
    if len(dialects) != 1:
        out.append(
            f"{where}: exactly one dialect per filter entry, found {len(dialects)} "
            f"({', '.join(dialects) or 'none'})"
        )
    for d in dialects:
        value = entry[d]
        if d in ("exact", "prefix", "suffix"):
            if not isinstance(value, dict) or not value:
                out.append(f"{where}.{d}: needs at least one attribute")
                continue
            for attr, v in value.items():
                if not ATTRIBUTE_NAME.match(str(attr)):
                    out.append(
                        f"{where}.{d}.{attr}: attribute names must match {ATTRIBUTE_NAME.pattern}"
                    )
                if not isinstance(v, str) or v == "":
                    out.append(f"{where}.{d}.{attr}: the value must be a non-empty string")
        elif d in ("all", "any"):
            if not isinstance(value, list) or not value:
                out.append(f"{where}.{d}: needs a non-empty list of filters")
            else:
                for j, sub in enumerate(value):
                    out += _filter_rules(sub, f"{where}.{d}[{j}]")
        elif d == "not":
            out += _filter_rules(value, f"{where}.not")
        elif d == "cesql" and (not isinstance(value, str) or not value.strip()):
            out.append(f"{where}.cesql: needs an expression")
    return out


def _delivery_rules(delivery: Mapping[str, Any], where: str) -> list[str]:
    out = []
    policy = delivery.get("backoffPolicy")
    if policy is not None and policy not in ("linear", "exponential"):
        out.append(f"{where}.backoffPolicy: {policy!r} must be 'linear' or 'exponential'")
    for f in ("backoffDelay", "timeout", "retryAfterMax"):
        if f in delivery and not (isinstance(delivery[f], str) and ISO_DURATION.match(delivery[f])):
            out.append(f"{where}.{f}: {delivery[f]!r} is not an ISO-8601 duration such as PT2S")
    retry = delivery.get("retry")
    if retry is not None and (not isinstance(retry, int) or retry < 0):
        out.append(f"{where}.retry: must be an integer >= 0")
    if "format" in delivery and delivery["format"] not in ("json", "binary"):
        out.append(f"{where}.format: must be 'json' or 'binary'")
    dls = delivery.get("deadLetterSink")
    if dls is not None and not (isinstance(dls, dict) and (dls.get("ref") or dls.get("uri"))):
        out.append(f"{where}.deadLetterSink: needs a ref or a uri")
    return out


def _service_rules(obj: Mapping[str, Any], max_timeout: int, features: frozenset[str]) -> list[str]:
    out = []
    template = (obj.get("spec") or {}).get("template") or {}
    pod = template.get("spec") or {}
    where = "spec.template.spec"
    timeout = pod.get("timeoutSeconds")
    if timeout is not None and not (isinstance(timeout, int) and 0 < timeout <= max_timeout):
        out.append(
            f"{where}.timeoutSeconds: {timeout!r} must be within 1..{max_timeout} "
            "(max-revision-timeout-seconds)"
        )
    cc = pod.get("containerConcurrency")
    if cc is not None and not (isinstance(cc, int) and 0 <= cc <= 1000):
        out.append(f"{where}.containerConcurrency: {cc!r} must be within 0..1000")
    containers = pod.get("containers") or []
    if not containers:
        out.append(f"{where}.containers: at least one container")
    ports = [p for c in containers for p in (c.get("ports") or [])]
    if len(ports) > 1:
        out.append(
            f"{where}.containers: only one container port may be specified "
            "(Knative runtime contract)"
        )
    for p in ports:
        if p.get("name") not in (None, "http1", "h2c"):
            out.append(f"{where}.containers.ports.name: {p.get('name')!r} must be http1 or h2c")
    for i, c in enumerate(containers):
        for e in c.get("env") or []:
            if e.get("name") in RESERVED_ENV:
                out.append(f"{where}.containers[{i}].env.{e['name']}: reserved by Knative")
    for fld, flag in FEATURE_FLAGS.items():
        if fld in pod and flag not in features:
            out.append(f"{where}.{fld}: rejected unless config-features enables {flag}")
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    for a in (
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/max-scale",
        "autoscaling.knative.dev/target",
    ):
        if a in annotations and not str(annotations[a]).isdigit():
            out.append(
                f"spec.template.metadata.annotations.{a}: {annotations[a]!r} "
                "must be a non-negative integer string"
            )
    return out


def required_features(objects: Iterable[Mapping[str, Any]]) -> set[str]:
    """The ``config-features`` flags a set of manifests needs (docs/deploy.md lists them)."""
    flags = set()
    for obj in objects:
        if obj.get("kind") == "Service" and str(obj.get("apiVersion", "")).startswith(
            "serving.knative.dev"
        ):
            pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
            flags |= {flag for fld, flag in FEATURE_FLAGS.items() if fld in pod}
    return flags
