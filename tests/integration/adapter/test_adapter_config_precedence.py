"""The configuration file is the base, REST changes an overlay (docs/adapter.md, "Precedence"):
file edits apply at a restart and while running, REST changes survive restarts, and where
both changed one entry the file's later edit wins and the adapter says so."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from radflow.adapter.app import Adapter
from radflow.adapter.config import load_yaml
from radflow.adapter.settings import AdapterSettings
from radflow.engine.ports import free_port
from radflow.sdk import http
from radflow.sdk.storage import ObjectStore


def _yaml(port: int, *titles: tuple[str, float]) -> str:
    aes = "\n".join(f"      - {{ae-title: {t}, timeout: {timeout}}}" for t, timeout in titles)
    return (
        f"dicom:\n  scp:\n    port: {port}\n    reject-unknown-sources: false\n"
        f"    ae-titles:\n{aes}\n"
    )


@pytest.fixture
def start(tmp_path: Path, store_settings: Any, sink: Any) -> Iterator[Callable[..., Adapter]]:
    started: list[Adapter] = []

    def make(path: Path, poll: float = 0.2) -> Adapter:
        settings = AdapterSettings(
            spool_dir=tmp_path / f"spool{len(started)}",
            host="127.0.0.1",
            rest_port=free_port(),
            sink=sink.url,
            drop_poll_seconds=0,
            config_poll_seconds=poll,
        )
        adapter = Adapter(settings, load_yaml(path), ObjectStore(store_settings), path).start()
        started.append(adapter)
        return adapter

    yield make
    for a in started:
        a.stop()


def _served(adapter: Adapter) -> dict[str, float]:
    answer = http.get_json(f"http://127.0.0.1:{adapter.rest_port}/api/config/claraaetitle")
    return {e["aeTitle"]: e["processorSettings"]["timeout"] for e in answer}


def _echo(adapter: Adapter, called: str) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", adapter.dicom_port or 0, ae_title=called)
    ok = bool(assoc.is_established)
    if ok:
        assoc.release()
    return ok


def _until(predicate: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _edit(path: Path, text: str) -> None:
    """Rewrite the file so its size or mtime surely differs from the last check."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    while path.stat().st_mtime_ns == before:
        time.sleep(0.01)
        path.write_text(text)


def test_a_file_edit_applies_while_running_and_a_bad_one_is_refused_aloud(
    tmp_path: Path, start: Callable[..., Adapter], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    path = tmp_path / "dicom-adapter.yaml"
    path.write_text(_yaml(port, ("BRAINSEG", 0)))
    adapter = start(path)
    assert not _echo(adapter, "NEWAE")
    _edit(path, _yaml(port, ("BRAINSEG", 0), ("NEWAE", 0)))
    assert _until(lambda: "NEWAE" in _served(adapter)), _served(adapter)
    assert _echo(adapter, "NEWAE")  # the receivers have it too

    caplog.set_level(logging.WARNING)
    _edit(path, _yaml(port, ("BRAINSEG", 0)) + "    typo-key: 1\n")
    assert _until(lambda: adapter.status()["config"]["file_problem"] is not None)
    assert "dicom.scp.typo-key: unknown key" in adapter.status()["config"]["file_problem"]
    assert any("running configuration stays" in r.getMessage() for r in caplog.records)
    assert _echo(adapter, "NEWAE")  # nothing of the bad file applied

    _edit(path, _yaml(free_port(), ("BRAINSEG", 0)))  # a new port needs a restart
    assert _until(lambda: "NEWAE" not in _served(adapter))
    assert any(
        "dicom.scp.port changed; takes effect at the next restart" in r.getMessage()
        for r in caplog.records
    )


def test_rest_changes_survive_a_restart_on_top_of_the_edited_file(
    tmp_path: Path, start: Callable[..., Adapter]
) -> None:
    path = tmp_path / "dicom-adapter.yaml"
    path.write_text(_yaml(free_port(), ("BRAINSEG", 0), ("OLDAE", 0)))
    first = start(path, poll=0)
    base = f"http://127.0.0.1:{first.rest_port}/api/config/claraaetitle"
    http.post_json(base, {"aeTitle": "LUNGSEG"}, timeout=10)
    http.request("DELETE", base + "/OLDAE", timeout=10)
    first.stop()
    # edited while stopped: a new AE title and another timeout for an existing one
    path.write_text(_yaml(free_port(), ("BRAINSEG", 5), ("OLDAE", 0), ("NEWAE", 0)))
    second = start(path, poll=0)
    # OLDAE stays deleted (REST), LUNGSEG stays added (REST, Clara's default timeout 5)
    assert _served(second) == {"BRAINSEG": 5, "NEWAE": 0, "LUNGSEG": 5}
    assert sorted(second.status()["config"]["rest_changes"]) == [
        "ae-titles/LUNGSEG",
        "ae-titles/OLDAE",
    ]


def test_the_file_edited_after_a_rest_change_of_the_same_entry_wins_and_says_so(
    tmp_path: Path, start: Callable[..., Adapter], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dicom-adapter.yaml"
    port = free_port()
    path.write_text(_yaml(port, ("BRAINSEG", 0), ("OLDAE", 0)))
    adapter = start(path)
    http.request("DELETE", f"http://127.0.0.1:{adapter.rest_port}/api/config/claraaetitle/OLDAE")
    assert "OLDAE" not in _served(adapter)
    caplog.set_level(logging.WARNING)
    _edit(path, _yaml(port, ("BRAINSEG", 0), ("OLDAE", 3)))  # the operator wants it, changed
    assert _until(lambda: _served(adapter).get("OLDAE") == 3), _served(adapter)
    note = "ae-titles 'OLDAE': changed in the configuration file after a REST change"
    assert any(note in r.getMessage() for r in caplog.records)
    assert adapter.status()["config"]["notes"][0].startswith(note)
    assert adapter.status()["config"]["rest_changes"] == []
