"""The one place the bring-your-own operator touches the operating system: run a process.

Kept apart from ``logic.py`` (which stays pure) because it inherits the function's environment
and streams the operator's output into the stage log.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger("radflow.operator")

#: lines of operator output kept in the stage log (Clara kept container logs the same way)
MAX_LOG_LINES = 2000


def execute(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[int, float]:
    """Run ``argv`` to completion; returns (exit status, seconds). Output goes to the stage log."""
    start = time.monotonic()
    full_env = {**os.environ, **env}
    try:
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError:
        logger.error("operator command not found: %s", argv[0])
        return 127, time.monotonic() - start
    lines = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        lines += 1
        if lines <= MAX_LOG_LINES:
            logger.info(line.rstrip("\n"))
    code = proc.wait()
    if lines > MAX_LOG_LINES:
        logger.info("operator output truncated: %d more lines", lines - MAX_LOG_LINES)
    return code, time.monotonic() - start
