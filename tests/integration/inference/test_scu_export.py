"""scu-export against real peers on loopback: a pynetdicom storage SCP and dcmtk's storescp."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scu_peers import RTSTRUCT, SEG, PynetdicomSCP, StoreSCP, dataset_bytes, make_instance

from radflow.functions.scu_export import deps, logic
from radflow.functions.scu_export.destinations import CONFIG_KEY
from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.stage import StageContext
from radflow.sdk.storage import ObjectStore


def _ctx(tmp_path: Path, variables: dict[str, str]) -> StageContext:
    inputs = {"seg": tmp_path / "in" / "seg", "rtstruct": tmp_path / "in" / "rtstruct"}
    for folder in inputs.values():
        folder.mkdir(parents=True, exist_ok=True)
    return StageContext(
        job_id="job-1",
        pipeline="brain-tumor",
        stage="scu-export",
        inputs=inputs,
        outputs={"report": tmp_path / "out" / "report"},
        variables=variables,
        work_dir=tmp_path,
    )


def _files(ctx: StageContext) -> dict[str, Path]:
    """Two SEGs (explicit and implicit VR: two transfer syntaxes) and one RTSTRUCT."""
    out: dict[str, Path] = {}
    for name, folder, cls, implicit in (
        ("a.dcm", "seg", SEG, False),
        ("b.dcm", "seg", SEG, True),
        ("c.dcm", "rtstruct", RTSTRUCT, False),
    ):
        path = ctx.inputs[folder] / name
        out[make_instance(path, cls, 20_000, implicit=implicit, seed=len(out))] = path
    return out


def _config(*dests: tuple[str, str, int], nested: bool = False) -> dict[str, Any]:
    entries = [{"name": n, "ae-title": ae, "host-ip": "127.0.0.1", "port": p} for n, ae, p in dests]
    if nested:
        return {"dicom": {"scu": {"ae-title": "RADFLOWSCU", "destinations": entries}}}
    return {"dicom": {"scu": {"ae-title": "RADFLOWSCU"}}, "destinations": entries}


def _report(ctx: StageContext) -> dict[str, Any]:
    return json.loads((ctx.outputs["report"] / logic.REPORT_FILE).read_text())


def test_sends_every_file_to_a_pynetdicom_scp_content_identical(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    scp = pynetdicom_scp().start()
    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS"})
    files = _files(ctx)
    summary = logic.run(ctx, destinations=_config(("MYPACS", scp.ae_title, scp.port), nested=True))
    assert summary["sent"] == 3 and summary["failed"] == 0 and summary["attempts"] == {"MYPACS": 1}
    assert scp.associations == 1  # one association for all files and both transfer syntaxes
    assert set(scp.received) == set(files)
    for uid, path in files.items():
        assert scp.received[uid] == dataset_bytes(path)
    report = _report(ctx)
    assert {f["sop_instance_uid"] for f in report["destinations"][0]["files"]} == set(files)
    assert all(f["status"] == "0x0000" for f in report["destinations"][0]["files"])
    assert not any(uid in json.dumps(summary) for uid in files)  # UIDs only in the S3 report


def test_sends_to_dcmtk_storescp_byte_identical(tmp_path: Path, dcmtk_storescp: StoreSCP) -> None:
    ctx = _ctx(tmp_path, {"DESTINATIONS": "mypacs"})  # names match case-insensitively
    files = _files(ctx)
    summary = logic.run(
        ctx, destinations=_config(("MYPACS", dcmtk_storescp.ae_title, dcmtk_storescp.port))
    )
    assert summary["sent"] == 3
    received = {p.name.split(".", 1)[1]: p for p in dcmtk_storescp.folder.iterdir()}
    assert set(received) == set(files)
    for uid, path in files.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)


def test_two_destinations_each_get_every_file(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP], dcmtk_storescp: StoreSCP
) -> None:
    scp = pynetdicom_scp().start()
    ctx = _ctx(tmp_path, {"DESTINATIONS": "A, B"})
    files = _files(ctx)
    config = _config(
        ("A", scp.ae_title, scp.port), ("B", dcmtk_storescp.ae_title, dcmtk_storescp.port)
    )
    summary = logic.run(ctx, destinations=config)
    assert summary["destinations"] == 2 and summary["sent"] == 6
    assert set(scp.received) == set(files) and len(list(dcmtk_storescp.folder.iterdir())) == 3


def test_destination_down_then_up_is_retried(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    scp = pynetdicom_scp()
    timer = scp.start_later(1.0)  # nobody listens for the first second
    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS", "SCU_RETRY_DELAY": "0.4", "SCU_ATTEMPTS": "5"})
    files = _files(ctx)
    try:
        summary = logic.run(ctx, destinations=_config(("MYPACS", scp.ae_title, scp.port)))
    finally:
        timer.join()
    assert summary["attempts"]["MYPACS"] >= 2 and summary["sent"] == 3
    assert set(scp.received) == set(files)
    assert "connection refused" in _report(ctx)["destinations"][0]["errors"][0]


def test_destination_still_down_is_unavailable_for_a_later_retry(tmp_path: Path) -> None:
    from radflow.engine.ports import free_port

    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS", "SCU_RETRY_DELAY": "0.05", "SCU_ATTEMPTS": "3"})
    _files(ctx)
    with pytest.raises(Unavailable, match="MYPACS"):
        logic.run(ctx, destinations=_config(("MYPACS", "NOBODY", free_port())))
    report = _report(ctx)["destinations"][0]
    assert report["attempts"] == 3 and {f["result"] for f in report["files"]} == {"pending"}


def test_unknown_destination_name_is_a_clear_invalid_input(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS,NOPACS"})
    _files(ctx)
    with pytest.raises(InvalidInput, match=r"'NOPACS'.*defined: MYPACS"):
        logic.run(ctx, destinations=_config(("MYPACS", "X", 104)))


def test_a_file_the_peer_rejects_fails_the_task_with_per_file_status(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS"})
    files = _files(ctx)
    bad = next(iter(files))
    scp = pynetdicom_scp(reject={bad: 0xA700}).start()
    with pytest.raises(InvalidInput, match=r"MYPACS: 1 of 3 file\(s\) failed \(0xA700\)") as err:
        logic.run(ctx, destinations=_config(("MYPACS", scp.ae_title, scp.port)))
    assert bad not in str(err.value)  # no UIDs in messages (they end up in events and logs)
    by_uid = {f["sop_instance_uid"]: f for f in _report(ctx)["destinations"][0]["files"]}
    assert by_uid[bad]["result"] == "failed" and by_uid[bad]["status"] == "0xA700"
    assert sorted(f["result"] for f in by_uid.values()) == ["failed", "sent", "sent"]
    assert set(scp.received) == set(files) - {bad}


def test_explicit_failure_threshold_tolerates_a_minority_of_failures(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS", "SCU_FAILURE_THRESHOLD": "0.5"})  # Clara's 50 %
    files = _files(ctx)
    scp = pynetdicom_scp(reject={next(iter(files)): 0xC000}).start()
    summary = logic.run(ctx, destinations=_config(("MYPACS", scp.ae_title, scp.port)))
    assert summary["sent"] == 2 and summary["failed"] == 1
    # the engine counts these per destination (radflow_export_failures_total)
    assert summary["failed_by_destination"] == {"MYPACS": 1}


def test_a_non_dicom_file_is_reported_and_fails_the_task(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    scp = pynetdicom_scp().start()
    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS"})
    _files(ctx)
    (ctx.inputs["seg"] / "notes.txt").write_text("not DICOM")
    with pytest.raises(InvalidInput, match="1 unreadable file"):
        logic.run(ctx, destinations=_config(("MYPACS", scp.ae_title, scp.port)))
    assert len(scp.received) == 3
    assert _report(ctx)["unreadable"][0]["file"] == "seg/notes.txt"


def test_nothing_to_send_succeeds_without_an_association(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    scp = pynetdicom_scp().start()
    ctx = _ctx(tmp_path, {"DESTINATIONS": "MYPACS"})
    summary = logic.run(ctx, destinations=_config(("MYPACS", scp.ae_title, scp.port)))
    assert summary["files"] == 0 and scp.associations == 0


@pytest.mark.slow  # the first PUT into a fresh SeaweedFS bucket can take seconds
def test_adapter_config_is_read_from_the_object_store(store: ObjectStore) -> None:
    with pytest.raises(InvalidInput, match=CONFIG_KEY):
        deps.load_adapter_config(store)
    config = _config(("MYPACS", "ORTHANC", 4242))
    store.put_bytes(CONFIG_KEY, json.dumps(config).encode())
    assert deps.load_adapter_config(store) == config


def test_empty_variables_mean_defaults(
    tmp_path: Path, pynetdicom_scp: Callable[..., PynetdicomSCP]
) -> None:
    # the runtime passes every declared variable, unset ones as ""
    scp = pynetdicom_scp().start()
    ctx = _ctx(
        tmp_path,
        {
            "DESTINATIONS": "MYPACS",
            "SCU_ATTEMPTS": "",
            "SCU_FAILURE_THRESHOLD": "",
            "SCU_AE_TITLE": "",
        },
    )
    _files(ctx)
    assert logic.run(ctx, destinations=_config(("MYPACS", scp.ae_title, scp.port)))["sent"] == 3
