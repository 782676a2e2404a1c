"""Delivery rules and manifest validation of the broker, pure (knative-contracts.md §1, §4)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from radflow.engine.broker.config import DEFAULT_DELIVERY, DeliveryPolicy, load, parse_duration
from radflow.engine.broker.policy import (
    Kind,
    attribute_problem,
    classify,
    error_attributes,
    is_cloudevent_response,
    next_ttl,
    pass_through,
)
from radflow.sdk.errors import ConfigError

API = "eventing.knative.dev/v1"


def broker(
    name: str = "default", ns: str | None = None, delivery: dict[str, Any] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    spec = {"delivery": delivery} if delivery else {}
    return {"apiVersion": API, "kind": "Broker", "metadata": meta, "spec": spec}


def trigger(
    name: str = "t", spec: dict[str, Any] | None = None, ns: str | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    base = {"broker": "default", "subscriber": {"uri": "http://127.0.0.1:9/x"}}
    return {
        "apiVersion": API,
        "kind": "Trigger",
        "metadata": meta,
        "spec": {**base, **(spec or {})},
    }


def test_durations() -> None:
    assert parse_duration("PT0.5S") == 0.5
    assert parse_duration("PT2S") == 2
    assert parse_duration("PT1M30S") == 90
    assert parse_duration("P1DT1H") == 90000
    assert parse_duration("pt0,25s") == 0.25
    for bad in ("2s", "PT", "P", "-PT1S", "PT1.S", "1", ""):
        with pytest.raises(ValueError, match="not an ISO-8601 duration"):
            parse_duration(bad)


def test_backoff_formulas_are_mt() -> None:
    exp = DeliveryPolicy(retry=5, backoff_policy="exponential", backoff_delay=0.2)
    assert [exp.backoff(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]
    lin = DeliveryPolicy(retry=5, backoff_policy="linear", backoff_delay=0.2)
    assert [round(lin.backoff(n), 9) for n in (1, 2, 3, 4)] == [0.0, 0.2, 0.4, 0.6]
    assert DeliveryPolicy(retry=3).backoff(2) == 0.0  # no policy -> no wait
    assert DeliveryPolicy(retry=3, backoff_policy="linear").backoff(2) == 0.0  # no delay -> no wait


def test_defaults_and_wholesale_replacement() -> None:
    brokers, triggers = load([broker()], [trigger()], None)
    assert brokers["default/default"].delivery == DEFAULT_DELIVERY
    assert DEFAULT_DELIVERY.retry == 10 and DEFAULT_DELIVERY.backoff_delay == 0.2
    assert triggers["default/t"].delivery == DEFAULT_DELIVERY
    b = broker(
        delivery={"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT1S", "timeout": "PT3S"}
    )
    t = trigger(spec={"delivery": {"deadLetterSink": {"uri": "http://127.0.0.1:9/dls"}}})
    _, triggers = load([b], [t], None)
    got = triggers["default/t"].delivery
    # MT: the Trigger's delivery replaces the Broker's: no retries, no backoff, no timeout
    assert (got.retry, got.backoff_policy, got.backoff_delay, got.timeout) == (0, None, None, None)
    assert got.dead_letter is not None and got.dead_letter.url == "http://127.0.0.1:9/dls"


def test_delivery_validation_names_field_and_rule() -> None:
    cases = [
        ({"retry": -1}, r"Broker default/default: spec.delivery.retry must be an integer >= 0"),
        (
            {"backoffPolicy": "fibonacci"},
            r"spec.delivery.backoffPolicy must be 'linear' or 'exponential'",
        ),
        ({"backoffDelay": "2s"}, r"spec.delivery.backoffDelay: '2s' is not an ISO-8601 duration"),
        ({"timeout": "PT0S"}, r"spec.delivery.timeout must be a positive duration"),
        ({"format": "xml"}, r"spec.delivery.format must be 'json' or 'binary'"),
        (
            {"deadLetterSink": {"uri": "/relative"}},
            r"deadLetterSink must resolve to an absolute http\(s\) URL",
        ),
    ]
    for delivery, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            load([broker(delivery=delivery)], [], None)


def test_trigger_validation() -> None:
    with pytest.raises(
        ConfigError,
        match=r"Trigger default/t: spec.broker 'other' names no Broker in namespace default",
    ):
        load([broker()], [trigger(spec={"broker": "other"})], None)
    with pytest.raises(
        ConfigError,
        match=r"Trigger prod/t: spec.broker 'default' names no Broker in namespace prod",
    ):
        load([broker()], [trigger(ns="prod")], None)
    with pytest.raises(
        ConfigError, match=r"Trigger default/t: spec.subscriber.ref cannot be resolved here"
    ):
        load(
            [broker()],
            [trigger(spec={"subscriber": {"ref": {"kind": "Service", "name": "x"}}})],
            None,
        )
    with pytest.raises(
        ConfigError, match=r"Trigger default/t: apiVersion must be 'eventing.knative.dev/v1'"
    ):
        load([broker()], [{**trigger(), "apiVersion": "eventing.knative.dev/v1beta1"}], None)
    with pytest.raises(ConfigError, match="Broker default/default: defined twice"):
        load([broker(), broker()], [], None)


def test_ref_resolution_joins_relative_uri() -> None:
    seen = []

    def resolve(dest: dict[str, Any], ns: str) -> str:
        seen.append((dest["ref"]["name"], ns))
        return f"http://127.0.0.1:8080/{ns}/{dest['ref']['name']}/"

    sub = {
        "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "seg"},
        "uri": "hook",
    }
    _, triggers = load([broker(ns="p")], [trigger(ns="p", spec={"subscriber": sub})], resolve)
    assert triggers["p/t"].subscriber.url == "http://127.0.0.1:8080/p/seg/hook"
    assert triggers["p/t"].subscriber.label == "seg"
    assert seen == [("seg", "p")]


def test_classify() -> None:
    assert classify(202, {}, b"") == (Kind.SUCCESS, 202)
    assert classify(200, {"ce-specversion": "1.0"}, b"{}") == (Kind.REPLY, 200)
    assert classify(202, {"Content-Type": "application/cloudevents+json"}, b"{}") == (
        Kind.REPLY,
        202,
    )
    assert classify(200, {"content-type": "text/html; charset=utf-8"}, b"OK") == (Kind.RETRY, 502)
    for code in (404, 408, 409, 429, 500, 503, 504):
        assert classify(code, {}, b"")[0] is Kind.RETRY
    for code in (301, 302, 400, 401, 403, 410, 413):
        assert classify(code, {}, b"")[0] is Kind.FAIL
    assert not is_cloudevent_response({"content-type": "application/json"})


def test_ttl() -> None:
    assert next_ttl(None) == 255
    assert next_ttl("3") == 2
    assert next_ttl(1) == 0
    assert next_ttl(-5) == 0
    with pytest.raises(ValueError):
        next_ttl("many")


def test_error_attributes_base64_truncated() -> None:
    attrs = error_attributes("http://h/x", 503, b"busy")
    assert attrs == {
        "knativeerrordest": "http://h/x",
        "knativeerrorcode": 503,
        "knativeerrordata": "YnVzeQ==",
    }
    long = error_attributes("u", 500, b"x" * 5000)["knativeerrordata"]
    assert len(long) == 1024 and base64.b64decode(long[:1024]) == b"x" * 768
    assert "knativeerrordata" not in error_attributes("u", 500, b"")


def test_pass_through_headers() -> None:
    kept = pass_through(
        [
            ("X-Request-Id", "r"),
            ("Retry-After", "5"),
            ("Knative-Foo", "f"),
            ("X-B3-TraceId", "t"),
            ("Authorization", "secret"),
            ("Cookie", "c"),
            ("ce-id", "1"),
        ]
    )
    assert kept == {
        "x-request-id": "r",
        "retry-after": "5",
        "knative-foo": "f",
        "x-b3-traceid": "t",
    }


def test_attribute_problems_the_go_sdk_would_reject() -> None:
    good = {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "time": "2026-01-02T03:04:05.123456789Z",
    }
    assert attribute_problem(good) is None
    assert attribute_problem({**good, "id": 1}) == "attribute 'id' must be a string"
    assert (
        attribute_problem({**good, "time": "yesterday"})
        == "attribute 'time' must be an RFC 3339 timestamp"
    )
    assert attribute_problem({**good, "time": "2026-01-02T03:04:05+01:00"}) is None
