"""How every ``radflow`` command finds the running engine, from any folder.

A running engine writes two files:

- ``<state>/engine.json`` (mode 0600): its pid, control URL, state folder and object store
  (endpoint, bucket, region, keys): what ``radflow jobs`` needs to read the job documents. The
  keys are the engine's own S3 keys; whoever can read the state folder can read the data in it
  anyway.
- the **run file** ``$XDG_RUNTIME_DIR/radflow/engine.json`` (without ``XDG_RUNTIME_DIR``:
  ``$XDG_STATE_HOME/radflow/engine.json``, ``~/.local/state/radflow/engine.json``), which only
  points at the state folder. It stays after a stop, so ``radflow logs`` still finds the logs.

:func:`locate` looks, in order, at ``--state-dir`` when given, the state folder the run file
points at, then ``./.radflow``; a folder whose ``engine.json`` names a live process comes
first (a file left by a killed engine is still returned: the command then says that the
engine does not answer).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "engine.json"
DEFAULT_STATE = Path(".radflow")


def run_file() -> Path:
    """The per-user file that points at the state folder of the engine started last."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "radflow" / STATE_FILE
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "radflow" / STATE_FILE


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def write(state_dir: Path, doc: dict[str, Any]) -> None:
    """Record a started engine: ``doc`` in its state folder, the run file pointing there."""
    _write_private(state_dir / STATE_FILE, {**doc, "state_dir": str(state_dir)})
    with contextlib.suppress(OSError):  # an unwritable home must not stop the engine
        _write_private(run_file(), {"state_dir": str(state_dir), "pid": doc.get("pid")})


def remove(state_dir: Path) -> None:
    """Forget a stopped engine (the run file keeps pointing at its folder, for its logs)."""
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class Located:
    """Where the engine's state is, and the running engine's ``engine.json`` (``None``: none
    runs there)."""

    state_dir: Path
    engine: dict[str, Any] | None
    looked: tuple[Path, ...]

    def not_running(self) -> str:
        """The one line a command prints when it needs a running engine and there is none."""
        where = ", ".join(str(p) for p in self.looked)
        return f"radflow: no engine is running (looked at {where}); start one with `radflow up`"


def locate(state_dir: Path | None = None) -> Located:
    """The engine state folder: ``state_dir`` if given, else the run file's, else
    ``./.radflow``; with the engine's ``engine.json`` when it runs."""
    if state_dir is not None:
        candidates = [state_dir]
    else:
        pointer = _read(run_file())
        candidates = [Path(str(pointer["state_dir"]))] if pointer and "state_dir" in pointer else []
        candidates.append(DEFAULT_STATE.resolve())
    looked = tuple(c / STATE_FILE for c in candidates)
    found = [(folder, _read(folder / STATE_FILE)) for folder in candidates]
    for folder, doc in found:
        if doc is not None and _alive(doc.get("pid")):
            return Located(folder, doc, looked)
    for folder, doc in found:  # a killed engine's file: the caller says it does not answer
        if doc is not None:
            return Located(folder, doc, looked)
    # nothing runs: the folder a command would use for what stays (logs)
    existing = next((c for c in candidates if c.is_dir()), candidates[0])
    return Located(existing, None, looked)
