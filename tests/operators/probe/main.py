"""A test operator, steered by its variables (not in the registry: it has its own handler file).

MODE: ok | invalid | unavailable | crash | deep (an output path longer than S3 takes);
SLEEP: seconds;  COUNT_FILE: appends "start"/"end";
RANDOM_NAMES: "1" writes an output file with a fresh random name each run (like new UIDs).
"""

import time
import uuid

import functions_framework

from radflow.sdk.errors import InvalidInput, Unavailable
from radflow.sdk.runtime import serve


def run(ctx):  # type: ignore[no-untyped-def]
    v = ctx.variables
    if v.get("COUNT_FILE"):
        with open(v["COUNT_FILE"], "a") as fh:
            fh.write(f"{ctx.stage} start\n")
    time.sleep(float(v.get("SLEEP") or 0))
    mode = v.get("MODE", "ok")
    if mode == "invalid":
        raise InvalidInput("selection rule 'T1C' matched no series", code="no_series_selected")
    if mode == "unavailable":
        raise Unavailable("triton not ready")
    if mode == "crash":
        raise RuntimeError("bug")
    names = {}
    for name, folder in sorted(ctx.inputs.items()):
        names[name] = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        )
    for out in ctx.outputs.values():
        (out / "inputs.txt").write_text(repr(names))
        if v.get("LONG_NAME") == "1":  # a SeriesInstanceUID of 64 characters plus .nii.gz
            (out / ("1.2.826.0.1.3680043.8.498." + "1" * 38 + ".nii.gz")).write_bytes(b"v")
        if mode == "deep":  # 6 x 200 characters: over S3's 1024 bytes per key
            deep = out.joinpath(*["d" * 200] * 6)
            deep.mkdir(parents=True)
            (deep / "result.json").write_bytes(b"{}")
        if v.get("RANDOM_NAMES") == "1":
            (out / f"{uuid.uuid4().hex}.dcm").write_bytes(b"x")
    if v.get("COUNT_FILE"):
        with open(v["COUNT_FILE"], "a") as fh:
            fh.write(f"{ctx.stage} end\n")
    return {"inputs": {k: len(x) for k, x in names.items()}, "variables": sorted(v)}


@functions_framework.http
def handle(request):  # type: ignore[no-untyped-def]
    return serve(request, run)
