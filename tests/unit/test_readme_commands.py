"""The README's command lines run what they say: dcmtk's DICOM tools by full path."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: dcmtk tools that pynetdicom also installs as console scripts into the virtualenv's bin/
SHADOWED = ("storescu", "echoscu", "findscu", "getscu", "movescu", "storescp")


def shell_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", markdown, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_calls_dcmtk_tools_by_their_full_path() -> None:
    calls = []
    for line in shell_lines((ROOT / "README.md").read_text()):
        words = [w for w in line.split("#", 1)[0].split() if not re.match(r"^[A-Z_]+=", w)]
        if words and Path(words[0]).name in SHADOWED:
            calls.append(words[0])
    assert calls, "README.md shows no storescu/echoscu command any more"
    assert all(c == f"/usr/bin/{Path(c).name}" for c in calls), calls


def test_readme_says_why_the_full_path() -> None:
    text = (ROOT / "README.md").read_text()
    assert re.search(r"/usr/bin/storescu` is dcmtk's.*pynetdicom", text, re.S)
