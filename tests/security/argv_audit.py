"""Every command line this process starts, seen through Python's audit hook.

`subprocess.Popen` raises the audit event with the argv it is about to exec, so the tests see
exactly what `ps` would show: for the ssh backend that includes the remote command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_listeners: list[list[list[str]]] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen" and _listeners:
        argv = args[1]
        words = [os.fsdecode(a) for a in argv] if isinstance(argv, (list, tuple)) else [os.fsdecode(argv)]
        for seen in _listeners:
            seen.append(words)


sys.addaudithook(_hook)  # audit hooks cannot be removed: it records only while a test listens


@contextmanager
def argv_seen() -> Iterator[list[list[str]]]:
    seen: list[list[str]] = []
    _listeners.append(seen)
    try:
        yield seen
    finally:
        _listeners.remove(seen)
