"""The servers of a deployment: which nodes each group runs on, with what sizes and role.

A config without `server.groups` is one group over every node, named None: the plain single
server, planned exactly as before. With groups (prefill and decode pools behind a router, or
independent replicas), each group is its own server on nodes of its own: its own head, node ranks,
ports and rendezvous, laid out by the engine's rules over its nodes alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from magpie_trace.errors import ConfigError

if TYPE_CHECKING:
    from magpie_trace.config import Config, GroupConfig

# Lower case, so a group suffix in a trace name never reads as a TP/DP/PP/EP part.
GROUP_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
PD_ROLES = ("prefill", "decode")
# The PD protocol each router speaks, and the engines that answer it (the sim answers both).
ROUTER_PD_ENGINES = {"sglang-router": ("sglang", "sim"), "vllm-router": ("vllm", "sim")}
ROUTER_POLICIES = {
    "sglang-router": ("random", "round_robin", "cache_aware", "power_of_two", "manual"),
    "vllm-router": ("random", "round_robin", "cache_aware", "kv_aware", "power_of_two",
                    "consistent_hash", "sticky_least_loaded"),
}
SGLANG_PREFILL_ONLY_POLICIES = ("bucket",)


@dataclass(frozen=True)
class Group:
    """One server: its nodes (scheduler indices, its head first), sizes, role and ports."""

    name: str | None  # None: the plain single server of a config without groups
    role: str  # "serve" | "prefill" | "decode"
    nodes: tuple[int, ...]
    tp: int
    pp: int
    dp: int
    ep: int
    host: str = "0.0.0.0"  # the API server's bind address
    port: int | None = None
    rendezvous_port: int | None = None
    dp_rpc_port: int | None = None
    bootstrap_port: int | None = None
    kv_connector: str | None = None
    transfer_backend: str | None = None
    ib_device: str | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    key: str = "server"  # the config key it came from, for messages

    @property
    def is_pd(self) -> bool:
        return self.role in PD_ROLES


def node_index(config: Config, ref: str, where: str) -> int:
    """A scheduler node by name, or by index written as a number."""
    nodes = config.scheduler.nodes
    for index, node in enumerate(nodes):
        if node.name == ref:
            return index
    if ref.isdigit() and int(ref) < len(nodes):
        return int(ref)
    names = ", ".join(node.name for node in nodes)
    raise ConfigError(f"{config.source}: {where}: no node {ref!r} in scheduler.nodes ({names})")


def deployment_groups(config: Config) -> list[Group]:
    """The groups of a validated config, or the one plain server over every node."""
    server = config.server
    if not server.groups:
        return [Group(None, "serve", tuple(range(len(config.scheduler.nodes))), server.tp,
                      server.pp, server.dp, server.ep, server.host, server.port,
                      server.rendezvous_port, server.dp_rpc_port,
                      extra_args=tuple(server.extra_args))]
    return [_group(config, i, raw) for i, raw in enumerate(server.groups)]


def _group(config: Config, i: int, raw: GroupConfig) -> Group:
    server = config.server
    key = f"server.groups[{i}]"
    nodes = tuple(node_index(config, ref, f"{key}.nodes") for ref in raw.nodes)

    def size(name: str) -> int:
        value = getattr(raw, name)
        return getattr(server, name) if value is None else value

    return Group(
        name=raw.name, role=raw.role, nodes=nodes, tp=size("tp"), pp=size("pp"), dp=size("dp"),
        ep=size("ep"), host=raw.host or server.host, port=raw.port or server.port,
        rendezvous_port=raw.rendezvous_port or server.rendezvous_port,
        dp_rpc_port=raw.dp_rpc_port or server.dp_rpc_port, bootstrap_port=raw.bootstrap_port,
        kv_connector=raw.kv_connector, transfer_backend=raw.transfer_backend,
        ib_device=raw.ib_device, extra_args=(*server.extra_args, *raw.extra_args),
        env=dict(raw.env), key=key,
    )


def validate_deployment(config: Config) -> None:
    """Checks of server.groups and router that need more than one key. Raises ConfigError."""
    src, server, router = config.source, config.server, config.router
    if not server.groups:
        if router is not None:
            raise ConfigError(f"{src}: router: needs server.groups (the servers it routes "
                              "between); a single server is reached directly")
        return
    if server.executor == "ray":
        raise ConfigError(f"{src}: server.executor: ray is not supported with server.groups")
    owner: dict[int, str] = {}
    names: set[str] = set()
    for i, raw in enumerate(server.groups):
        key = f"server.groups[{i}]"
        if not GROUP_NAME.match(raw.name):
            raise ConfigError(f"{src}: {key}.name: {raw.name!r} must be 1-32 of [a-z0-9_], "
                              "starting with a letter")
        if raw.name in names:
            raise ConfigError(f"{src}: {key}.name: {raw.name!r} names two groups")
        names.add(raw.name)
        if not raw.nodes:
            raise ConfigError(f"{src}: {key}.nodes: at least one node is needed")
        for ref in raw.nodes:
            index = node_index(config, ref, f"{key}.nodes")
            node = config.scheduler.nodes[index].name
            if index in owner:
                raise ConfigError(f"{src}: {key}.nodes: node {node} is already in group "
                                  f"{owner[index]} (a node serves one group)")
            owner[index] = raw.name
        for name in ("tp", "pp", "dp", "ep"):
            value = getattr(raw, name)
            if value is not None and value < 1:
                raise ConfigError(f"{src}: {key}.{name}: must be at least 1")
        for name in ("port", "rendezvous_port", "dp_rpc_port", "bootstrap_port"):
            value = getattr(raw, name)
            if value is not None and not 0 < value < 65536:
                raise ConfigError(f"{src}: {key}.{name}: {value} is not a TCP port")
        _engine_keys(config, key, raw)
    groups = deployment_groups(config)
    roles = {group.role for group in groups}
    if roles & set(PD_ROLES):
        if roles != set(PD_ROLES):
            have = ", ".join(sorted(roles))
            raise ConfigError(f"{src}: server.groups: prefill/decode disaggregation needs at "
                              f"least one prefill and one decode group and nothing else ({have})")
        if router is None:
            raise ConfigError(f"{src}: router: prefill and decode groups need a router to pair "
                              "each request's prefill with a decode (sglang-router or vllm-router)")
        if server.engine not in ROUTER_PD_ENGINES[router.kind]:
            fits = next(kind for kind, engines in ROUTER_PD_ENGINES.items()
                        if server.engine in engines)
            raise ConfigError(f"{src}: router.kind: {router.kind} cannot pair {server.engine} "
                              f"prefill and decode servers (use {fits})")
    if router is not None:
        _router(config)
    unused = [node.name for i, node in enumerate(config.scheduler.nodes) if i not in owner]
    if unused:
        raise ConfigError(f"{src}: scheduler.nodes: {', '.join(unused)} in no server group "
                          "(list it under a group's nodes, or remove it; the router runs on a "
                          "group's node)")


def _engine_keys(config: Config, key: str, raw: GroupConfig) -> None:
    src, engine = config.source, config.server.engine
    if raw.role not in PD_ROLES:
        for name in ("bootstrap_port", "kv_connector", "transfer_backend", "ib_device"):
            if getattr(raw, name) is not None:
                raise ConfigError(f"{src}: {key}.{name}: only for a prefill or decode group")
        return
    if raw.kv_connector is not None and engine != "vllm":
        raise ConfigError(f"{src}: {key}.kv_connector: a vLLM setting (engine is {engine})")
    for name in ("transfer_backend", "ib_device"):
        if getattr(raw, name) is not None and engine != "sglang":
            raise ConfigError(f"{src}: {key}.{name}: an SGLang setting (engine is {engine})")


def router_node(config: Config) -> int:
    """The scheduler index of the node the router runs on (the head unless router.node says)."""
    router = config.router
    assert router is not None
    return node_index(config, router.node, "router.node") if router.node else 0


def _router(config: Config) -> None:
    src, router = config.source, config.router
    assert router is not None
    allowed = ROUTER_POLICIES[router.kind]
    for name in ("policy", "prefill_policy", "decode_policy"):
        value = getattr(router, name)
        choices = allowed
        if name == "prefill_policy" and router.kind == "sglang-router":
            choices = (*allowed, *SGLANG_PREFILL_ONLY_POLICIES)
        if value is not None and value not in choices:
            raise ConfigError(f"{src}: router.{name}: {value!r} is not one of: {', '.join(choices)}")
    for name in ("port", "metrics_port"):
        value = getattr(router, name)
        if value is not None and not 0 < value < 65536:
            raise ConfigError(f"{src}: router.{name}: {value} is not a TCP port")
    if router.ready_timeout_s <= 0:
        raise ConfigError(f"{src}: router.ready_timeout_s: must be above 0")
    router_node(config)
