"""Prints the requirements of radflow (pyproject.toml) plus the given extras, one per line.

The images install dependencies in a layer of their own, before the source is copied, so that
a code change does not reinstall them: ``python3 docker/requirements.py pyproject.toml imaging``
| ``pip install -c constraints.txt -r /dev/stdin``. Self-references (``radflow[a,b]``) are
expanded. Standard library only: it runs in the image before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from typing import Any

SELF = re.compile(r"^radflow\[(?P<extras>[^\]]+)\]$")


def requirements(project: dict[str, Any], extras: list[str]) -> list[str]:
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            sys.exit(f"EXTRAS: {extra!r} is not an optional dependency of radflow (pyproject.toml)")
        for req in optional[extra]:
            match = SELF.match(req.replace(" ", ""))
            if match:
                todo.extend(match.group("extras").split(","))
            else:
                out.append(req)
    return sorted(set(out))


def main() -> None:
    path, extras = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    with open(path, "rb") as fh:
        project = tomllib.load(fh)["project"]
    print("\n".join(requirements(project, [e for e in extras.split(",") if e.strip()])))


if __name__ == "__main__":
    main()
