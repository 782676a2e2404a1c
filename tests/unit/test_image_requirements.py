"""docker/requirements.py: what an image's dependency layer installs for its EXTRAS."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "requirements.py"


def requirements(*extras: str, pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(pyproject), ",".join(extras)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.splitlines()


def test_no_extras_is_the_core_dependencies() -> None:
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert requirements() == sorted(set(core))


def test_extras_add_their_dependencies_and_self_references_expand(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[project]\nname = 'radflow'\ndependencies = ['a>=1']\n"
        "[project.optional-dependencies]\nx = ['b']\ny = ['c; sys_platform == \"linux\"']\n"
        "all = ['radflow[x, y]']\n"
    )
    assert requirements("x", pyproject=pyproject) == ["a>=1", "b"]
    assert requirements("all", pyproject=pyproject) == [
        "a>=1",
        "b",
        'c; sys_platform == "linux"',
    ]


def test_every_registry_extra_exists_and_an_unknown_one_fails_the_build() -> None:
    from radflow.functions import registry

    for entry in registry.OPERATORS:
        assert requirements(*entry.extras)
    with pytest.raises(subprocess.CalledProcessError) as exc:
        requirements("imaging", "no-such-extra")
    assert "EXTRAS: 'no-such-extra' is not an optional dependency" in exc.value.stderr
