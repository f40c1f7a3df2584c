"""Process checks for tests: what is still alive in a process group, read from /proc."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def _live() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields after the command name) of every live (non-zombie) process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            yield int(entry), fields


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    return [pid for pid, fields in _live() if int(fields[2]) == pgid]


def leftover_processes(pgids: Iterable[int]) -> dict[int, list[int]]:
    """{pgid: live pids} for every group that still has a process."""
    return {pgid: pids for pgid in pgids if (pids := group_members(pgid))}


def wait_for(predicate: Callable[[], object], timeout_s: float = 5.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def children_of(pid: int) -> list[int]:
    """Live direct children of a process, from /proc."""
    return sorted(child for child, fields in _live() if int(fields[1]) == pid)
