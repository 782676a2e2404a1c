"""Trigger filters with Knative MT-broker semantics (knative-contracts.md §2), pure.

Two dialects exist on a Trigger:

* legacy ``spec.filter.attributes`` (a map, ANDed): core attributes are always "found"
  (``""`` when unset), extensions only when present; a ``""`` value matches an attribute that
  is present *and non-empty*; anything else is an exact, case-sensitive comparison.
* ``spec.filters`` (Subscriptions API): a list of entries, ANDed, each with exactly one of
  ``exact``/``prefix``/``suffix``/``all``/``any``/``not``/``cesql``. ``filters`` wins over
  ``filter`` when both are set. An ``exact``/``prefix``/``suffix`` entry with an empty key or
  value anywhere is not materialised at all (the whole entry matches), as MT's
  ``materializeSubscriptionsAPIFilter`` drops filters its constructors refuse. Results are
  three-valued (pass/fail/no filter) so that ``not`` of an empty filter still passes, as in
  eventing's ``pkg/eventfilter``.

The compiled filters evaluate a plain attribute mapping, so this module knows nothing of
HTTP or the CloudEvents SDK. Validation errors are :class:`ConfigError` naming the field path.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from radflow.sdk.errors import ConfigError

#: Knative's attribute-name rule for filters (stricter than CloudEvents').
ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9]*$")

#: Core context attributes the MT legacy filter always "finds" (``""`` when unset).
CORE_ATTRIBUTES = frozenset(
    {
        "specversion",
        "type",
        "source",
        "subject",
        "id",
        "time",
        "dataschema",
        "schemaurl",
        "datacontenttype",
        "datamediatype",
        "datacontentencoding",
    }
)

DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")


class Result(enum.Enum):
    """Three-valued filter outcome; only FAIL blocks a delivery."""

    PASS = "pass"
    FAIL = "fail"
    NO_FILTER = "nofilter"

    def and_(self, other: Result) -> Result:
        if self is Result.NO_FILTER:
            return other
        if other is Result.NO_FILTER:
            return self
        return Result.PASS if self is Result.PASS and other is Result.PASS else Result.FAIL

    def or_(self, other: Result) -> Result:
        if self is Result.NO_FILTER:
            return other
        if other is Result.NO_FILTER:
            return self
        return Result.PASS if Result.PASS in (self, other) else Result.FAIL


class Filter(Protocol):
    def evaluate(self, attrs: Mapping[str, Any]) -> Result: ...


def _text(value: Any) -> str:
    """Go's ``fmt.Sprintf("%v")`` for the values an event attribute can hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class MatchAll:
    """No filter at all: every event matches."""

    def evaluate(self, attrs: Mapping[str, Any]) -> Result:
        return Result.NO_FILTER


@dataclass(frozen=True)
class LegacyAttributes:
    """``spec.filter.attributes`` with MT semantics."""

    attributes: tuple[tuple[str, str], ...]

    def evaluate(self, attrs: Mapping[str, Any]) -> Result:
        for name, wanted in self.attributes:
            if name in attrs and attrs[name] is not None:
                value = _text(attrs[name])
            elif name in CORE_ATTRIBUTES:
                value = ""
            else:
                return Result.FAIL
            if wanted == "":
                if value == "":
                    return Result.FAIL
            elif value != wanted:
                return Result.FAIL
        return Result.PASS


@dataclass(frozen=True)
class StringMatch:
    """``exact`` / ``prefix`` / ``suffix`` on one attribute; a missing attribute fails."""

    kind: str
    name: str
    value: str

    def evaluate(self, attrs: Mapping[str, Any]) -> Result:
        raw = attrs.get(self.name)
        if raw is None:
            return Result.FAIL
        text = _text(raw)
        if self.kind == "exact":
            ok = text == self.value
        elif self.kind == "prefix":
            ok = text.startswith(self.value)
        else:
            ok = text.endswith(self.value)
        return Result.PASS if ok else Result.FAIL


@dataclass(frozen=True)
class AllOf:
    filters: tuple[Filter, ...]

    def evaluate(self, attrs: Mapping[str, Any]) -> Result:
        result = Result.NO_FILTER
        for f in self.filters:
            result = result.and_(f.evaluate(attrs))
            if result is Result.FAIL:
                return result
        return result


@dataclass(frozen=True)
class AnyOf:
    filters: tuple[Filter, ...]

    def evaluate(self, attrs: Mapping[str, Any]) -> Result:
        result = Result.NO_FILTER
        for f in self.filters:
            result = result.or_(f.evaluate(attrs))
            if result is Result.PASS:
                return result
        return result


@dataclass(frozen=True)
class Not:
    inner: Filter

    def evaluate(self, attrs: Mapping[str, Any]) -> Result:
        result = self.inner.evaluate(attrs)
        if result is Result.NO_FILTER:
            return result
        return Result.FAIL if result is Result.PASS else Result.PASS


def matches(f: Filter, attrs: Mapping[str, Any]) -> bool:
    """Whether an event with ``attrs`` is delivered: only an explicit FAIL blocks it."""
    return f.evaluate(attrs) is not Result.FAIL


# --------------------------------------------------------------------------- compilation


def compile_trigger_filter(spec: Mapping[str, Any], where: str) -> Filter:
    """The filter of a Trigger ``spec``; ``where`` (``ns/name``) prefixes error messages."""
    filters = spec.get("filters")
    if filters:
        if not isinstance(filters, list):
            raise ConfigError(f"Trigger {where}: spec.filters must be a list of filter entries")
        return AllOf(
            tuple(_compile_entry(e, f"spec.filters[{i}]", where) for i, e in enumerate(filters))
        )
    legacy = spec.get("filter")
    if legacy is None:
        return MatchAll()
    if not isinstance(legacy, Mapping):
        raise ConfigError(f"Trigger {where}: spec.filter must be a mapping with 'attributes'")
    attributes = legacy.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise ConfigError(
            f"Trigger {where}: spec.filter.attributes must be a mapping of attribute -> value"
        )
    pairs = []
    for name, value in attributes.items():
        _check_name(str(name), f"spec.filter.attributes.{name}", where)
        pairs.append((str(name), "" if value is None else _text(value)))
    return LegacyAttributes(tuple(sorted(pairs)))


def _check_name(name: str, field: str, where: str) -> None:
    if not ATTRIBUTE_NAME.match(name):
        raise ConfigError(
            f"Trigger {where}: {field}: attribute name {name!r} "
            f"must match {ATTRIBUTE_NAME.pattern} "
            "(Knative's filter rule: lower-case letters and digits, starting with a letter)"
        )


def _compile_entry(entry: Any, field: str, where: str) -> Filter:
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"Trigger {where}: {field} must be a mapping with exactly one dialect {DIALECTS}"
        )
    unknown = [k for k in entry if k not in DIALECTS]
    if unknown:
        raise ConfigError(
            f"Trigger {where}: {field}: unknown filter dialect(s) {unknown}; use one of {DIALECTS}"
        )
    present = [k for k in DIALECTS if k in entry]
    if len(present) != 1:
        raise ConfigError(
            f"Trigger {where}: {field} must set exactly one dialect, found {present or 'none'} "
            "(Knative rejects several dialects in one entry; use separate entries, which are ANDed)"
        )
    dialect = present[0]
    body = entry[dialect]
    if dialect == "cesql":
        raise ConfigError(
            f"Trigger {where}: {field}.cesql: cesql is not supported by the radflow engine; "
            "express the filter with exact/prefix/suffix/all/any/not"
        )
    if dialect in ("exact", "prefix", "suffix"):
        if not isinstance(body, Mapping):
            raise ConfigError(
                f"Trigger {where}: {field}.{dialect} must be a mapping of attribute -> value"
            )
        pairs = [(str(name), "" if value is None else _text(value)) for name, value in body.items()]
        if any(name == "" or text == "" for name, text in pairs):
            # MT does not materialise an entry with an empty key or value: the whole entry matches
            return MatchAll()
        parts: list[Filter] = []
        for name, text in pairs:
            _check_name(name, f"{field}.{dialect}.{name}", where)
            parts.append(StringMatch(dialect, name, text))
        if len(parts) == 1:
            return parts[0]
        return AllOf(tuple(parts))
    if dialect == "not":
        return Not(_compile_entry(body, f"{field}.not", where))
    if not isinstance(body, list):
        raise ConfigError(f"Trigger {where}: {field}.{dialect} must be a list of filter entries")
    inner = tuple(_compile_entry(e, f"{field}.{dialect}[{i}]", where) for i, e in enumerate(body))
    return AllOf(inner) if dialect == "all" else AnyOf(inner)
