"""A pre-warmed fork server for functions-framework instances (optional, see docs/host.md).

Run as a plain script (``python zygote.py MODULE...``), never imported by the engine: it imports
functions-framework, gunicorn and the given modules once, then forks one child per request. A
cold start then costs a fork plus the user module's own code instead of ~1 s of imports.

Protocol, JSON lines: stdin gets ``{"id", "argv", "env", "cwd", "log"}``; stdout answers
``{"ready": true, "failed": [...]}`` once, ``{"id", "pid"}`` per spawn (or ``{"id", "error"}``),
and ``{"exit": pid, "code": n}`` whenever a child exits (only this process can reap them).
The zygote exits when its stdin closes; children live in their own sessions and are stopped by
the host with ``killpg`` like any other instance.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import sys
import traceback
from typing import Any


def _emit(out: Any, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc) + "\n")
    out.flush()


def _child(req: dict[str, Any]) -> None:
    """Become the instance: own session, log file as stdout/stderr, the request's env, then
    serve."""
    code: int = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(
            signal.SIGTERM, signal.SIG_DFL
        )  # the zygote's own handler is not the instance's
        os.setsid()
        if sys.platform.startswith("linux"):  # die with the zygote, which dies with the engine
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        os.chdir(req["cwd"])
        log_fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, 1 << 16)  # the zygote's pipes, selector and wakeup fds are not ours
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["functions-framework", *req["argv"]]
        sys.path[0] = req["cwd"]  # as for ``python -m``: the working directory first
        from functions_framework._cli import _cli

        _cli.main(args=req["argv"], prog_name="functions-framework", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    failed: list[str] = []
    for name in ["functions_framework._cli", "functions_framework._http.gunicorn", *sys.argv[1:]]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional library must not take the zygote down
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    out = os.fdopen(os.dup(1), "w")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _emit(out, {"ready": True, "failed": failed, "pid": os.getpid()})
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fd == wake_r:
                os.read(wake_r, 4096)
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    _emit(out, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
                continue
            data = os.read(0, 1 << 16)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                req = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as exc:
                    _emit(out, {"id": req["id"], "error": str(exc)})
                    continue
                if pid == 0:
                    _child(req)
                _emit(out, {"id": req["id"], "pid": pid})


if __name__ == "__main__":
    main()
