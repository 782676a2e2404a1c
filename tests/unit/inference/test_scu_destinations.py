"""Destinations from the adapter configuration (both Clara layouts) and scu-export's variables."""

from __future__ import annotations

import pytest

from radflow.functions.scu_export.destinations import (
    Destination,
    parse_destinations,
    resolve,
    scu_ae_title,
)
from radflow.functions.scu_export.settings import ScuExportSettings
from radflow.sdk.errors import InvalidInput

PACS = {"name": "MYPACS", "ae-title": "ORTHANC", "host-ip": "127.0.0.1", "port": 4242}
ARCHIVE = {"name": "ARCHIVE", "ae-title": "DCM4CHEE", "host-ip": "10.0.0.5", "port": "11112"}


def test_top_level_and_nested_destinations_are_merged_top_level_first() -> None:
    config = {
        "dicom": {
            "scu": {"ae-title": "RADFLOWSCU", "destinations": [ARCHIVE, {**PACS, "port": 1}]}
        },
        "destinations": [PACS],
    }
    found = parse_destinations(config)
    assert found["MYPACS"] == Destination("MYPACS", "ORTHANC", "127.0.0.1", 4242)
    assert found["ARCHIVE"].port == 11112
    assert scu_ae_title(config) == "RADFLOWSCU" and scu_ae_title({}) == ""


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "X", "ae-title": "X", "host-ip": "h"}, "lacks field 'port'"),
        ({**PACS, "port": "http"}, "not an integer"),
        ({**PACS, "port": 70000}, "port must be"),
        ({**PACS, "ae-title": "A" * 17}, "ae-title 1-16"),
        ("MYPACS", "not an object"),
    ],
)
def test_malformed_destinations_name_the_entry_and_field(entry: object, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        parse_destinations({"destinations": [entry]})


def test_resolve_is_exact_then_case_insensitive_and_deduplicates() -> None:
    known = parse_destinations({"destinations": [PACS, ARCHIVE]})
    assert [d.name for d in resolve(["mypacs", "ARCHIVE", "MYPACS"], known)] == [
        "MYPACS",
        "ARCHIVE",
    ]
    with pytest.raises(InvalidInput, match="'OTHER'.*defined: ARCHIVE, MYPACS"):
        resolve(["OTHER"], known)


def test_settings_need_destinations_and_check_bounds() -> None:
    s = ScuExportSettings.from_variables({"DESTINATIONS": " A , B ,", "SCU_INPUTS": "seg"})
    assert s.destinations == ("A", "B") and s.inputs == ("seg",) and s.attempts == 4
    with pytest.raises(InvalidInput, match="DESTINATIONS is empty"):
        ScuExportSettings.from_variables({"DESTINATIONS": ""})
    with pytest.raises(InvalidInput, match="SCU_FAILURE_THRESHOLD"):
        ScuExportSettings.from_variables({"DESTINATIONS": "A", "SCU_FAILURE_THRESHOLD": "1.5"})
