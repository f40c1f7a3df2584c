"""The plan: for every node, its role, its ranks, and the exact argv and env that start it.

Everything downstream (launch, bench, profile, collect, merge) reads the plan instead of
re-deriving topology, so `magpie-trace plan` shows exactly what will run.
"""

from __future__ import annotations

import datetime as _dt
import posixpath
from dataclasses import dataclass, field
from typing import Any

from magpie_trace.config import Config, NodeConfig
from magpie_trace.engines import NodeContext, get_engine
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

    @property
    def argv(self) -> list[str] | None:
        """The full command line, or None when the engine runs nothing on this node."""
        return None if self.args is None else [*self.command, *self.args]

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
        }


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

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

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
        }


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def make_plan(config: Config, run_id: str | None = None) -> Plan:
    """Lay the configured parallel sizes over the nodes and write each node's command."""
    run_id = run_id or config.output.run_id or new_run_id()
    sched, server = config.scheduler, config.server
    engine = get_engine(server.engine)
    gpus = [node.gpus or sched.gpus_per_node for node in sched.nodes]
    layout = check_layout(
        server.engine, server.tp, server.pp, server.dp, server.ep, gpus,
        f"{config.source}: server",
    )
    placement = place_ranks(server.engine, layout)
    port = server.port or engine.default_port
    rendezvous_port = server.rendezvous_port or engine.default_rendezvous_port
    command = list(server.command) or engine.default_command()
    head = sched.nodes[0]
    nodes = []
    for index, node in enumerate(sched.nodes):
        workdir = sched.node_workdir(node)
        run_dir = posixpath.join(workdir, run_id)
        trace_dir = _trace_dir(config, node, run_id, run_dir) if config.profile.enabled else None
        ctx = NodeContext(
            config=config, layout=layout, index=index, node=node, head=head,
            ranks=placement[index], port=port, rendezvous_port=rendezvous_port,
            trace_dir=trace_dir,
        )
        env = {**engine.node_env(ctx), **sched.env, **server.env, **node.env}
        nodes.append(
            NodePlan(
                index=index,
                name=node.name,
                host=node.host,
                address=node.address,
                role="head" if index == 0 else "worker",
                ranks=placement[index],
                command=command,
                args=engine.node_args(ctx),
                env=env,
                serves_http=engine.serves_http(ctx),
                workdir=workdir,
                log_path=posixpath.join(run_dir, f"{node.name}.log"),
                trace_dir=trace_dir,
            )
        )
    return Plan(
        run_id=run_id,
        engine=server.engine,
        backend=sched.backend,
        layout=layout,
        nodes=nodes,
        head_url=f"http://{_url_host(head.address)}:{port}",
        health_path=engine.health_path,
        port=port,
        rendezvous_port=rendezvous_port,
        config=config,
    )


def _trace_dir(config: Config, node: NodeConfig, run_id: str, run_dir: str) -> str:
    """Where each node's ranks write traces: profile.dir, a run folder on shared_dir, or local."""
    if config.profile.dir:
        return posixpath.join(config.profile.dir, run_id, node.name)
    if config.scheduler.shared_dir:
        shared = config.scheduler.shared_dir
        return posixpath.join(shared, "magpie-trace", run_id, "traces", node.name)
    return posixpath.join(run_dir, "traces")


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
