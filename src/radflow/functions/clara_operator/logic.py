"""Bring-your-own Clara operators: run the operator's ``command`` with Clara's folders mapped.

A Clara operator reads ``/input`` (and named input paths) and writes ``/output`` (and named
output paths). The runtime has already filled local folders for each declared path; here the
command line and the operator's variables are rewritten so every declared Clara path points at
its local folder (longest path first, whole path components only: ``/input`` maps
``/input/x.dcm`` but not ``/inputs``). The process also gets ``RADFLOW_INPUT_<NAME>`` /
``RADFLOW_OUTPUT_<NAME>`` (``DEFAULT`` for the unnamed one). In the cluster wrapper image the
local folders *are* the Clara paths, so nothing changes and unmodified operators just work.

Exit status 0 = completed; 75 (``EX_TEMPFAIL``) = transient, retried; anything else = the
stage failed permanently (``operator_exit_<code>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from radflow.functions.clara_operator import process
from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.stage import StageContext

EX_TEMPFAIL = 75


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def _path_pattern(clara_path: str) -> re.Pattern[str]:
    return re.compile(
        r"(?<![\w./-])" + re.escape(clara_path.rstrip("/") or "/") + r"(?=$|/|[^\w.-])"
    )


def map_paths(text: str, paths: Mapping[str, Path]) -> str:
    """Replace each Clara path in ``text`` by its local folder (longest first)."""
    for clara in sorted(paths, key=len, reverse=True):
        local = str(paths[clara])
        if clara.rstrip("/") == local.rstrip("/"):
            continue
        text = _path_pattern(clara).sub(_literal(local), text)
    return text


def env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def plan(ctx: StageContext) -> Invocation:
    """The command line, environment additions and working folder for one run."""
    if not ctx.command:
        raise InvalidInput(
            f"stage {ctx.stage!r}: no container.command to run", code="operator_without_command"
        )
    argv = [map_paths(arg, ctx.paths) for arg in ctx.command]
    env = {k: map_paths(v, ctx.paths) for k, v in ctx.variables.items()}
    for name, folder in ctx.inputs.items():
        env[f"RADFLOW_INPUT_{env_name(name)}"] = str(folder)
    for name, folder in ctx.outputs.items():
        env[f"RADFLOW_OUTPUT_{env_name(name)}"] = str(folder)
    return Invocation(argv=argv, env=env, cwd=ctx.work_dir)


def run(ctx: StageContext) -> dict[str, object]:
    """Run the operator once; its summary is the exit status and file counts (no output text)."""
    inv = plan(ctx)
    code, duration = process.execute(inv.argv, inv.env, inv.cwd)
    if code == EX_TEMPFAIL:
        raise Unavailable(f"operator exited with {EX_TEMPFAIL} (temporary failure)")
    if code != 0:
        raise InvalidInput(
            f"operator command exited with status {code}",
            code=f"operator_exit_{code}" if code > 0 else "operator_killed",
        )
    files = {
        name: sum(1 for p in folder.rglob("*") if p.is_file())
        for name, folder in ctx.outputs.items()
    }
    return {"exit_code": code, "duration_s": round(duration, 3), "output_files": files}


def _literal(value: str) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` replacement that inserts ``value`` as is (no backslash escapes)."""
    return lambda _match: value
