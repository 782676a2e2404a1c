"""Child-process hygiene: children of the engine never outlive it.

A graceful stop (Ctrl-C, SIGTERM) stops every child in order. If the engine itself is killed
(``kill -9``, OOM), Linux's parent-death signal makes each direct child receive SIGTERM, so no
orphaned SeaweedFS, function or adapter keeps ports and data directories locked when the engine
is restarted. Spawn children from the main thread: the signal follows the spawning *thread*.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen/asyncio subprocesses: SIGTERM this child when its parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
