"""tail_log: last lines, then following appends across truncation (radflow logs -f); names."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from radflow.engine.host import tail_log


def test_last_lines_without_follow(tmp_path: Path) -> None:
    log = tmp_path / "f.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert list(tail_log(log, follow=False, lines=3)) == ["line 7", "line 8", "line 9"]
    with pytest.raises(FileNotFoundError, match="no log yet"):
        list(tail_log(tmp_path / "missing.log", follow=False))


def test_follow_sees_appends_and_survives_truncation(tmp_path: Path) -> None:
    log = tmp_path / "f.log"
    log.write_text("old\n")
    got: list[str] = []
    lines = tail_log(log, follow=True, lines=5, poll_s=0.02)

    def reader() -> None:
        for line in lines:
            got.append(line)
            if line == "after truncate":
                return

    def seen(line: str) -> None:
        """Wait until the follower yielded ``line``: it has read everything before it."""
        deadline = time.monotonic() + 10
        while line not in got:
            assert time.monotonic() < deadline, f"the follower never yielded {line!r}: {got}"
            time.sleep(0.01)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    seen("old")  # at the end of the file, following
    with open(log, "a") as fh:
        fh.write("new 1\nnew ")  # a line and the start of the next one
        fh.flush()
        seen("new 1")
        fh.write("2\n")  # the rest of the line
    seen("new 2")
    log.write_text("after truncate\n")  # shorter than what was read: truncated, read anew
    thread.join(10)
    assert not thread.is_alive()
    assert got == ["old", "new 1", "new 2", "after truncate"]


def test_logs_triton_names_the_one_pipeline_triton_service(tmp_path: Path) -> None:
    """`radflow logs triton` (the name users type) reads `<pipeline>-triton.log`; a name that
    matches no log lists the known ones."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "brain-tumor-segmentation-triton.log").write_text("ready\n")
    (logs / "seaweedfs.log").write_text("s3\n")
    radflow = [sys.executable, "-c", "from radflow.cli.main import main; raise SystemExit(main())"]
    done = subprocess.run(
        [*radflow, "--state-dir", str(tmp_path), "logs", "triton", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ready\n"
    missing = subprocess.run(
        [*radflow, "--state-dir", str(tmp_path), "logs", "nothing"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "brain-tumor-segmentation-triton" in missing.stderr
