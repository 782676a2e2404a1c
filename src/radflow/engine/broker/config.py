"""Broker and Trigger manifests (eventing.knative.dev/v1) -> validated, resolved configuration.

Validation happens once, at construction, so a bad manifest stops ``radflow up`` with a
:class:`ConfigError` naming ``Kind namespace/name``, the field and the rule, instead of
failing on the first event. Destinations are resolved to absolute URLs here too.

Delivery precedence follows the MT broker (knative-contracts.md §4.2): a Trigger's ``delivery``
replaces the Broker's **wholesale** (no per-field merge, unlike Kafka); a Broker without
``delivery`` gets the default-broker ConfigMap's ``retry: 10, exponential, PT0.2S``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from radflow.engine.broker.filters import Filter, compile_trigger_filter
from radflow.sdk.errors import ConfigError

API_VERSION = "eventing.knative.dev/v1"

Resolver = Callable[[dict[str, Any], str], str]

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<Y>\d+(?:[.,]\d+)?)Y)?(?:(?P<Mo>\d+(?:[.,]\d+)?)M)?(?:(?P<W>\d+(?:[.,]\d+)?)W)?"
    r"(?:(?P<D>\d+(?:[.,]\d+)?)D)?(?:T(?=\d)(?:(?P<H>\d+(?:[.,]\d+)?)H)?(?:(?P<Mi>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<S>\d+(?:[.,]\d+)?)S)?)?$"
)
# Years and months have no fixed length; like Go's period library we approximate them.
_UNIT_SECONDS = {
    "Y": 365 * 86400,
    "Mo": 30 * 86400,
    "W": 7 * 86400,
    "D": 86400,
    "H": 3600,
    "Mi": 60,
    "S": 1,
}


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as ``PT0.5S``, ``PT2S``, ``PT1M30S``, ``P1D``.

    Raises ValueError for anything else (negative durations included).
    """
    m = _DURATION.match(text.strip().upper()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not an ISO-8601 duration (e.g. PT0.5S, PT2S, PT1M)")
    return sum(float(v.replace(",", ".")) * _UNIT_SECONDS[k] for k, v in m.groupdict().items() if v)


@dataclass(frozen=True)
class Destination:
    """A resolved Knative Destination."""

    url: str
    #: the metrics label: the referenced object's name, else the URL's host:port
    label: str


@dataclass(frozen=True)
class DeliveryPolicy:
    """An effective ``DeliverySpec`` (durations in seconds)."""

    retry: int = 0
    backoff_policy: str | None = None
    backoff_delay: float | None = None
    timeout: float | None = None
    dead_letter: Destination | None = None
    format: str = "binary"

    def backoff(self, n: int) -> float:
        """Wait before the ``n``-th retry (1-based) with the MT formula (§4.3).

        exponential ``d·2^(n-1)``, linear ``d·(n-1)`` (first retry immediate); no jitter,
        no cap; a missing policy or delay waits 0.
        """
        if not self.backoff_policy or not self.backoff_delay or n < 1:
            return 0.0
        if self.backoff_policy == "exponential":
            return self.backoff_delay * math.pow(2, n - 1)
        return self.backoff_delay * (n - 1)


#: the default-broker ConfigMap's delivery, used when a Broker has none
DEFAULT_DELIVERY = DeliveryPolicy(retry=10, backoff_policy="exponential", backoff_delay=0.2)


@dataclass(frozen=True)
class BrokerConfig:
    namespace: str
    name: str
    delivery: DeliveryPolicy

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class TriggerConfig:
    namespace: str
    name: str
    broker: str  # broker key ns/name
    filter: Filter
    subscriber: Destination
    delivery: DeliveryPolicy

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _meta(manifest: Mapping[str, Any], kind: str) -> tuple[str, str]:
    if not isinstance(manifest, Mapping):
        raise ConfigError(f"{kind} manifest must be a mapping, got {type(manifest).__name__}")
    meta = manifest.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not name or not isinstance(name, str):
        raise ConfigError(f"{kind} manifest: metadata.name is required")
    ns = meta.get("namespace") or "default"
    where = f"{kind} {ns}/{name}"
    if manifest.get("kind") != kind:
        raise ConfigError(f"{where}: kind must be {kind!r}, got {manifest.get('kind')!r}")
    if manifest.get("apiVersion") != API_VERSION:
        raise ConfigError(
            f"{where}: apiVersion must be {API_VERSION!r}, got {manifest.get('apiVersion')!r}"
        )
    return str(ns), name


def resolve_destination(
    dest: Any, namespace: str, field: str, where: str, resolve: Resolver | None
) -> Destination:
    """A Destination (``ref`` and/or ``uri``) as an absolute URL; relative ``uri`` joins ``ref``'s
    URL."""
    if not isinstance(dest, Mapping) or not (dest.get("ref") or dest.get("uri")):
        raise ConfigError(f"{where}: {field} must set 'ref' or 'uri'")
    uri = dest.get("uri")
    ref = dest.get("ref")
    if uri is not None and not isinstance(uri, str):
        raise ConfigError(f"{where}: {field}.uri must be a string")
    if ref:
        if not isinstance(ref, Mapping) or not ref.get("name") or not ref.get("kind"):
            raise ConfigError(f"{where}: {field}.ref needs 'kind' and 'name'")
        if resolve is None:
            raise ConfigError(
                f"{where}: {field}.ref cannot be resolved here (no resolver); "
                "give an absolute 'uri'"
            )
        try:
            base = resolve(dict(dest), namespace)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {field}.ref: {exc}") from None
        except (KeyError, LookupError, ValueError) as exc:
            raise ConfigError(
                f"{where}: {field}.ref {ref.get('kind')}/{ref.get('name')} "
                f"cannot be resolved: {exc}"
            ) from None
        url = urljoin(base, uri) if uri else base
        label = str(ref["name"])
    else:
        url = str(uri)
        label = ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: {field} must resolve to an absolute http(s) URL, got {url!r}")
    return Destination(url=url, label=label or parts.netloc)


def parse_delivery(
    spec: Any, namespace: str, where: str, resolve: Resolver | None
) -> DeliveryPolicy:
    """Validate a ``DeliverySpec`` (webhook rules: retry >= 0, policy enum, ISO-8601 durations)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: spec.delivery must be a mapping")
    field = "spec.delivery"
    retry = spec.get("retry", 0)
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise ConfigError(f"{where}: {field}.retry must be an integer >= 0, got {retry!r}")
    policy = spec.get("backoffPolicy")
    if policy is not None and policy not in ("linear", "exponential"):
        raise ConfigError(
            f"{where}: {field}.backoffPolicy must be 'linear' or 'exponential', got {policy!r}"
        )
    durations: dict[str, float | None] = {}
    for key in ("backoffDelay", "timeout", "retryAfterMax"):
        raw = spec.get(key)
        if raw is None:
            durations[key] = None
            continue
        try:
            durations[key] = parse_duration(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: {field}.{key}: {exc}") from None
    fmt = spec.get("format") or "binary"
    if fmt not in ("binary", "json"):
        raise ConfigError(f"{where}: {field}.format must be 'json' or 'binary', got {fmt!r}")
    dls = spec.get("deadLetterSink")
    dead_letter = (
        resolve_destination(dls, namespace, f"{field}.deadLetterSink", where, resolve)
        if dls
        else None
    )
    if durations["timeout"] is not None and durations["timeout"] <= 0:
        raise ConfigError(f"{where}: {field}.timeout must be a positive duration")
    return DeliveryPolicy(
        retry=retry,
        backoff_policy=policy,
        backoff_delay=durations["backoffDelay"],
        timeout=durations["timeout"],
        dead_letter=dead_letter,
        format=fmt,
    )


def load(
    brokers: list[dict[str, Any]], triggers: list[dict[str, Any]], resolve: Resolver | None
) -> tuple[dict[str, BrokerConfig], dict[str, TriggerConfig]]:
    """Validate and resolve every manifest; raises :class:`ConfigError` on the first problem."""
    by_broker: dict[str, BrokerConfig] = {}
    for manifest in brokers:
        ns, name = _meta(manifest, "Broker")
        where = f"Broker {ns}/{name}"
        spec = manifest.get("spec") or {}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: spec must be a mapping")
        delivery = (
            parse_delivery(spec["delivery"], ns, where, resolve)
            if spec.get("delivery")
            else DEFAULT_DELIVERY
        )
        cfg = BrokerConfig(namespace=ns, name=name, delivery=delivery)
        if cfg.key in by_broker:
            raise ConfigError(
                f"{where}: defined twice (metadata.name must be unique per namespace)"
            )
        by_broker[cfg.key] = cfg
    by_trigger: dict[str, TriggerConfig] = {}
    for manifest in triggers:
        ns, name = _meta(manifest, "Trigger")
        where = f"Trigger {ns}/{name}"
        spec = manifest.get("spec")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: spec is required")
        broker = spec.get("broker")
        if not broker or not isinstance(broker, str):
            raise ConfigError(
                f"{where}: spec.broker is required (the name of a Broker in namespace {ns})"
            )
        broker_key = f"{ns}/{broker}"
        if broker_key not in by_broker:
            raise ConfigError(f"{where}: spec.broker {broker!r} names no Broker in namespace {ns}")
        if not spec.get("subscriber"):
            raise ConfigError(f"{where}: spec.subscriber is required")
        subscriber = resolve_destination(spec["subscriber"], ns, "spec.subscriber", where, resolve)
        flt = compile_trigger_filter(spec, f"{ns}/{name}")
        # MT: the Trigger's delivery replaces the Broker's wholesale (no per-field merge)
        delivery = (
            parse_delivery(spec["delivery"], ns, where, resolve)
            if spec.get("delivery")
            else by_broker[broker_key].delivery
        )
        cfg_t = TriggerConfig(ns, name, broker_key, flt, subscriber, delivery)
        if cfg_t.key in by_trigger:
            raise ConfigError(
                f"{where}: defined twice (metadata.name must be unique per namespace)"
            )
        by_trigger[cfg_t.key] = cfg_t
    return by_broker, by_trigger
