"""The engine seam: the only place that knows an engine's flags, endpoints and profiler switches."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from magpie_trace.config import Config, NodeConfig
from magpie_trace.topology import Layout, Rank


@dataclass
class NodeContext:
    """What an engine needs to write one node's command line."""

    config: Config
    layout: Layout
    index: int
    node: NodeConfig
    head: NodeConfig
    ranks: list[Rank]
    port: int
    rendezvous_port: int
    trace_dir: str | None

    @property
    def is_head(self) -> bool:
        return self.index == 0

    @property
    def nnodes(self) -> int:
        return self.layout.nnodes


class Engine(abc.ABC):
    name: str = ""
    default_port: int = 8000
    default_rendezvous_port: int = 29501
    health_path: str = "/health"
    # Extra head endpoints that must answer before the server counts as ready.
    ready_paths: tuple[str, ...] = ()

    @abc.abstractmethod
    def default_command(self) -> list[str]:
        """argv prefix that starts the engine on a node when server.command is not given."""

    @abc.abstractmethod
    def node_args(self, ctx: NodeContext) -> list[str] | None:
        """Engine arguments for this node (after the command prefix); None: nothing runs there."""

    def node_env(self, ctx: NodeContext) -> dict[str, str]:
        """Environment the engine needs on this node (before the user's env is applied)."""
        return {}

    def serves_http(self, ctx: NodeContext) -> bool:
        """Does this node run an API server? (Only the head for TP/PP across nodes.)"""
        return ctx.is_head
