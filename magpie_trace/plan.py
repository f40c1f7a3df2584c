"""The plan: for every node, its role, its ranks, and the exact argv and env that start it.

Everything downstream (launch, bench, profile, collect, merge) reads the plan instead of
re-deriving topology, so `magpie-trace plan` shows exactly what will run. A deployment of several
groups (groups.py) plans each group as its own server over its own nodes, and a router (router.py)
in front of their API servers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any

from magpie_trace.config import Config, NodeConfig, check_name, under
from magpie_trace.engines import Engine, NodeContext, get_engine
from magpie_trace.errors import ConfigError
from magpie_trace.groups import Group, deployment_groups, router_node
from magpie_trace.router import RouterPlan, Worker, default_command, router_args, router_ports
from magpie_trace.secrets import Secrets
from magpie_trace.topology import Layout, Rank, check_layout, place_ranks

PLAN_SCHEMA = "magpie-trace/plan/1"


@dataclass
class NodePlan:
    index: int
    name: str
    host: str
    address: str
    role: str
    ranks: list[Rank]
    command: list[str]
    args: list[str] | None
    env: dict[str, str]
    serves_http: bool
    workdir: str
    log_path: str
    trace_dir: str | None
    layout: Layout  # its group's layout (ranks, TP/PP/DP sizes)
    port: int  # its group's API server port
    group: str | None = None  # None: the plain single server
    group_role: str = "serve"  # "serve" | "prefill" | "decode"

    @property
    def argv(self) -> list[str] | None:
        """The full command line, or None when the engine runs nothing on this node."""
        return None if self.args is None else [*self.command, *self.args]

    @property
    def api_url(self) -> str:
        """Its API server's base URL (meaningful where serves_http)."""
        return _url(self.address, self.port)

    def to_dict(self, secrets: Secrets | None = None) -> dict[str, Any]:
        """As shown and written: argv and env masked by `secrets` (None: in clear)."""
        argv = self.argv
        return {
            "index": self.index,
            "name": self.name,
            "host": self.host,
            "address": self.address,
            "role": self.role,
            "ranks": [rank.to_dict() for rank in self.ranks],
            "argv": secrets.argv(argv) if secrets and argv is not None else argv,
            "env": secrets.env(self.env) if secrets else dict(self.env),
            "serves_http": self.serves_http,
            "workdir": self.workdir,
            "log_path": self.log_path,
            "trace_dir": self.trace_dir,
            **({"group": self.group, "group_role": self.group_role} if self.group else {}),
        }


@dataclass
class GroupPlan:
    """One server of the deployment: its nodes, layout and API servers."""

    name: str | None
    role: str
    layout: Layout
    nodes: list[int]
    port: int
    rendezvous_port: int
    bootstrap_port: int | None
    api_urls: list[str]

    @property
    def url(self) -> str:
        return self.api_urls[0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "layout": self.layout.to_dict(),
                "nodes": self.nodes, "port": self.port, "rendezvous_port": self.rendezvous_port,
                "bootstrap_port": self.bootstrap_port, "api_urls": self.api_urls}


@dataclass
class Plan:
    run_id: str
    engine: str
    backend: str
    layout: Layout
    nodes: list[NodePlan]
    head_url: str
    health_path: str
    port: int
    rendezvous_port: int
    config: Config = field(repr=False)
    groups: list[GroupPlan] = field(default_factory=list)
    router: RouterPlan | None = None

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

    @property
    def has_groups(self) -> bool:
        return bool(self.config.server.groups)

    @property
    def api_urls(self) -> list[str]:
        """Every API server of every group (profiling reaches all ranks through them)."""
        return [url for group in self.groups for url in group.api_urls]

    @property
    def endpoints(self) -> list[str]:
        """Where the benchmark sends requests: the router, else every API server."""
        return [self.router.url] if self.router is not None else self.api_urls

    def node_serving(self, url: str) -> NodePlan | None:
        """The node whose API server is at url (errors about a URL name the node)."""
        return next((node for node in self.nodes
                     if node.serves_http and _url(node.address, node.port) == url), None)

    def group_of(self, node: NodePlan) -> GroupPlan:
        return next(group for group in self.groups if node.index in group.nodes)

    @property
    def processes(self) -> list[NodePlan | RouterPlan]:
        """What launch starts, watches and stops: every node's command, then the router."""
        return [*self.nodes, *([self.router] if self.router else [])]

    def watched_nodes(self) -> dict[str, NodeConfig]:
        """Each started process's name -> the node it runs on (the router under its own name),
        for the checks that its process is still alive."""
        nodes = {node.name: self.node_config(node.index) for node in self.nodes}
        if self.router is not None:
            nodes[self.router.name] = dataclasses.replace(self.node_config(self.router.index),
                                                          name=self.router.name)
        return nodes

    def label(self, name: str) -> str:
        """A started process by its name, with its group: `node2 (group decode)`,
        `router (sglang-router on node0)`; a plain server's node is just its name."""
        if self.router is not None and name == self.router.name:
            return f"router ({self.router.kind} on {self.router.node_name})"
        node = next((n for n in self.nodes if n.name == name), None)
        return f"{name} (group {node.group})" if node is not None and node.group else name

    @property
    def ranks(self) -> list[Rank]:
        return [rank for node in self.nodes for rank in node.ranks]

    def node_config(self, index: int) -> NodeConfig:
        return self.config.scheduler.nodes[index]

    def to_dict(self, mask_secrets: bool = True) -> dict[str, Any]:
        """Every env value from the config masked unless public (see secrets.py)."""
        secrets = Secrets.of(self.config) if mask_secrets else None
        return {
            "schema": PLAN_SCHEMA,
            "run_id": self.run_id,
            "engine": self.engine,
            "backend": self.backend,
            "model": self.config.server.model,
            "layout": self.layout.to_dict(),
            "gpus_per_node": self.config.scheduler.gpus_per_node,
            "head_url": self.head_url,
            "health_path": self.health_path,
            "nodes": [node.to_dict(secrets) for node in self.nodes],
            **({"groups": [group.to_dict() for group in self.groups],
                "router": self.router.to_dict(secrets) if self.router else None,
                "endpoints": self.endpoints} if self.has_groups else {}),
        }


def new_run_id() -> str:
    """`<date>-<time>-<6 hex>`: sorts by start time, and two runs started in the same second
    (same output dir, same nodes) still get folders and node dirs of their own."""
    return f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{os.urandom(3).hex()}"


def make_plan(config: Config, run_id: str | None = None) -> Plan:
    """Lay each group's parallel sizes over its nodes and write each node's command."""
    run_id = check_name(run_id or config.output.run_id or new_run_id(), "run id")
    sched, server = config.scheduler, config.server
    engine = get_engine(server.engine)
    command = list(server.command) or engine.default_command()
    planned: dict[int, NodePlan] = {}
    groups = []
    for group in deployment_groups(config):
        group_plan, nodes = _plan_group(config, engine, group, run_id, command)
        groups.append(group_plan)
        planned.update((node.index, node) for node in nodes)
    nodes = [planned[index] for index in sorted(planned)]
    for node in nodes:
        node.role = "head" if node.index == 0 else "worker"
    head = groups[0]
    router = _plan_router(config, engine, groups, run_id) if config.router else None
    return Plan(
        run_id=run_id,
        engine=server.engine,
        backend=sched.backend,
        layout=head.layout,
        nodes=nodes,
        head_url=router.url if router else head.url,
        health_path=engine.health_path,
        port=head.port,
        rendezvous_port=head.rendezvous_port,
        config=config,
        groups=groups,
        router=router,
    )


def _plan_group(config: Config, engine: Engine, group: Group, run_id: str,
                command: list[str]) -> tuple[GroupPlan, list[NodePlan]]:
    sched, server = config.scheduler, config.server
    members = [sched.nodes[index] for index in group.nodes]
    gpus = [node.gpus or sched.gpus_per_node for node in members]
    layout = check_layout(server.engine, group.tp, group.pp, group.dp, group.ep, gpus,
                          f"{config.source}: {group.key}")
    placement = place_ranks(server.engine, layout)
    port = group.port or engine.default_port
    rendezvous_port = group.rendezvous_port or engine.default_rendezvous_port
    bootstrap_port = (group.bootstrap_port or engine.default_bootstrap_port) if group.is_pd else None
    head = members[0]
    nodes = []
    for position, (index, node) in enumerate(zip(group.nodes, members)):
        workdir = sched.node_workdir(node)
        run_dir = under(workdir, run_id)
        trace_dir = _trace_dir(config, node, run_id, run_dir) if config.profile.enabled else None
        ranks = [dataclasses.replace(rank, node=index) for rank in placement[position]]
        ctx = NodeContext(
            config=config, layout=layout, index=position, node=node, head=head, ranks=ranks,
            port=port, rendezvous_port=rendezvous_port, trace_dir=trace_dir, group=group,
            node_index=index, bootstrap_port=bootstrap_port,
        )
        env = {**engine.node_env(ctx), **sched.env, **server.env, **group.env, **node.env}
        nodes.append(
            NodePlan(
                index=index,
                name=node.name,
                host=node.host,
                address=node.address,
                role="worker",
                ranks=ranks,
                command=command,
                args=engine.node_args(ctx),
                env=env,
                serves_http=engine.serves_http(ctx),
                workdir=workdir,
                log_path=under(run_dir, f"{node.name}.log"),
                trace_dir=trace_dir,
                layout=layout,
                port=port,
                group=group.name,
                group_role=group.role,
            )
        )
    api_urls = [node.api_url for node in nodes if node.serves_http]
    return GroupPlan(group.name, group.role, layout, list(group.nodes), port, rendezvous_port,
                     bootstrap_port, api_urls), nodes


def _plan_router(config: Config, engine: Engine, groups: list[GroupPlan],
                 run_id: str) -> RouterPlan:
    router = config.router
    assert router is not None
    index = router_node(config)
    node = config.scheduler.nodes[index]
    port, metrics_port = router_ports(router)
    for group in groups:
        if index not in group.nodes:
            continue
        for what, value in (("port", group.port), ("bootstrap_port", group.bootstrap_port)):
            if value in (port, metrics_port):
                raise ConfigError(f"{config.source}: router: port {value} on {node.name} is "
                                  f"also group {group.name}'s {what}")
    workers = [
        Worker(url, group.role, str(group.name),
               engine.router_bootstrap_port(group.bootstrap_port) if group.role == "prefill" else None)
        for group in groups for url in group.api_urls
    ]
    connectors = {g.kv_connector for g in config.server.groups if g.kv_connector}
    connector = next(iter(connectors)) if len(connectors) == 1 else engine.default_kv_connector
    workdir = config.scheduler.node_workdir(node)
    run_dir = under(workdir, run_id)
    return RouterPlan(
        kind=router.kind, index=index, node_name=node.name, address=node.address, port=port,
        metrics_port=metrics_port, command=list(router.command) or default_command(router.kind),
        args=router_args(router, workers, connector, config.server.ready_timeout_s),
        env=dict(router.env), workers=workers,
        log_path=under(run_dir, "router.log"), workdir=workdir,
        ready_timeout_s=router.ready_timeout_s,
    )


def _trace_dir(config: Config, node: NodeConfig, run_id: str, run_dir: str) -> str:
    """Where each node's ranks write traces: profile.dir, a run folder on shared_dir, or local."""
    if config.profile.dir:
        return under(config.profile.dir, run_id, node.name)
    if config.scheduler.shared_dir:
        shared = config.scheduler.shared_dir
        return under(shared, "magpie-trace", run_id, "traces", node.name)
    return under(run_dir, "traces")


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"
