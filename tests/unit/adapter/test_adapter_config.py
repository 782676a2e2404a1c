"""Clara YAML parsing, validation messages and Clara REST bodies (pure)."""

from __future__ import annotations

import pytest

from radflow.adapter import api
from radflow.adapter.config import (
    clara_ae_from_rest,
    clara_ae_to_rest,
    destination_from_rest,
    parse_yaml_text,
    source_from_rest,
)
from radflow.sdk.errors import ConfigError, InvalidInput

CLARA_YAML = """
dicom:
  scp:
    port: 104
    ae-titles:
      - ae-title: clarascp
        overwrite-same-instance: true
        ignored-sop-classes: ["1.2.840.10008.5.1.4.1.1.7"]
        processor-settings:
          timeout: 5
          groupBy: "0020,000E"
          pipeline-lung: 3c4ef6c9
    max-associations: 2
    verification:
      enabled: true
      transfer-syntaxes: ["1.2.840.10008.1.2"]
    log-dimse-datasets: false
    reject-unknown-sources: true
    sources:
      - host-ip: 10.20.100.200
        ae-title: PACS
      - host-ip: 10.20.100.201
        ae-title: PACS
  scu:
    ae-title: ClaraSCU
    max-associations: 2
    destinations:
      - name: MYPACS
        host-ip: 10.20.3.4
        port: 104
        ae-title: MYPACS
pipeline-mappings:
  - name: liver
    clara-ae-title: clarascp
    pipeline-id: 8a8fd0f2
"""


def test_clara_yaml_is_read_as_documented():
    cfg = parse_yaml_text(CLARA_YAML)
    ae = cfg.ae("clarascp")
    assert (
        ae is not None
        and ae.timeout == 5
        and ae.overwrite_same_instance
        and ae.group_by == "0020,000E"
    )
    assert ae.ignored_sop_classes == ("1.2.840.10008.5.1.4.1.1.7",)
    assert cfg.pipelines_for("clarascp") == ["8a8fd0f2", "3c4ef6c9"]
    assert (
        cfg.max_associations == 2 and cfg.reject_unknown_sources and cfg.scu_ae_title == "ClaraSCU"
    )
    assert [s.name for s in cfg.sources] == ["PACS", "PACS-2"]
    assert cfg.source_allowed("PACS", "10.20.100.201") and not cfg.source_allowed(
        "PACS", "10.20.100.9"
    )
    assert cfg.destinations[0].port == 104
    doc = cfg.effective_document()
    assert doc["destinations"] == [
        {"name": "MYPACS", "ae-title": "MYPACS", "host-ip": "10.20.3.4", "port": 104}
    ]
    assert cfg.with_document(doc) == cfg


@pytest.mark.parametrize(
    "bad,needle",
    [
        (CLARA_YAML.replace("port: 104\n    ae", "port: 0\n    ae"), "port"),
        (CLARA_YAML.replace("ae-title: clarascp\n", "ae-title: THIS-IS-TOO-LONG-AE\n"), "ae-title"),
        (CLARA_YAML.replace("10.20.3.4", "not a host"), "host-ip"),
        (CLARA_YAML.replace('groupBy: "0020,000E"', 'groupBy: "StudyUID"'), "group-by"),
        (
            CLARA_YAML + "  - name: liver\n    clara-ae-title: clarascp\n    pipeline-id: x\n",
            "duplicate",
        ),
        ("dicom: [1, 2", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_field(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_yaml_text(bad, origin="adapter.yaml")


def test_rest_bodies_round_trip_and_reject_bad_input():
    ae, mappings = clara_ae_from_rest(
        {
            "name": "brain-tumor",
            "aeTitle": "BrainTumorModel",
            "overwriteSameInstance": True,
            "ignoredSopClasses": ["1.2.840.10008.5.1.4.1.1.7"],
            "processorSettings": {
                "timeout": 5,
                "priority": "higher",
                "pipeline-brain-tumor": "7b9cda79",
            },
        }
    )
    assert ae.ae_title == "BrainTumorModel" and [m.pipeline_id for m in mappings] == ["7b9cda79"]
    cfg = parse_yaml_text("")
    cfg2, entity = api.add_clara_ae(
        cfg, clara_ae_to_rest(ae, cfg.model_copy(update={"pipeline_mappings": tuple(mappings)}))
    )
    assert entity["processorSettings"]["pipeline-brain-tumor"] == "7b9cda79"
    with pytest.raises(InvalidInput, match="already"):
        api.add_clara_ae(cfg2, {"name": "x", "aeTitle": "BrainTumorModel"})
    assert source_from_rest({"hostIp": "1.2.3.4", "aeTitle": "Orthanc"}).name == "Orthanc"
    with pytest.raises(InvalidInput, match="port"):
        destination_from_rest({"name": "p", "hostIp": "1.2.3.4", "aeTitle": "P", "port": True})
    with pytest.raises(InvalidInput, match="JSON object"):
        source_from_rest("text")
    with pytest.raises(api.NotFoundError):
        api.delete_source(cfg, "nobody")


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (
            CLARA_YAML.replace("pipeline-mappings:", "pipeline-mapping:"),
            r"^adapter\.yaml: pipeline-mapping: unknown key "
            r"\(known here: dicom, pipeline-mappings,",
        ),
        (
            CLARA_YAML.replace("reject-unknown-sources:", "reject-unknown-source:"),
            r"^adapter\.yaml: dicom\.scp\.reject-unknown-source: unknown key",
        ),
        (
            CLARA_YAML.replace(
                "    port: 104\n    ae-titles:", "    port: 104\n    ae-titel: X\n    ae-titles:"
            ),
            r"^adapter\.yaml: dicom\.scp\.ae-titel: unknown key",
        ),
        (
            CLARA_YAML.replace("  scu:\n", "  scu:\n    destination: []\n"),
            r"^adapter\.yaml: dicom\.scu\.destination: unknown key",
        ),
        (
            CLARA_YAML.replace("  scp:\n", "  spc: {}\n  scp:\n"),
            r"^adapter\.yaml: dicom\.spc: unknown key",
        ),
        (
            CLARA_YAML.replace("      enabled: true", "      enable: true"),
            r"^adapter\.yaml: dicom\.scp\.verification\.enable: unknown key",
        ),
        (
            CLARA_YAML.replace("          timeout: 5", "          timout: 5"),
            r"^adapter\.yaml: dicom\.scp\.ae-titles\[0\]\.processor-settings\.timout: unknown",
        ),
        (
            CLARA_YAML.replace("        overwrite-same-instance:", "        overwrite-same:"),
            r"^adapter\.yaml: dicom\.scp\.ae-titles\[0\]\.overwrite-same: unknown key$",
        ),
        (
            CLARA_YAML.replace("        port: 104\n", "        port: 104\n        prot: 1\n"),
            r"^adapter\.yaml: dicom\.scu\.destinations\[0\]\.prot: unknown key$",
        ),
        (
            CLARA_YAML.replace("    pipeline-id: 8a8fd0f2", "    pipeline: 8a8fd0f2"),
            r"^adapter\.yaml: pipeline-mappings\[0\]\.pipeline-id: Field required; "
            r"pipeline-mappings\[0\]\.pipeline: unknown key$",
        ),
        (
            CLARA_YAML.replace("    port: 104\n    ae-titles:", "    port: eleven\n    ae-titles:"),
            r"^adapter\.yaml: dicom\.scp\.port: Input should be a valid integer",
        ),
    ],
)
def test_unknown_keys_are_errors_naming_the_yaml_key_path(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_yaml_text(bad, origin="adapter.yaml")


def test_engine_section_and_clara_keys_radflow_does_not_use_are_accepted():
    text = CLARA_YAML + "radflow:\n  state-dir: .radflow\n  scale-to-zero-after: 30\n"
    cfg = parse_yaml_text(text.replace("enabled: true", "enabled: false"))
    assert cfg.ae("clarascp") is not None and cfg.verification_enabled is False
