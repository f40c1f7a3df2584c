"""The engine seam: the only place that knows an engine's flags, endpoints and profiler switches."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from magpie_trace.config import Config, NodeConfig, ProfileConfig
from magpie_trace.groups import Group
from magpie_trace.topology import Layout, Rank

if TYPE_CHECKING:
    from magpie_trace.plan import Plan


@dataclass
class NodeContext:
    """What an engine needs to write one node's command line.

    `index` is the node's rank inside its group (the engine's node rank) and `head` its group's
    head; `node_index` is its place in scheduler.nodes (what per-node config keys are keyed by).
    """

    config: Config
    layout: Layout
    index: int
    node: NodeConfig
    head: NodeConfig
    ranks: list[Rank]
    port: int
    rendezvous_port: int
    trace_dir: str | None
    group: Group
    node_index: int
    bootstrap_port: int | None = None  # a prefill or decode group's KV handoff port

    @property
    def is_head(self) -> bool:
        return self.index == 0

    @property
    def nnodes(self) -> int:
        return self.layout.nnodes


@dataclass(frozen=True)
class HttpCall:
    """One request to an engine's API server (path on its base URL, JSON body or none)."""

    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class TraceName:
    """What an engine's trace file name says about the file. None: the name does not say.

    `rank_in_dp` is vLLM's `rank{R}`: the worker's rank inside its DP replica.
    """

    kind: Literal["rank", "api_server"]
    profile_id: str | None
    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    ep: int | None = None
    rank_in_dp: int | None = None
    host: str | None = None
    pid: int | None = None
    stage: str | None = None


class Engine(abc.ABC):
    name: str = ""
    default_port: int = 8000
    default_rendezvous_port: int = 29501
    health_path: str = "/health"
    # Extra head endpoints that must answer before the server counts as ready.
    ready_paths: tuple[str, ...] = ()
    # A prefill group's KV handoff port when the config gives none (SGLang's bootstrap port).
    default_bootstrap_port: int = 8998
    # The KV connector a PD group uses when the config names none (vLLM only).
    default_kv_connector: str | None = None

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

    def probe_clock_args(self, config: Config, index: int) -> list[str]:
        """Extra arguments for the clock probe's client on node `index` (clock_client), so it reads
        the clock the engine reads there. A real engine's clock is the node's own, shifted by the
        node's environment if at all (the probe runs with it): none."""
        return []

    # ---- watching: which processes of a node's tree are its ranks ----------------------------

    rank_title: re.Pattern[str] | None = None  # matches a rank process's command line

    def rank_process(self, cmdline: str) -> str | None:
        """The rank a process of the engine's tree serves, as `ps` shows it (e.g.
        VLLM::Worker_TP1); None for its other processes (API server, helpers)."""
        match = self.rank_title.search(cmdline) if self.rank_title else None
        return match.group(1) if match else None

    # ---- profiling: HTTP calls, which API servers to call, trace file names -----------------

    def router_bootstrap_port(self, port: int | None) -> int | None:
        """What a router is told with a prefill server's URL (SGLang's bootstrap port)."""
        return port

    def profile_urls(self, plan: Plan) -> list[str]:
        """Base URLs to send start/stop to: every group's API servers (one call through a
        group's head arms every rank of it)."""
        return plan.api_urls

    @abc.abstractmethod
    def start_profile_call(self, profile: ProfileConfig, profile_id: str) -> HttpCall:
        """The request that opens a capture tagged with profile_id (in every rank's file name)."""

    @abc.abstractmethod
    def stop_profile_call(self) -> HttpCall:
        """The request that closes the capture (the ranks write their files)."""

    @abc.abstractmethod
    def has_step_window(self, profile: ProfileConfig) -> bool:
        """Does the configured step window end the ranks' capture on its own?"""

    def stop_needed(self, profile: ProfileConfig) -> bool:
        """Must stop be called even after the step window ended the capture?"""
        return True

    @abc.abstractmethod
    def trace_patterns(self, profile_id: str) -> list[str]:
        """Globs (file names in a node's trace dir) that match this capture's traces."""

    @abc.abstractmethod
    def parse_trace_name(self, name: str) -> TraceName | None:
        """What the file name says, for every naming scheme the engine has; None: not a trace."""
