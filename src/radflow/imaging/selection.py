"""Series selection rules (Clara / MONAI ``selections`` JSON) and an explainable match trace.

Pure: no I/O. The grammar is MONAI Deploy's ``DICOMSeriesSelectorOperator`` JSON, which Clara's
dicom-parser reads from ``NVIDIA_CLARA_SELECTION_RULES_BASE64`` / ``_FILE``::

    {"selections": [{"name": "T1C",
                     "conditions": {"Modality": "(?i)^MR", "ImageType": ["ORIGINAL", "PRIMARY"],
                                    "SliceThickness": [1, 5], "EchoTime": [20, "<"],
                                    "ImageOrientationPatient": "Axial"},
                     "all_matched": false, "sort_by_sop_instance_count": false}]}

A series matches a selection when every condition matches (AND). Condition kinds, keyed by the
JSON type of the condition value (``docs/imaging.md`` has the table with MONAI differences):

* ``null``, ``""``, ``[]``: **ignored** (wildcard), as in MONAI.
* string vs a text attribute: **regex**, ``re.search`` case-insensitive (unanchored; anchor with
  ``^...$``). Against a multi-valued attribute the pattern must match one of the values.
* string vs a numeric attribute (DS/IS/US...): **regex-numeric**, ``re.fullmatch`` against the
  stored text *or* its normalised number (``"5"`` matches ``5.0``; MONAI matches the text only).
* string for ``ImageOrientationPatient``: **orientation**, ``re.fullmatch`` (case-insensitive)
  against ``Axial``/``Coronal``/``Sagittal`` (the patient axis nearest the slice normal) or
  ``Mixed`` when the series' instances disagree (3-plane localizers). PatientPosition is not
  needed (MONAI requires it and fails the operator without it).
* list of strings: **all-of**: every term must equal (case-insensitive) one of the attribute's
  values; a ``!term`` must equal none (MONAI matches substrings of ``str(list)``).
* number: **equals** (numeric). ``0`` is a value here, not a wildcard (MONAI ignores ``0``).
* ``[min, max]`` numbers: inclusive **range**. ``[v, op]`` with op in ``> >= < <= !=``:
  **relational**. Multi-valued numeric attributes (PixelSpacing) must satisfy it with every value.
* A condition on an attribute the series lacks (absent or empty) fails with reason ``missing``.

Series are visited in a deterministic order (SeriesNumber, SeriesInstanceUID). A selection picks
the first matching series, or all of them with ``all_matched`` (then optionally sorted by
instance count, largest first). No rules at all selects every series under the name ``""``.
Rules without ``selections`` are an error, like a condition on an unknown keyword, an invalid
regex, a boolean or an object value: a typo must not silently select nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from radflow.sdk.errors import InvalidInput

#: Attributes whose values may appear in a trace: technical, never identifying.
SAFE_KEYWORDS = frozenset(
    {
        "Modality",
        "ImageType",
        "SliceThickness",
        "SpacingBetweenSlices",
        "SeriesNumber",
        "PixelSpacing",
        "Rows",
        "Columns",
        "EchoTime",
        "RepetitionTime",
        "InversionTime",
        "FlipAngle",
        "MagneticFieldStrength",
        "MRAcquisitionType",
        "ScanningSequence",
        "SequenceVariant",
        "BodyPartExamined",
        "PatientPosition",
        "Laterality",
        "SOPClassUID",
        "ImageOrientationPatient",
        "NumberOfFrames",
        "BitsAllocated",
        "PhotometricInterpretation",
        "ContrastBolusAgent",
        "ConvolutionKernel",
        "KVP",
    }
)
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "!=": lambda a, b: a != b,
}
RULES_ERROR = "invalid_selection_rules"


@dataclass(frozen=True)
class Selection:
    name: str
    conditions: Mapping[str, Any]
    all_matched: bool = False
    sort_by_sop_instance_count: bool = False


@dataclass(frozen=True)
class Rules:
    """Parsed rules; ``selections == ()`` means "no rules: select every series"."""

    selections: tuple[Selection, ...] = ()

    @property
    def select_all(self) -> bool:
        return not self.selections


def _bad(message: str) -> InvalidInput:
    return InvalidInput(f"selection rules: {message}", code=RULES_ERROR)


def _check_condition(selection: str, keyword: str, value: Any) -> None:
    where = f"selection {selection!r} condition {keyword!r}"
    if tag_for_keyword(keyword) is None:
        raise _bad(f"{where}: not a DICOM keyword (check the spelling)")
    if value is None or value == "" or value == []:
        return
    if isinstance(value, bool) or isinstance(value, dict):
        raise _bad(f"{where}: {type(value).__name__} values are not a condition kind")
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise _bad(f"{where}: invalid regular expression ({exc})") from exc
        return
    if isinstance(value, (int, float)):
        return
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return
        if len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            if value[0] > value[1]:
                raise _bad(f"{where}: range [min, max] has min > max")
            return
        if (
            len(value) == 2
            and isinstance(value[0], (int, float))
            and not isinstance(value[0], bool)
            and value[1] in OPERATORS
        ):
            return
        raise _bad(
            f"{where}: a list must be strings, [min, max] or [value, '>'|'>='|'<'|'<='|'!=']"
        )
    raise _bad(f"{where}: unsupported value type {type(value).__name__}")


def parse_rules(document: str | bytes | Mapping[str, Any] | None) -> Rules:
    """Parse and validate a rules document (JSON text or an already-decoded mapping)."""
    if document is None or (isinstance(document, (str, bytes)) and not document.strip()):
        return Rules()
    if isinstance(document, (str, bytes)):
        try:
            data = json.loads(document)
        except json.JSONDecodeError as exc:
            raise _bad(f"not valid JSON (line {exc.lineno}, column {exc.colno})") from exc
    else:
        data = document
    if not isinstance(data, Mapping):
        raise _bad("the document must be an object with 'selections'")
    items = data.get("selections")
    if not items or not isinstance(items, list):
        raise _bad("'selections' is missing or empty")
    selections = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _bad(f"selections[{n}] is not an object")
        name = str(item.get("name", f"selection-{n}"))
        conditions = item.get("conditions") or {}
        if not isinstance(conditions, Mapping):
            raise _bad(f"selection {name!r}: 'conditions' must be an object")
        for keyword, value in conditions.items():
            _check_condition(name, keyword, value)
        selections.append(
            Selection(
                name=name,
                conditions=dict(conditions),
                all_matched=bool(item.get("all_matched", False)),
                sort_by_sop_instance_count=bool(item.get("sort_by_sop_instance_count", False)),
            )
        )
    return Rules(tuple(selections))


def rules_from_variables(variables: Mapping[str, str], read_file: Callable[[str], str]) -> Rules:
    """Clara's precedence: ``NVIDIA_CLARA_SELECTION_RULES_BASE64`` > ``..._FILE`` > no rules."""
    encoded = variables.get("NVIDIA_CLARA_SELECTION_RULES_BASE64", "").strip()
    if encoded:
        try:
            return parse_rules(base64.b64decode(encoded, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _bad("NVIDIA_CLARA_SELECTION_RULES_BASE64 is not Base64 of UTF-8 JSON") from exc
    path = variables.get("NVIDIA_CLARA_SELECTION_RULES_FILE", "").strip()
    if path:
        try:
            return parse_rules(read_file(path))
        except OSError as exc:
            raise _bad(
                f"NVIDIA_CLARA_SELECTION_RULES_FILE cannot be read ({type(exc).__name__})"
            ) from exc
    return Rules()


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class SeriesFacts:
    """What selection may look at for one series (built from headers by the caller)."""

    index: int
    series_instance_uid: str
    instance_count: int
    get: Callable[[str], Any]  #: keyword -> value of the first instance (None when absent)
    orientation: str | None = None  #: Axial/Coronal/Sagittal/Mixed, None without geometry


@dataclass(frozen=True)
class ConditionResult:
    keyword: str
    kind: str
    rule: Any
    matched: bool
    reason: str
    value: Any = None  #: only for SAFE_KEYWORDS, else None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "keyword": self.keyword,
            "kind": self.kind,
            "rule": self.rule,
            "matched": self.matched,
            "reason": self.reason,
        }
        if self.value is not None:
            out["value"] = self.value
        return out


def _values(value: Any) -> list[Any]:
    # pydicom's MultiValue is a MutableSequence; PersonName and strings are single values
    if isinstance(value, (list, tuple, MutableSequence)):
        return list(value)
    return [value]


def _empty(value: Any) -> bool:
    return (
        value is None
        or value == ""
        or (not isinstance(value, (str, bytes)) and _values(value) == [])
    )


def _number(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _normalised(value: Any) -> str:
    f = _number(value)
    if f is None:
        return str(value)
    return str(int(f)) if f == int(f) else repr(f)


def _shown(keyword: str, value: Any) -> Any:
    if keyword not in SAFE_KEYWORDS or value is None:
        return None
    vals = [str(v) for v in _values(value)]
    return vals if len(vals) != 1 else vals[0]


def evaluate(keyword: str, rule: Any, facts: SeriesFacts) -> ConditionResult:
    """Evaluate one condition against one series; never raises for data (rules are pre-checked)."""
    if rule is None or rule == "" or rule == []:
        return ConditionResult(keyword, "ignored", rule, True, "empty condition is a wildcard")
    if keyword == "ImageOrientationPatient" and isinstance(rule, str):
        label = facts.orientation
        if label is None:
            return ConditionResult(keyword, "orientation", rule, False, "missing")
        ok = re.fullmatch(rule, label, re.IGNORECASE) is not None
        return ConditionResult(keyword, "orientation", rule, ok, f"orientation is {label}", label)
    value = facts.get(keyword)
    shown = _shown(keyword, value)
    if _empty(value):
        kind = _kind(rule, numeric=False)
        return ConditionResult(keyword, kind, rule, False, "missing")
    numeric = dictionary_VR(keyword) in NUMERIC_VRS
    kind = _kind(rule, numeric=numeric)
    values = _values(value)
    if kind == "regex":
        ok = any(re.search(rule, str(v), re.IGNORECASE) for v in values)
        return ConditionResult(
            keyword, kind, rule, ok, "pattern found" if ok else "pattern not found", shown
        )
    if kind == "regex-numeric":
        ok = all(re.fullmatch(rule, str(v)) or re.fullmatch(rule, _normalised(v)) for v in values)
        return ConditionResult(
            keyword, kind, rule, bool(ok), "full match" if ok else "no full match", shown
        )
    if kind == "all-of":
        have = {str(v).strip().casefold() for v in values}
        missing = [t for t in rule if not t.startswith("!") and t.casefold() not in have]
        present = [t for t in rule if t.startswith("!") and t[1:].casefold() in have]
        ok = not missing and not present
        reason = (
            "all terms present"
            if ok
            else "; ".join(
                ([f"absent: {', '.join(missing)}"] if missing else [])
                + ([f"excluded present: {', '.join(present)}"] if present else [])
            )
        )
        return ConditionResult(keyword, kind, rule, ok, reason, shown)
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return ConditionResult(keyword, kind, rule, False, "value is not numeric", shown)
    nums = [n for n in numbers if n is not None]
    if kind == "equals":
        ok = all(math.isclose(n, float(rule), rel_tol=1e-9, abs_tol=1e-9) for n in nums)
        return ConditionResult(keyword, kind, rule, ok, "equal" if ok else "not equal", shown)
    if kind == "range":
        ok = all(rule[0] <= n <= rule[1] for n in nums)
        return ConditionResult(keyword, kind, rule, ok, "in range" if ok else "out of range", shown)
    op = OPERATORS[rule[1]]
    ok = all(op(n, float(rule[0])) for n in nums)
    return ConditionResult(
        keyword, "relational", rule, ok, f"value {rule[1]} {rule[0]}: {ok}".lower(), shown
    )


def _kind(rule: Any, *, numeric: bool) -> str:
    if isinstance(rule, str):
        return "regex-numeric" if numeric else "regex"
    if isinstance(rule, (int, float)):
        return "equals"
    if all(isinstance(v, str) for v in rule):
        return "all-of"
    return "relational" if isinstance(rule[1], str) else "range"


@dataclass
class SelectionOutcome:
    """Selected series per selection name plus the per-series trace (an S3 document)."""

    selected: dict[str, list[int]] = field(default_factory=dict)  #: name -> series indexes
    trace: list[dict[str, Any]] = field(default_factory=list)


def select(rules: Rules, series: Sequence[SeriesFacts]) -> SelectionOutcome:
    """Apply ``rules`` to ``series`` (already in deterministic order) and trace every condition."""
    outcome = SelectionOutcome()
    traces: dict[int, dict[str, Any]] = {
        s.index: {
            "series_index": s.index,
            "series_instance_uid": s.series_instance_uid,
            "instances": s.instance_count,
            "orientation": s.orientation,
            "selections": {},
        }
        for s in series
    }
    if rules.select_all:
        outcome.selected[""] = [s.index for s in series]
        for s in series:
            traces[s.index]["selections"][""] = {
                "matched": True,
                "reason": "no rules: every series is selected",
            }
        outcome.trace = list(traces.values())
        return outcome
    for sel in rules.selections:
        matches: list[SeriesFacts] = []
        for s in series:
            if not sel.conditions:
                traces[s.index]["selections"][sel.name] = {
                    "matched": False,
                    "reason": "selection has no conditions",
                }
                continue
            results = [evaluate(k, v, s) for k, v in sel.conditions.items()]
            ok = all(r.matched for r in results)
            failed = [r.keyword for r in results if not r.matched]
            traces[s.index]["selections"][sel.name] = {
                "matched": ok,
                "reason": "all conditions matched" if ok else f"failed: {', '.join(failed)}",
                "conditions": [r.as_dict() for r in results],
            }
            if ok:
                matches.append(s)
        if not sel.all_matched:
            chosen = matches[:1]
            for s in matches[1:]:
                traces[s.index]["selections"][sel.name]["selected"] = False
                traces[s.index]["selections"][sel.name]["reason"] = (
                    "matched, but an earlier series was selected (first match)"
                )
        else:
            chosen = (
                sorted(matches, key=lambda s: -s.instance_count)
                if sel.sort_by_sop_instance_count
                else matches
            )
        for s in chosen:
            traces[s.index]["selections"][sel.name]["selected"] = True
        outcome.selected[sel.name] = [s.index for s in chosen]
    outcome.trace = list(traces.values())
    return outcome
