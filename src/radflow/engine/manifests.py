"""Reads the ``knative/`` folder: every YAML document, sorted by kind.

The embedded engine runs exactly these files; there is no second routing or deployment
configuration. Documents of kinds the engine does not act on (ConfigMaps, PVCs, k8s Services)
are kept so that cluster DNS names and mounted configuration can be mapped to local ones;
NetworkPolicies and ServiceAccounts are cluster-only (no local effect). Pod fields that only
harden a pod on a cluster (``securityContext``, ``serviceAccountName``, emptyDir volumes,
``resources``) are read and left alone: a local function process runs as the engine's user
and stages under the engine's temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from radflow.sdk.errors import ConfigError

#: (apiVersion prefix, kind) -> attribute of :class:`ManifestSet`
_KINDS = {
    ("eventing.knative.dev/", "Broker"): "brokers",
    ("eventing.knative.dev/", "Trigger"): "triggers",
    ("serving.knative.dev/", "Service"): "services",
    ("sources.knative.dev/", "SinkBinding"): "sinkbindings",
    ("apps/", "Deployment"): "deployments",
    ("v1", "Service"): "k8s_services",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "PersistentVolumeClaim"): "volume_claims",
    # cluster-only: nothing to do on one machine (docs/engine.md, "Cluster-only manifests")
    ("networking.k8s.io/", "NetworkPolicy"): "cluster_only",
    ("v1", "ServiceAccount"): "cluster_only",
}


@dataclass
class ManifestSet:
    brokers: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    sinkbindings: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    k8s_services: list[dict[str, Any]] = field(default_factory=list)
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    volume_claims: list[dict[str, Any]] = field(default_factory=list)
    #: understood, with no local effect: NetworkPolicies (every local listener is loopback-only
    #: or authenticated), ServiceAccounts (no Kubernetes API here)
    cluster_only: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    #: id(document) -> file it came from, for error messages
    origin: dict[int, str] = field(default_factory=dict)

    def pipeline_ids(self) -> set[str]:
        """The pipelines these manifests run: the ``radflowpipeline`` attribute the Triggers
        filter on (the adapter stamps it on each job event)."""
        ids: set[str] = set()
        for trigger in self.triggers:
            spec = trigger.get("spec") or {}
            attribute_sets = [(spec.get("filter") or {}).get("attributes") or {}]
            attribute_sets += [(f or {}).get("exact") or {} for f in spec.get("filters") or []]
            ids.update(str(a["radflowpipeline"]) for a in attribute_sets if "radflowpipeline" in a)
        return ids

    def where(self, doc: dict[str, Any]) -> str:
        meta = doc.get("metadata") or {}
        return (
            f"{self.origin.get(id(doc), '?')}: "
            f"{doc.get('kind')} {namespace_of(doc)}/{meta.get('name')}"
        )


def namespace_of(doc: dict[str, Any]) -> str:
    return str((doc.get("metadata") or {}).get("namespace") or "default")


def name_of(doc: dict[str, Any]) -> str:
    return str((doc.get("metadata") or {}).get("name") or "")


def iter_documents(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every mapping document of every ``*.yaml``/``*.yml`` under ``folder``, in path order."""
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise ConfigError(f"{path}: every document needs apiVersion and kind")
            yield path, doc


def load_manifests(folder: Path) -> ManifestSet:
    """Load and sort the manifests under ``folder``; duplicates (kind, namespace, name) are
    errors."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: manifest folder not found")
    result = ManifestSet()
    seen: dict[tuple[str, str, str, str], Path] = {}
    for path, doc in iter_documents(folder):
        api, kind = str(doc["apiVersion"]), str(doc["kind"])
        ident = (api.split("/")[0], kind, namespace_of(doc), name_of(doc))
        if ident in seen:
            raise ConfigError(
                f"{path}: {kind} {ident[2]}/{ident[3]} is already defined in {seen[ident]}"
            )
        seen[ident] = path
        target = next(
            (
                attr
                for (prefix, k), attr in _KINDS.items()
                if k == kind and (api == prefix or api.startswith(prefix))
            ),
            None,
        )
        if target is None:
            result.ignored.append((str(path), f"{api} {kind}"))
            continue
        getattr(result, target).append(doc)
        result.origin[id(doc)] = str(path)
    return result
