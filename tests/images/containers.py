"""Runs an image's own entry point from buildah's local storage (no Docker daemon needed).

``buildah run --isolation chroot --network host`` starts the image's ENTRYPOINT + CMD with the
image's environment, user and working directory (docs/deploy.md, "What CI verifies"); it
shares the host's loopback, so a test talks to it on 127.0.0.1. The storage is the one
``scripts/build-images`` wrote to (``STORAGE_DRIVER``, ``BUILDAH_ROOT``, ``BUILDAH_RUNROOT``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def buildah() -> list[str]:
    exe = shutil.which("buildah")
    if exe is None:
        raise FileNotFoundError("buildah is missing (scripts/install-system-packages)")
    return [
        exe,
        "--storage-driver",
        os.environ.get("STORAGE_DRIVER") or "overlay",
        "--root",
        os.environ.get("BUILDAH_ROOT") or "/var/lib/containers/radflow",
        "--runroot",
        os.environ.get("BUILDAH_RUNROOT") or "/run/containers/radflow",
    ]


def image_config(image: str) -> dict[str, Any]:
    """The OCI config of ``image`` (Entrypoint, Cmd, Env, User, WorkingDir, ...)."""
    out = subprocess.run(
        [*buildah(), "inspect", "--type", "image", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out)["OCIv1"]["config"])


_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def image_size(image: str) -> float:
    """Megabytes of ``image`` as buildah reports it (its uncompressed layers, 3 digits)."""
    out = subprocess.run(
        [*buildah(), "images", "--json", image], check=True, capture_output=True, text=True
    ).stdout
    value, unit = json.loads(out)[0]["size"].split()
    return float(value) * _UNITS[unit] / 1e6


@contextmanager
def running(
    image: str,
    env: Mapping[str, str],
    log: Path,
    *,
    volumes: Sequence[tuple[Path, str]] = (),
    command: Sequence[str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``image``'s entry point (or ``command``) running until the block ends."""
    config = image_config(image)
    argv = list(command or [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])])
    name = f"smoke-{uuid.uuid4().hex[:12]}"
    subprocess.run([*buildah(), "from", "--name", name, image], check=True, capture_output=True)
    run = [*buildah(), "run", "--isolation", "chroot", "--network", "host"]
    for key, value in env.items():
        run += ["--env", f"{key}={value}"]
    for host, target in volumes:
        run += ["--volume", f"{host}:{target}"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*run, name, "--", *argv], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run([*buildah(), "rm", name], check=False, capture_output=True)
