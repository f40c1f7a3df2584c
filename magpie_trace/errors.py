"""User-facing failures: one line that names what is wrong and where."""

from __future__ import annotations


class MagpieError(Exception):
    """A failure the user can act on. The CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code: int = 1


class ConfigError(MagpieError):
    """Bad configuration: the message names the file and the key."""

    exit_code = 2


class NodeError(MagpieError):
    """Something failed on one node; the message starts with the node's name."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node


class TraceError(MagpieError):
    """A trace file is unusable: the message names the file."""


class NodeGone(NodeError):
    """The node itself is gone (its Ray node died, it left the cluster): nothing of ours can be
    running there any more, so teardown counts it as stopped instead of failing on it."""
