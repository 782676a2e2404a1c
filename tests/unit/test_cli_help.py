"""Every ``radflow`` command and sub-command has a one-line help, in plain text."""

from __future__ import annotations

import argparse
import re

from radflow.cli.main import build_parser

RST = re.compile(r"``|:(?:func|class|mod|meth|attr|data):`|\.\. ")


def walk(
    parser: argparse.ArgumentParser, path: str
) -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """(command path, its parser, the help its parent lists) for every sub-command below."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((f"{path} {name}", sub, helps.get(name)))
                found.extend(walk(sub, f"{path} {name}"))
    return found


def test_every_command_has_a_one_line_plain_help() -> None:
    parser = build_parser()
    commands = walk(parser, "radflow")
    assert len(commands) > 15  # up, status, logs, demo, dicom ..., pipeline ..., jobs ...
    problems = []
    for path, sub, help_text in commands:
        if not help_text or not help_text.strip():
            problems.append(f"{path}: no help")
        elif "\n" in help_text.strip() or RST.search(help_text):
            problems.append(f"{path}: help not one plain line: {help_text!r}")
        for action in sub._actions:
            text = action.help or ""
            if isinstance(action, argparse._SubParsersAction):
                continue  # its choices are the sub-commands, each checked with its own help
            if not text.strip():
                problems.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help")
            elif RST.search(text) or "\n" in text.strip():
                problems.append(
                    f"{path} {'/'.join(action.option_strings) or action.dest}: {text!r}"
                )
    assert not problems, "\n".join(problems)


def test_every_help_page_is_plain_text() -> None:
    parser = build_parser()
    pages = [("radflow", parser)] + [(path, sub) for path, sub, _ in walk(parser, "radflow")]
    marked = [path for path, p in pages if RST.search(p.format_help())]
    assert not marked, marked
