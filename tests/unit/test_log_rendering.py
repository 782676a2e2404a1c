"""Readable logs in a terminal: render_line, TextFormatter and ``radflow logs [--json]``."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from radflow.sdk.logging import TextFormatter, render_line

SRC = Path(__file__).resolve().parents[2] / "src"

LINE = json.dumps(
    {
        "time": "2026-12-04T18:02:11.123+00:00",
        "severity": "INFO",
        "service": "dicom-adapter",
        "logger": "radflow.adapter.handlers",
        "message": "stored 12 instances",
        "assoc": 3,
    }
)


def _local(iso: str) -> str:
    return _dt.datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


def test_a_json_line_becomes_time_level_service_message_and_fields() -> None:
    assert render_line(LINE) == (
        f"{_local('2026-12-04T18:02:11.123+00:00')} INFO  dicom-adapter  "
        "stored 12 instances (assoc=3)"
    )


def test_exceptions_follow_and_other_lines_pass_unchanged() -> None:
    doc = {"time": "2026-12-04T18:02:11+00:00", "severity": "ERROR", "service": "engine"}
    doc |= {"message": "boom", "exception": "Traceback ...\nValueError: x"}
    assert render_line(json.dumps(doc)).splitlines()[1:] == ["Traceback ...", "ValueError: x"]
    for raw in ("plain output of a child", "[1, 2]", '{"no": "message"}', ""):
        assert render_line(raw) == raw


def test_text_formatter_renders_what_the_json_formatter_writes() -> None:
    record = logging.LogRecord("radflow.x", logging.WARNING, __file__, 1, "took %d s", (3,), None)
    record.stage = "seg-writer"
    assert (
        TextFormatter("engine")
        .format(record)
        .endswith(" WARNING engine  took 3 s (stage=seg-writer)")
    )


def _radflow_logs(state: Path, *extra: str) -> str:
    """``radflow logs dicom-adapter`` with its stdout on a pseudo-terminal, as a user sees it."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "radflow.cli.main", "--state-dir", str(state), "logs"]
    proc = subprocess.Popen(
        [*cmd, "dicom-adapter", *extra], stdout=terminal, stderr=subprocess.PIPE, env=env
    )
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return out.decode().replace("\r\n", "\n")


def test_radflow_logs_is_readable_on_a_terminal_and_raw_with_json(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "dicom-adapter.log").write_text(LINE + "\nnot json\n")
    assert _radflow_logs(tmp_path).splitlines() == [render_line(LINE), "not json"]
    assert _radflow_logs(tmp_path, "--json").splitlines() == [LINE, "not json"]
