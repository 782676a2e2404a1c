"""Selection rules: every condition kind, the seed rule against decoys, rule validation, trace."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat

from radflow.imaging.selection import (
    Rules,
    SeriesFacts,
    evaluate,
    parse_rules,
    rules_from_variables,
    select,
)
from radflow.sdk.errors import InvalidInput

SEED = {
    "selections": [
        {
            "name": "T1C",
            "conditions": {
                "Modality": "(?i)^MR",
                "StudyDescription": "(?i)Brain",
                "ImageType": ["ORIGINAL", "PRIMARY"],
                "SeriesDescription": "^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*",
            },
        }
    ]
}


def facts(
    index: int, count: int = 10, orientation: str | None = "Axial", **attrs: Any
) -> SeriesFacts:
    return SeriesFacts(index, f"1.2.3.{index}", count, attrs.get, orientation)


def mr(
    index: int,
    description: str,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
    **kw: Any,
) -> SeriesFacts:
    return facts(
        index,
        Modality="MR",
        StudyDescription="Brain MRI w/wo",
        SeriesDescription=description,
        ImageType=MultiValue(str, list(image_type)),
        **kw,
    )


def test_seed_rule_selects_real_t1c_not_decoys_or_localizer() -> None:
    series = [
        mr(0, "3-plane loc", ("ORIGINAL", "PRIMARY", "LOCALIZER")),
        mr(1, "Ax T1 SE"),
        mr(2, "Ax T1c ref"),
        mr(3, "T1c 3x3 reformat"),
        mr(4, "AX T1C RFMT"),
        mr(5, "Ax T1c SE"),
        mr(6, "Ax T1c SE", ("DERIVED", "SECONDARY")),
    ]
    out = select(parse_rules(json.dumps(SEED)), series)
    assert out.selected == {"T1C": [5]}
    traces = {t["series_index"]: t["selections"]["T1C"] for t in out.trace}
    assert traces[2]["reason"] == "failed: SeriesDescription"
    assert traces[3]["reason"] == "failed: SeriesDescription"
    assert traces[6]["reason"] == "failed: ImageType"
    assert traces[5]["selected"] is True


def test_seed_rule_rejects_other_modality_and_study() -> None:
    ct = facts(
        0,
        Modality="CT",
        StudyDescription="Brain",
        SeriesDescription="T1c",
        ImageType=["ORIGINAL", "PRIMARY"],
    )
    spine = facts(
        1,
        Modality="MR",
        StudyDescription="Spine",
        SeriesDescription="T1c",
        ImageType=["ORIGINAL", "PRIMARY"],
    )
    assert select(parse_rules(SEED), [ct, spine]).selected == {"T1C": []}


@pytest.mark.parametrize(
    ("rule", "value", "kind", "matched"),
    [
        ("(?i)^mr", "MR", "regex", True),
        ("T1", "Ax T1 POST GAD", "regex", True),  # unanchored, as MONAI
        ("t1", "Ax T1", "regex", True),  # case-insensitive, as MONAI
        ("^T2$", "Ax T2 FSE", "regex", False),
    ],
)
def test_regex_on_text(rule: str, value: str, kind: str, matched: bool) -> None:
    r = evaluate("SeriesDescription", rule, facts(0, SeriesDescription=value))
    assert (r.kind, r.matched) == (kind, matched)


def test_regex_on_numeric_attribute_is_a_full_match_of_text_or_number() -> None:
    assert evaluate(
        "SliceThickness", "5", facts(0, SliceThickness=DSfloat("5.0"))
    ).matched  # MONAI: no match
    assert evaluate("SliceThickness", "5\\.0", facts(0, SliceThickness=DSfloat("5.0"))).matched
    r = evaluate("SliceThickness", "5", facts(0, SliceThickness=DSfloat("5.5")))
    assert (r.kind, r.matched) == ("regex-numeric", False)


def test_all_of_list_needs_every_term_and_honours_exclusions() -> None:
    it = facts(0, ImageType=MultiValue(str, ["ORIGINAL", "PRIMARY", "AXIAL"]))
    assert evaluate("ImageType", ["PRIMARY", "ORIGINAL"], it).matched
    assert not evaluate("ImageType", ["PRIMARY", "LOCALIZER"], it).matched
    assert evaluate("ImageType", ["PRIMARY", "!SECONDARY"], it).matched
    assert not evaluate("ImageType", ["PRIMARY", "!AXIAL"], it).matched
    # whole values, not substrings (MONAI would match PRIMARY_X)
    assert not evaluate("ImageType", ["PRIMARY"], facts(0, ImageType=["PRIMARY_X"])).matched
    r = evaluate("ImageType", ["PRIMARY", "LOCALIZER"], it)
    assert r.kind == "all-of" and "absent: LOCALIZER" in r.reason


@pytest.mark.parametrize(
    ("rule", "value", "kind", "matched"),
    [
        (3, IS("3"), "equals", True),
        (0, IS("0"), "equals", True),  # 0 is a value (MONAI treats it as a wildcard)
        (3, IS("4"), "equals", False),
        ([1, 2], DSfloat("1.25"), "range", True),
        ([1, 2], DSfloat("2"), "range", True),  # inclusive
        ([1, 2], DSfloat("2.5"), "range", False),
        ([2, ">"], DSfloat("5"), "relational", True),
        ([5, ">"], DSfloat("5"), "relational", False),
        ([5, ">="], DSfloat("5"), "relational", True),
        ([5, "<"], DSfloat("1.25"), "relational", True),
        ([5, "<="], DSfloat("6"), "relational", False),
        ([5, "!="], DSfloat("5"), "relational", False),
    ],
)
def test_numeric_conditions(rule: Any, value: Any, kind: str, matched: bool) -> None:
    r = evaluate("SliceThickness", rule, facts(0, SliceThickness=value))
    assert (r.kind, r.matched) == (kind, matched)


def test_multivalued_numeric_must_hold_for_every_value() -> None:
    f = facts(0, PixelSpacing=MultiValue(DSfloat, ["0.5", "1.2"]))
    assert evaluate("PixelSpacing", [0.4, 1.5], f).matched
    assert not evaluate("PixelSpacing", [0.4, 1.0], f).matched


def test_missing_attribute_fails_and_empty_condition_is_wildcard() -> None:
    f = facts(0, SeriesDescription="")
    r = evaluate("SeriesDescription", "(.*?)", f)
    assert (r.matched, r.reason) == (False, "missing")
    assert evaluate("BodyPartExamined", "BRAIN", f).reason == "missing"
    for wildcard in (None, "", []):
        assert evaluate("SeriesNumber", wildcard, f).kind == "ignored"
        assert evaluate("SeriesNumber", wildcard, f).matched


def test_orientation_condition_uses_slice_normal_and_mixed_for_localizers() -> None:
    assert evaluate("ImageOrientationPatient", "Axial", facts(0, orientation="Axial")).matched
    assert evaluate(
        "ImageOrientationPatient", "axial|coronal", facts(0, orientation="Coronal")
    ).matched
    assert not evaluate("ImageOrientationPatient", "Axial", facts(0, orientation="Mixed")).matched
    assert (
        evaluate("ImageOrientationPatient", "Axial", facts(0, orientation=None)).reason == "missing"
    )


def test_first_match_is_deterministic_and_all_matched_sorts_by_count() -> None:
    series = [mr(0, "T1c a", count=5), mr(1, "T1c b", count=50), mr(2, "T2", count=9)]
    rules = parse_rules(
        {
            "selections": [
                {"name": "first", "conditions": {"SeriesDescription": "T1c"}},
                {
                    "name": "all",
                    "conditions": {"SeriesDescription": "T1c"},
                    "all_matched": True,
                    "sort_by_sop_instance_count": True,
                },
            ]
        }
    )
    out = select(rules, series)
    assert out.selected == {"first": [0], "all": [1, 0]}
    assert "first match" in out.trace[1]["selections"]["first"]["reason"]


def test_no_rules_selects_every_series() -> None:
    assert select(Rules(), [mr(0, "a"), mr(1, "b")]).selected == {"": [0, 1]}
    assert parse_rules("  ").select_all


def test_trace_withholds_identifying_values() -> None:
    f = facts(0, PatientName="Doe^Jane", Modality="MR", StudyDescription="Brain Jane Doe")
    rules = parse_rules(
        {
            "selections": [
                {
                    "name": "x",
                    "conditions": {
                        "PatientName": "Doe",
                        "Modality": "MR",
                        "StudyDescription": "Brain",
                    },
                }
            ]
        }
    )
    text = json.dumps(select(rules, [f]).trace)
    assert "Jane" not in text and '"value": "MR"' in text


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"rules": []}, "'selections' is missing"),
        (
            {"selections": [{"name": "a", "conditions": {"SeriesDesciption": "T1"}}]},
            "not a DICOM keyword",
        ),
        (
            {"selections": [{"name": "a", "conditions": {"SeriesDescription": "(T1"}}]},
            "invalid regular expression",
        ),
        ({"selections": [{"name": "a", "conditions": {"SliceThickness": [5, 1]}}]}, "min > max"),
        (
            {"selections": [{"name": "a", "conditions": {"SliceThickness": [5, "~"]}}]},
            "a list must be",
        ),
        ({"selections": [{"name": "a", "conditions": {"SeriesNumber": True}}]}, "bool values"),
    ],
)
def test_invalid_rules_are_rejected_with_the_reason(document: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_rules(document if isinstance(document, str) else json.dumps(document))
    assert info.value.code == "invalid_selection_rules"


def test_rules_variables_precedence_base64_over_file() -> None:
    encoded = base64.b64encode(json.dumps(SEED).encode()).decode()
    other = json.dumps({"selections": [{"name": "FILE", "conditions": {"Modality": "CT"}}]})
    both = {
        "NVIDIA_CLARA_SELECTION_RULES_BASE64": encoded,
        "NVIDIA_CLARA_SELECTION_RULES_FILE": "/x.json",
    }
    assert rules_from_variables(both, lambda p: other).selections[0].name == "T1C"
    assert (
        rules_from_variables({"NVIDIA_CLARA_SELECTION_RULES_FILE": "/x.json"}, lambda p: other)
        .selections[0]
        .name
        == "FILE"
    )
    assert rules_from_variables({}, lambda p: other).select_all
    with pytest.raises(InvalidInput, match="not Base64"):
        rules_from_variables({"NVIDIA_CLARA_SELECTION_RULES_BASE64": "%%%"}, lambda p: other)
