"""Launch fan-out: time to ready with the sim engine on 1 node vs 8 nodes, for each backend.

`launch` starts every node at once (preflight, start and readiness checks fan out in parallel), so
8 nodes should be ready about as fast as 1. This script measures it against real transports:
local processes, real sshd instances on 127.0.0.2... (its own, started here, as in the tests),
a temporary Ray cluster on loopback (config nodes mapped by label onto its Ray nodes, round robin)
and a temporary Slurm cluster on loopback (its own munged, slurmctld and slurmd, as in the tests;
one allocation of all its nodes, config nodes mapped onto them round robin, each a job step).

Each launch is a fresh `launch(plan, run_dir)` with its own backend object (cold ssh control
masters, as in a new `magpie-trace launch` process); the sim starts after 0.2 s. Figures are the
median over --repeat launches: preflight, start -> ready (start every node, wait for /health and
every node alive), total launch, and stop (every process group ended, logs fetched).

    python benchmarks/launch_fanout.py [--nodes 1 8] [--backends local ssh ray slurm] [--repeat 3]
        [--ray-nodes 3] [--slurm-nodes 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magpie_trace.backends import make_backend
from magpie_trace.config import SchedulerConfig
from magpie_trace.launch import launch, stop
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir

# Importing the fixture module sets what keeps a loopback cluster's driver on 127.0.0.1; ray itself
# is imported later, in ray_nodes().
from tests.fixtures import ray_cluster as ray_fixture
from tests.fixtures.sshd import SshdPool
from tests.launch.simcluster import local_scheduler, sim_config
from tests.launch.test_launch_ray import ray_scheduler

SchedulerFor = Callable[[Path, int], SchedulerConfig]


@contextmanager
def ssh_nodes(root: Path) -> Iterator[SchedulerFor]:
    pool = SshdPool(root)
    try:
        yield lambda tmp, n: pool.scheduler(n, str(tmp / "nodes"))
    finally:
        pool.close()


@contextmanager
def ray_nodes(count: int) -> Iterator[SchedulerFor]:
    """A temporary loopback Ray cluster of `count` nodes; only what it started is shut down."""
    import ray
    from ray.cluster_utils import Cluster

    began = time.monotonic()
    head_args = {**ray_fixture._node_args("n0"), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head_args, shutdown_at_exit=True)
    try:
        ids = {"n0": cluster.head_node.node_id}
        for i in range(1, count):
            ids[f"n{i}"] = cluster.add_node(**ray_fixture._node_args(f"n{i}")).node_id
        cluster.wait_for_nodes()
        handle = ray_fixture.RayCluster(cluster, time.monotonic() - began, ids)
        print(f"ray: {count}-node cluster up in {handle.start_s:.1f} s", file=sys.stderr)
        yield lambda tmp, n: ray_scheduler(handle, tmp, n)
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextmanager
def slurm_nodes(root: Path, count: int) -> Iterator[SchedulerFor]:
    """A temporary loopback Slurm cluster of `count` nodes and one allocation of all of them."""
    import os

    from tests.fixtures import slurm_cluster as slurm_fixture

    cluster = slurm_fixture.start_cluster(root, count)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        print(f"slurm: {count}-node cluster up in {cluster.start_s:.1f} s", file=sys.stderr)
        job = cluster.hold(count)
        yield lambda tmp, n: cluster.scheduler(tmp / "nodes", n, job)
    finally:
        cluster.close()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def one_launch(scheduler_for: SchedulerFor, nodes: int, root: Path) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(dir=root))
    config = sim_config(scheduler_for(tmp, nodes), tmp)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    try:
        began = time.monotonic()
        state = launch(plan, run_dir, backend)
        total = time.monotonic() - began
        assert state.ready_at is not None
        stop_began = time.monotonic()
        stop(plan, run_dir, backend, state)
        stopped = time.monotonic() - stop_began
    finally:
        backend.close()
    ready = state.ready_at - state.started_at
    return {"preflight": total - ready, "ready": ready, "total": total, "stop": stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=["local", "ssh", "ray", "slurm"],
                        choices=["local", "ssh", "ray", "slurm"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray-nodes", type=int, default=3, help="Ray nodes in the temporary cluster")
    parser.add_argument("--slurm-nodes", type=int, default=3, help="slurmd in the temporary cluster")
    args = parser.parse_args()

    rows = []
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mt-fanout-")))
        for name in args.backends:
            if name == "local":
                scheduler_for: SchedulerFor = lambda tmp, n: local_scheduler(tmp, n)
            elif name == "ssh":
                (root / "sshd").mkdir()
                scheduler_for = stack.enter_context(ssh_nodes(root / "sshd"))
            elif name == "ray":
                scheduler_for = stack.enter_context(ray_nodes(args.ray_nodes))
            else:
                (root / "slurm").mkdir()
                scheduler_for = stack.enter_context(slurm_nodes(root / "slurm", args.slurm_nodes))
            for nodes in args.nodes:
                runs = [one_launch(scheduler_for, nodes, root) for _ in range(args.repeat)]
                row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                rows.append((name, nodes, row))
                print(f"{name} {nodes}: {row}", file=sys.stderr)

    print(f"{'backend':8} {'nodes':>5} {'preflight s':>12} {'start->ready s':>15} "
          f"{'launch s':>9} {'stop s':>7}")
    for name, nodes, row in rows:
        print(f"{name:8} {nodes:5d} {row['preflight']:12.2f} {row['ready']:15.2f} "
              f"{row['total']:9.2f} {row['stop']:7.2f}")


if __name__ == "__main__":
    main()
