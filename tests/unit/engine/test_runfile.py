"""radflow.engine.runfile: which state folder a CLI command uses, from any working folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from radflow.engine import runfile


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)


def test_the_run_file_leads_to_a_live_engine_and_keeps_its_secrets_private(tmp_path: Path) -> None:
    state = tmp_path / "far" / "state"
    state.mkdir(parents=True)
    runfile.write(state, {"pid": os.getpid(), "s3": {"secret_access_key": "k"}})
    assert runfile.run_file() == tmp_path / "run" / "radflow" / "engine.json"
    found = runfile.locate()
    assert found.state_dir == state and found.engine is not None
    assert stat.S_IMODE((state / "engine.json").stat().st_mode) == 0o600
    runfile.remove(state)
    gone = runfile.locate()
    assert gone.engine is None and gone.state_dir == state  # its logs are still found
    assert gone.not_running().startswith("radflow: no engine is running (looked at ")


def test_a_live_engine_in_the_working_folder_wins_over_a_dead_one_the_run_file_names(
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead"
    dead.mkdir()
    runfile.write(dead, {"pid": 2**22 + 12345})  # no such process
    here = tmp_path / ".radflow"
    here.mkdir()
    (here / "engine.json").write_text(json.dumps({"pid": os.getpid()}))
    assert runfile.locate().state_dir == here.resolve()
    # given explicitly, the folder is used as it is, even with a dead engine's file in it
    assert runfile.locate(dead).engine == {"pid": 2**22 + 12345, "state_dir": str(dead)}
