"""DICOM TLS on the SCP: server certificate, client certificate allow-list (openssl-made PKI)."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from adapter_data import config_yaml, make_study

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> dict[str, Path]:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=radflow-test-ca",
        cwd=d,
    )
    for name in ("server", "modality", "intruder"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        ext = d / f"{name}.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n"
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            ext.name,
            cwd=d,
        )
    return {p.stem + p.suffix: p for p in d.iterdir()}


def _fingerprint(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def _client(d: Path, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(d / "ca.pem"))
    if name:
        ctx.load_cert_chain(str(d / f"{name}.pem"), str(d / f"{name}.key"))
    return ctx


@pytest.mark.slow
def test_tls_client_certificate_allow_list(adapter_factory, sink, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    tls = f"""    tls:
      certificate: {pki / "server.pem"}
      private-key: {pki / "server.key"}
      ca-certificate: {pki / "ca.pem"}
      allowed-client-certificates: ["{_fingerprint(pki / "modality.pem")}"]
"""
    yaml_text = config_yaml(104).replace(
        "    max-associations: 8\n", "    max-associations: 8\n" + tls
    )
    adapter = adapter_factory(yaml_text=yaml_text)
    port = adapter.dicom_port

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ok = ae.associate(
        "127.0.0.1", port, ae_title="RADFLOW", tls_args=(_client(pki, "modality"), "127.0.0.1")
    )
    assert ok.is_established
    study = make_study(tmp_path / "in", series=1, per_series=2)
    assert [int(ok.send_c_store(f).Status) for f in study.files] == [0, 0]
    ok.release()
    assert len(sink.wait_for(1)) == 1

    # signed by the same CA but not on the allow-list: association rejected
    other = ae.associate(
        "127.0.0.1", port, ae_title="RADFLOW", tls_args=(_client(pki, "intruder"), "127.0.0.1")
    )
    assert other.is_rejected
    # no client certificate: the TLS handshake itself fails
    bare = ae.associate(
        "127.0.0.1", port, ae_title="RADFLOW", tls_args=(_client(pki, None), "127.0.0.1")
    )
    assert not bare.is_established
    # plain TCP to the TLS port gets nowhere
    plain = ae.associate("127.0.0.1", port, ae_title="RADFLOW")
    assert not plain.is_established
