"""Reading a function's log file for ``radflow logs <function> [-f]``."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path


def tail_log(path: Path, follow: bool, lines: int = 200, poll_s: float = 0.2) -> Iterator[str]:
    """The last ``lines`` lines of ``path``; with ``follow``, then every line appended later.

    Following survives truncation and replacement of the file (it reopens when the inode
    changes or the file shrinks) and waits for a file that does not exist yet.
    """
    path = Path(path)
    if not path.exists() and not follow:
        raise FileNotFoundError(
            f"{path}: no log yet (the function has not been started since the last reset)"
        )
    while not path.exists():
        time.sleep(poll_s)
    fh = open(path, encoding="utf-8", errors="replace")
    try:
        yield from (line.rstrip("\n") for line in collections.deque(fh, maxlen=lines) if lines > 0)
        if not follow:
            return
        inode = os.fstat(fh.fileno()).st_ino
        pending = ""
        while True:
            chunk = fh.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending.rstrip("\n")
                    pending = ""
                continue
            time.sleep(poll_s)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            if stat.st_ino != inode or stat.st_size < fh.tell():
                fh.close()
                fh = open(path, encoding="utf-8", errors="replace")
                inode = os.fstat(fh.fileno()).st_ino
                pending = ""
    finally:
        fh.close()
