"""The overlay rule (adapter/overlay.py): the file is the base, REST changes apply per entry,
and the file's later edit of an entry changed over REST wins with a note."""

from __future__ import annotations

import pytest

from radflow.adapter import overlay
from radflow.adapter.config import parse_yaml_text
from radflow.sdk.errors import ConfigError


def _config(*titles: tuple[str, float]) -> object:
    aes = ", ".join(f"{{ae-title: {t}, timeout: {timeout}}}" for t, timeout in titles)
    return parse_yaml_text(f"dicom:\n  scp:\n    ae-titles: [{aes}]\n")


def _titles(config: object) -> dict[str, float]:
    return {a.ae_title: a.timeout for a in config.ae_titles}  # type: ignore[attr-defined]


def test_rest_changes_apply_on_top_of_an_edited_file() -> None:
    file = _config(("A", 0), ("B", 0))
    rest = overlay.overlay_of(file, _config(("A", 0), ("C", 1)))  # B deleted, C added
    assert overlay.changed_names(rest) == ["ae-titles/B", "ae-titles/C"]
    edited = _config(("A", 9), ("B", 0), ("D", 0))  # A changed, D added, B as it was
    effective, kept, notes = overlay.apply(edited, rest)
    assert _titles(effective) == {"A": 9, "D": 0, "C": 1}
    assert (kept, notes) == (rest, [])


def test_the_files_later_edit_of_a_rest_changed_entry_wins_with_a_note() -> None:
    file = _config(("A", 0), ("B", 0))
    rest = overlay.overlay_of(file, _config(("A", 0)))  # B deleted over REST
    effective, kept, notes = overlay.apply(_config(("A", 0), ("B", 4)), rest)
    assert _titles(effective) == {"A": 0, "B": 4}
    assert overlay.changed_names(kept) == []
    assert notes == [
        "ae-titles 'B': changed in the configuration file after a REST change; "
        "the file's version applies and the REST change is dropped"
    ]


def test_an_unreadable_overlay_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="config/dicom-adapter.rest.json: not a radflow"):
        overlay.apply(_config(("A", 0)), {"changes": []})
