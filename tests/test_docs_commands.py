"""Every `magpie-trace ...` command shown in README.md and docs/ parses with the real CLI, and every
documented subcommand is run by some test."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from magpie_trace.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLE = str(ROOT / "examples" / "vllm-tp16-2node.yaml")
PLACEHOLDERS = {"CONFIG": EXAMPLE, "run.yaml": EXAMPLE, "DIR": str(ROOT / "tests"), "./traces": str(ROOT / "tests"), "magpie-runs/latest/traces": str(ROOT / "tests")}


def documented_commands() -> list[tuple[str, str]]:
    """(file, command line) for every magpie-trace command in a fenced code block."""
    found = []
    for doc in DOCS:
        in_block = False
        for line in doc.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            if not in_block:
                continue
            for part in re.split(r"&&|;", line.split("#", 1)[0]):
                part = part.strip().removeprefix("$ ").removesuffix("&").strip()  # `... &`: in the background
                if part.startswith("magpie-trace "):
                    found.append((doc.name, part))
    return found


COMMANDS = documented_commands()


def test_docs_show_commands():
    assert any(cmd.startswith("magpie-trace demo") for _, cmd in COMMANDS)
    assert len({cmd.split()[1] for _, cmd in COMMANDS}) >= 5


@pytest.mark.parametrize("doc, line", COMMANDS, ids=[f"{d}:{c}" for d, c in COMMANDS])
def test_documented_command_parses(doc, line):
    synopsis = re.sub(r"\[[^\]]*\]", "", line)  # optional parts of a synopsis line
    words = [PLACEHOLDERS.get(word, word) for word in shlex.split(synopsis)][1:]
    if not words or words[0] in ("-h", "--help"):
        return
    name, args = words[0], words[1:]
    assert name in main.commands, f"{doc}: unknown command {name!r} in {line!r}"
    command = main.commands[name]
    try:
        command.make_context(name, args)
    except click.UsageError as exc:
        pytest.fail(f"{doc}: {line!r}: {exc.format_message()}")


def invoked_in_tests() -> set[str]:
    pattern = re.compile(r'invoke\(\s*main,\s*\[\s*"([a-z]+)"|"magpie_trace\.cli",\s*"([a-z]+)"')
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return names


def test_every_documented_command_is_run_by_a_test():
    documented = {shlex.split(line)[1] for _, line in COMMANDS}
    missing = documented - invoked_in_tests()
    assert not missing, f"documented but never run by a test: {sorted(missing)}"
