"""Checks on every node, in parallel, before anything starts.

The classic multi-node failures are cheap to find up front and expensive to find after a 40-minute
model load: a different engine version on one node, a different copy of the model, a port held by
a leftover server, fewer GPUs than planned. Each failure is one line naming the node. The clock
offset of every node from the head is measured here too and kept as the merge's first estimate.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from magpie_trace.backends.base import Backend
from magpie_trace.errors import MagpieError, NodeError
from magpie_trace.fanout import on_nodes
from magpie_trace.fsutil import atomic_write_bytes
from magpie_trace.plan import NodePlan, Plan
from magpie_trace.rundir import RunDir

# Constant scripts; config values only ever travel as separate argv words.
_PORTS_SCRIPT = """
import socket, sys
busy = []
for port in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not busy
    try:
        s.bind(("0.0.0.0", int(port)))
    except OSError:
        busy.append(port)
    finally:
        s.close()
print(" ".join(busy))
"""
# `date` starts in about a millisecond; a Python probe's ~150 ms start would swamp the measurement.
_CLOCK_ARGV = ["date", "+%s%N"]
_MODEL_SCRIPT = """
import hashlib, os, sys
root = os.path.join(sys.argv[2], os.path.expanduser(sys.argv[1]))  # relative: to the node's workdir
if not os.path.isdir(root):
    print("missing")
    raise SystemExit(0)
for name in ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"):
    path = os.path.join(root, name)
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            print(name, hashlib.sha256(handle.read()).hexdigest())
"""
_GPU_PROBES = (
    ("nvidia", ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]),
    ("amd", ["amd-smi", "list", "--csv"]),
)
CLOCK_SAMPLES = 5


@dataclass
class NodeCheck:
    node: str
    engine_version: str | None = None
    model_files: dict[str, str] = field(default_factory=dict)
    gpus: int | None = None
    gpu_vendor: str | None = None
    clock_offset_ns: int = 0
    clock_rtt_ns: int = 0
    problems: list[str] = field(default_factory=list)


def python_of(plan: Plan) -> str:
    """The interpreter the engine runs under on the nodes (for the small probe scripts)."""
    first = plan.head.command[0]
    return first if "python" in first.rsplit("/", 1)[-1] else "python3"


def model_is_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~"))


def check_node(plan: Plan, backend: Backend, node: NodePlan) -> NodeCheck:
    """Gather facts about one node (no comparison with the head yet)."""
    config = plan.node_config(node.index)
    if node.argv is not None:
        backend.prepare(config)  # e.g. Ray boots the node's agent while the checks run
    python = python_of(plan)
    check = NodeCheck(node=node.name)
    check.engine_version = _engine_version(plan, backend, node)
    if model_is_path(plan.config.server.model):
        out = backend.run(config, [python, "-c", _MODEL_SCRIPT, plan.config.server.model, node.workdir], 60).stdout
        if out.strip() == "missing":
            check.problems.append(f"model path {plan.config.server.model} does not exist")
        for line in out.splitlines():
            name, _, digest = line.partition(" ")
            if digest:
                check.model_files[name] = digest
    ports = _planned_ports(plan, node)
    if ports:
        result = backend.run(config, [python, "-c", _PORTS_SCRIPT, *map(str, ports)], 30)
        busy = result.stdout.split()
        if busy:
            check.problems.append(f"port {', '.join(busy)} already in use")
    if plan.engine != "sim":
        check.gpu_vendor, check.gpus = _count_gpus(backend, config)
        if check.gpus is not None and check.gpus < len(node.ranks):
            check.problems.append(
                f"has {check.gpus} {check.gpu_vendor} GPUs, the plan puts {len(node.ranks)} ranks here"
            )
    check.clock_offset_ns, check.clock_rtt_ns = measure_clock_offset(backend, config, node.env)
    return check


def _engine_version(plan: Plan, backend: Backend, node: NodePlan) -> str | None:
    command = node.command
    probes = {
        "vllm": [*command, "--version"],
        "sglang": [python_of(plan), "-c", "import sglang; print(sglang.__version__)"],
        "sim": [python_of(plan), "-c", "import magpie_trace; print(magpie_trace.__version__)"],
    }
    # The engine may need the node's env to start at all (PATH, LD_LIBRARY_PATH, ...).
    result = backend.run_with_env(plan.node_config(node.index), probes[plan.engine], node.env, 120)
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        return None
    return lines[-1]


def _planned_ports(plan: Plan, node: NodePlan) -> list[int]:
    ports = []
    group = plan.group_of(node)
    group_head = node.index == group.nodes[0]
    if node.serves_http or plan.engine == "sglang":
        ports.append(node.port)  # SGLang's worker nodes bind it too, for their dummy /health
    if group_head and node.argv is not None and plan.config.server.executor != "ray":
        ports.append(group.rendezvous_port)  # vLLM's Ray executor rendezvouses through Ray
    if group_head and group.role == "prefill" and group.bootstrap_port is not None:
        ports.append(group.bootstrap_port)  # the KV handoff listener decode servers reach
    if plan.router is not None and plan.router.index == node.index:
        ports += [plan.router.port, plan.router.metrics_port]
    return ports


def check_router(plan: Plan, backend: Backend) -> None:
    """The router's command must start on its node (`--help` answers), under the env it will
    start with (router.env: a PATH or LD_LIBRARY_PATH it needs, say)."""
    router = plan.router
    if router is None:
        return
    result = backend.run_with_env(plan.node_config(router.index), [*router.command, "--help"],
                                  router.env, 120)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise NodeError(plan.label(router.name),
                        f"preflight: {shlex.join(router.command)} does not start: {detail}")


def _count_gpus(backend: Backend, config: Any) -> tuple[str | None, int | None]:
    for vendor, argv in _GPU_PROBES:
        try:
            result = backend.run(config, argv, 30)
        except MagpieError:
            continue
        if result.returncode == 0:
            rows = [r for r in result.stdout.splitlines() if r.strip()]
            if vendor == "amd":
                rows = rows[1:]  # header
            return vendor, len(rows)
    return None, None


def measure_clock_offset(backend: Backend, config: Any, env: dict[str, str] | None = None
                         ) -> tuple[int, int]:
    """(offset_ns, rtt_ns) of the node's wall clock from ours, from the round trip with least RTT.

    Read under the node's env (through run_with_env: values never in argv), so the clock is the
    one its engine sees (a preloaded libfaketime, say)."""
    best: tuple[int, int] | None = None
    for _ in range(CLOCK_SAMPLES):
        t0 = time.time_ns()
        result = backend.run_with_env(config, _CLOCK_ARGV, env or {}, 30)
        t1 = time.time_ns()
        try:
            remote = int(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0, 0
        rtt = t1 - t0
        if best is None or rtt < best[1]:
            best = (remote - (t0 + t1) // 2, rtt)
    assert best is not None
    return best


def run_preflight(plan: Plan, backend: Backend, run_dir: RunDir | None = None) -> list[NodeCheck]:
    """Check every node at once; raise one NodeError for the first node with a problem."""
    results = on_nodes(lambda node: check_node(plan, backend, node), plan.nodes)
    checks = [results[node.name] for node in plan.nodes]
    head = checks[0]
    for check in checks[1:]:
        if head.engine_version and check.engine_version and check.engine_version != head.engine_version:
            check.problems.append(
                f"{plan.engine} {check.engine_version} differs from the head's {head.engine_version}"
            )
        for name, digest in check.model_files.items():
            if name in head.model_files and head.model_files[name] != digest:
                check.problems.append(f"model {name} differs from the head's copy (sha256)")
    head_offset = head.clock_offset_ns
    for check in checks:
        check.clock_offset_ns -= head_offset
    if run_dir is not None:
        data = {
            "schema": "magpie-trace/preflight/1",
            "nodes": [asdict(check) for check in checks],
            "clock_offsets_ns": {c.node: c.clock_offset_ns for c in checks},
        }
        atomic_write_bytes(run_dir.preflight, orjson.dumps(data, option=orjson.OPT_INDENT_2))
    for node, check in zip(plan.nodes, checks):
        if check.engine_version is None:
            check.problems.insert(0, f"{plan.engine} is not installed or does not start ({shlex.join(node.command)})")
    for check in checks:
        if check.problems:
            raise NodeError(plan.label(check.node), "preflight: " + "; ".join(check.problems))
    check_router(plan, backend)
    return checks


