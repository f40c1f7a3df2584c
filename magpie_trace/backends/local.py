"""Nodes that are directories on this machine: the demo, tests, and single-box runs."""

from __future__ import annotations

from magpie_trace.backends.posix import PosixBackend
from magpie_trace.config import NodeConfig


class LocalBackend(PosixBackend):
    """Each config node is a working directory here; commands run as local processes.

    Started commands get a new session (setsid) with the current environment plus the given env,
    exactly as on an ssh node, so launch code cannot tell the transports apart.
    """

    name = "local"

    def command(self, node: NodeConfig, argv: list[str]) -> list[str]:
        return list(argv)
