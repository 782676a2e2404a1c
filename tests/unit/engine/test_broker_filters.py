"""Trigger filter dialects with MT semantics (knative-contracts.md §2), pure."""

from __future__ import annotations

from typing import Any

import pytest

from radflow.engine.broker.filters import Result, compile_trigger_filter, matches
from radflow.sdk.errors import ConfigError

EVENT = {
    "specversion": "1.0",
    "id": "42",
    "source": "/dicom-adapter/RADFLOW",
    "type": "dev.radflow.study.received.v1",
    "datacontenttype": "application/json",
    "radflowpipeline": "brain-seg",
    "count": 3,
}


def ok(spec: dict[str, Any], event: dict[str, Any] = EVENT) -> bool:
    return matches(compile_trigger_filter(spec, "default/t"), event)


# ------------------------------------------------------------------ no filter / legacy


def test_no_filter_matches_everything() -> None:
    assert ok({})
    assert ok({"filter": {}})
    assert ok({"filter": {"attributes": {}}})


def test_legacy_exact_values_are_anded_and_case_sensitive() -> None:
    assert ok(
        {
            "filter": {
                "attributes": {
                    "type": "dev.radflow.study.received.v1",
                    "radflowpipeline": "brain-seg",
                }
            }
        }
    )
    assert not ok(
        {
            "filter": {
                "attributes": {"type": "dev.radflow.study.received.v1", "radflowpipeline": "other"}
            }
        }
    )
    assert not ok({"filter": {"attributes": {"type": "DEV.radflow.study.received.v1"}}})


def test_legacy_missing_extension_fails_but_core_attribute_is_found_as_empty() -> None:
    assert not ok({"filter": {"attributes": {"radflowjob": "x"}}})
    # subject is unset: found as "" -> an exact non-empty value does not match
    assert not ok({"filter": {"attributes": {"subject": "s"}}})


def test_legacy_empty_value_means_present_and_non_empty() -> None:
    assert ok({"filter": {"attributes": {"radflowpipeline": ""}}})
    assert not ok({"filter": {"attributes": {"radflowjob": ""}}})  # absent extension
    assert not ok({"filter": {"attributes": {"subject": ""}}})  # unset core attribute = ""
    assert not ok(
        {"filter": {"attributes": {"radflowpipeline": ""}}}, {**EVENT, "radflowpipeline": ""}
    )


def test_legacy_non_string_values_compare_as_text() -> None:
    assert ok({"filter": {"attributes": {"count": "3"}}})


def test_legacy_attribute_name_rule() -> None:
    with pytest.raises(ConfigError, match=r"default/t: spec.filter.attributes.Type: .*\^\[a-z\]"):
        compile_trigger_filter({"filter": {"attributes": {"Type": "x"}}}, "default/t")


# ------------------------------------------------------------------ subscriptions API


def test_exact() -> None:
    assert ok({"filters": [{"exact": {"type": "dev.radflow.study.received.v1"}}]})
    assert not ok({"filters": [{"exact": {"type": "dev.radflow.study"}}]})
    assert not ok({"filters": [{"exact": {"radflowjob": "x"}}]})  # missing attribute fails


def test_prefix() -> None:
    assert ok({"filters": [{"prefix": {"type": "dev.radflow."}}]})
    assert not ok({"filters": [{"prefix": {"type": "radflow"}}]})
    assert not ok({"filters": [{"prefix": {"subject": "a"}}]})


def test_suffix() -> None:
    assert ok({"filters": [{"suffix": {"type": ".received.v1"}}]})
    assert not ok({"filters": [{"suffix": {"type": ".completed.v1"}}]})
    assert ok({"filters": [{"suffix": {"count": "3"}}]})


def test_multiple_keys_in_one_dialect_are_anded() -> None:
    assert ok(
        {
            "filters": [
                {"exact": {"type": "dev.radflow.study.received.v1", "radflowpipeline": "brain-seg"}}
            ]
        }
    )
    assert not ok(
        {"filters": [{"exact": {"type": "dev.radflow.study.received.v1", "radflowpipeline": "x"}}]}
    )


def test_entries_are_anded() -> None:
    assert ok({"filters": [{"prefix": {"type": "dev."}}, {"suffix": {"type": ".v1"}}]})
    assert not ok({"filters": [{"prefix": {"type": "dev."}}, {"suffix": {"type": ".v2"}}]})


def test_empty_key_or_value_is_skipped() -> None:
    assert ok({"filters": [{"exact": {"type": ""}}]})
    assert ok({"filters": [{"exact": {"": "x"}}]})
    assert ok({"filters": [{"prefix": {"radflowjob": ""}}]})  # even for an absent attribute
    # MT refuses to build the whole entry when any key or value is empty: the entry matches
    assert ok({"filters": [{"exact": {"type": "", "source": "other"}}]})
    assert not ok({"filters": [{"exact": {"type": ""}}, {"exact": {"source": "other"}}]})


def test_all() -> None:
    assert ok(
        {
            "filters": [
                {
                    "all": [
                        {"exact": {"type": "dev.radflow.study.received.v1"}},
                        {"prefix": {"source": "/dicom"}},
                    ]
                }
            ]
        }
    )
    assert not ok(
        {
            "filters": [
                {
                    "all": [
                        {"exact": {"type": "dev.radflow.study.received.v1"}},
                        {"prefix": {"source": "/x"}},
                    ]
                }
            ]
        }
    )
    assert ok({"filters": [{"all": []}]})


def test_any() -> None:
    assert ok(
        {
            "filters": [
                {"any": [{"exact": {"type": "nope"}}, {"exact": {"radflowpipeline": "brain-seg"}}]}
            ]
        }
    )
    assert not ok(
        {"filters": [{"any": [{"exact": {"type": "nope"}}, {"exact": {"radflowpipeline": "x"}}]}]}
    )
    # MT: a FAIL or-ed with NoFilter stays FAIL
    assert not ok({"filters": [{"any": [{"exact": {"type": "nope"}}, {"exact": {"type": ""}}]}]})
    assert ok({"filters": [{"any": []}]})


def test_not() -> None:
    assert ok({"filters": [{"not": {"exact": {"type": "dev.radflow.stage.failed.v1"}}}]})
    assert not ok({"filters": [{"not": {"exact": {"type": "dev.radflow.study.received.v1"}}}]})
    assert not ok({"filters": [{"not": {"any": [{"prefix": {"type": "dev."}}]}}]})


def test_not_of_no_filter_passes() -> None:
    flt = compile_trigger_filter({"filters": [{"not": {"exact": {"type": ""}}}]}, "default/t")
    assert flt.evaluate(EVENT) is Result.NO_FILTER
    assert matches(flt, EVENT)


def test_filters_win_over_filter() -> None:
    spec = {"filter": {"attributes": {"type": "nope"}}, "filters": [{"prefix": {"type": "dev."}}]}
    assert ok(spec)
    spec = {
        "filter": {"attributes": {"type": "dev.radflow.study.received.v1"}},
        "filters": [{"exact": {"type": "x"}}],
    }
    assert not ok(spec)


def test_one_dialect_per_entry() -> None:
    with pytest.raises(
        ConfigError,
        match=r"default/t: spec.filters\[0\] must set exactly one dialect.*'exact', 'suffix'",
    ):
        compile_trigger_filter(
            {"filters": [{"exact": {"type": "a"}, "suffix": {"type": "b"}}]}, "default/t"
        )
    with pytest.raises(
        ConfigError, match=r"spec.filters\[0\].all\[1\] must set exactly one dialect"
    ):
        compile_trigger_filter({"filters": [{"all": [{"exact": {"type": "a"}}, {}]}]}, "default/t")


def test_unknown_dialect_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown filter dialect"):
        compile_trigger_filter({"filters": [{"regex": {"type": "a.*"}}]}, "default/t")


def test_attribute_name_rule_in_filters() -> None:
    with pytest.raises(ConfigError, match=r"spec.filters\[0\].not.prefix.my_attr: attribute name"):
        compile_trigger_filter({"filters": [{"not": {"prefix": {"my_attr": "a"}}}]}, "default/t")
    with pytest.raises(ConfigError, match="attribute name '1abc'"):
        compile_trigger_filter({"filters": [{"exact": {"1abc": "a"}}]}, "default/t")


def test_cesql_rejected_clearly() -> None:
    with pytest.raises(ConfigError, match="cesql is not supported by the radflow engine"):
        compile_trigger_filter({"filters": [{"cesql": "type = 'x'"}]}, "default/t")
    with pytest.raises(ConfigError, match=r"spec.filters\[0\].any\[0\].cesql"):
        compile_trigger_filter({"filters": [{"any": [{"cesql": "true"}]}]}, "default/t")


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ConfigError, match="must be a list"):
        compile_trigger_filter({"filters": [{"all": {"exact": {"type": "a"}}}]}, "default/t")
    with pytest.raises(ConfigError, match="mapping of attribute -> value"):
        compile_trigger_filter({"filters": [{"exact": ["type"]}]}, "default/t")
