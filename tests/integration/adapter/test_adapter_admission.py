"""Association admission: C-ECHO, called/calling AE and host checks, with the right reject
reason."""

from __future__ import annotations

import os
import subprocess

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from adapter_data import wait_counter


def _associate(port: int, called: str, calling: str):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def _reject_reason(assoc) -> tuple[int, int, int]:
    assert assoc.is_rejected, "association should have been rejected"
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def test_echoscu_dcmtk_and_pynetdicom(adapter_factory):
    adapter = adapter_factory(reject_unknown=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    res = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "BRAIN", "127.0.0.1", str(adapter.dicom_port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assoc = _associate(adapter.dicom_port, "RADFLOW", "PYSCU")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()


def test_wrong_called_ae_rejected_reason_7(adapter_factory):
    adapter = adapter_factory(reject_unknown=True)
    assert _reject_reason(_associate(adapter.dicom_port, "NOTOURS", "PYSCU")) == (1, 1, 7)
    env = {**os.environ, "TCP_NODELAY": "1"}
    res = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "NOTOURS", "127.0.0.1", str(adapter.dicom_port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert res.returncode != 0
    assert "Called AE Title Not Recognized" in res.stderr + res.stdout


def test_unknown_calling_ae_rejected_reason_3(adapter_factory):
    adapter = adapter_factory(reject_unknown=True)
    assert _reject_reason(_associate(adapter.dicom_port, "RADFLOW", "STRANGER")) == (1, 1, 3)
    assert wait_counter(adapter, "rejected_associations", 1) == 1


def test_known_ae_from_unlisted_host_rejected(adapter_factory):
    adapter = adapter_factory(reject_unknown=True)
    # the same calling AE is only allowed from 127.0.0.1; the admission rule sees the peer address
    assert adapter.handlers.admission("RADFLOW", "PYSCU", "127.0.0.1") is None
    assert adapter.handlers.admission("RADFLOW", "PYSCU", "10.1.2.3") == (1, 3)
    assert adapter.handlers.admission("RADFLOW", "PYSCU", "::ffff:127.0.0.1") is None


def test_unknown_sources_accepted_when_not_rejecting(adapter_factory):
    adapter = adapter_factory(reject_unknown=False)
    assoc = _associate(adapter.dicom_port, "RADFLOW", "STRANGER")
    assert assoc.is_established
    assoc.release()


def test_max_associations_rejects_with_local_limit(adapter_factory):
    adapter = adapter_factory()
    held = [_associate(adapter.dicom_port, "RADFLOW", "PYSCU") for _ in range(8)]
    assert all(a.is_established for a in held)
    extra = _associate(adapter.dicom_port, "RADFLOW", "PYSCU")
    assert _reject_reason(extra) == (2, 3, 2)
    for a in held:
        a.release()


def test_verification_disabled_answers_sop_class_not_supported(adapter_factory, tmp_path):
    from adapter_data import config_yaml

    text = config_yaml(104).replace(
        "    max-associations: 8\n",
        "    max-associations: 8\n    verification:\n      enabled: false\n",
    )
    adapter = adapter_factory(yaml_text=text)
    assoc = _associate(adapter.dicom_port, "RADFLOW", "PYSCU")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0x0122
    assoc.release()
