"""The ray backend against a real 3-node Ray cluster on loopback (tests/fixtures/ray_cluster.py).

Every Ray node here has IP 127.0.0.1, so config nodes map to Ray nodes by label or id, and each
node's processes inherit MAGPIE_TEST_NODE=<its label>: a command can say where it ran. The nodes
share this machine, so the tests check /proc and files directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.missing import require_module

ray = require_module("ray", "pip install -e '.[ray]'")
from ray.exceptions import RayActorError  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from magpie_trace.backends import ProcessHandle, make_backend  # noqa: E402
from magpie_trace.backends.posix import exit_path  # noqa: E402
from magpie_trace.backends.ray import RayBackend, agent_name  # noqa: E402
from magpie_trace.config import NodeConfig, RayConfig, SchedulerConfig  # noqa: E402
from magpie_trace.errors import MagpieError, NodeError  # noqa: E402
from magpie_trace.fanout import on_nodes  # noqa: E402
from tests.backend_driver import drive  # noqa: E402
from tests.fixtures.ray_cluster import ENV, LABEL, RayCluster  # noqa: E402
from tests.procs import group_members, wait_for  # noqa: E402

WHERE = f"import os, sys; print(os.environ[{ENV!r}], *sys.argv[1:])"


@pytest.fixture(scope="module")
def backend(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayBackend]:
    scheduler = ray_cluster.scheduler(str(tmp_path_factory.mktemp("ray-nodes")))
    made = make_backend(scheduler)
    assert isinstance(made, RayBackend)
    yield made
    made.close()


def _node(backend: RayBackend, label: str) -> NodeConfig:
    return next(n for n in backend.scheduler.nodes if n.name == label)


def test_commands_land_on_the_right_node(backend: RayBackend, ray_cluster: RayCluster) -> None:
    for node in backend.scheduler.nodes:
        assert backend.ray_node_id(node) == ray_cluster.node_ids[node.name]
        assert (
            backend.run(node, [sys.executable, "-c", WHERE, "run"]).stdout == f"{node.name} run\n"
        )
    handles = {
        node.name: backend.start(
            node, [sys.executable, "-c", WHERE, "start"], {}, f"{backend.workdir(node)}/where.log"
        )
        for node in backend.scheduler.nodes
    }
    for node in backend.scheduler.nodes:
        handle = handles[node.name]
        assert wait_for(lambda n=node, h=handle: backend.exit_code(n, h) == 0, timeout_s=10)
        assert Path(handle.log_path).read_text() == f"{node.name} start\n"
        backend.stop(node, handle)

    by_id = NodeConfig(host="127.0.0.1", name="by-id", ray_node_id=ray_cluster.node_ids["n2"])
    assert backend.run(by_id, [sys.executable, "-c", WHERE]).stdout == "n2\n"


def test_start_alive_stop_leaves_no_process(backend: RayBackend) -> None:
    node = _node(backend, "n1")
    log = f"{backend.workdir(node)}/logs/tree.log"
    tree = "sleep 60 & sleep 60 & sh -c 'sleep 60' & echo started; wait"
    began = time.monotonic()
    handle = backend.start(node, ["sh", "-c", tree], {"MT_VALUE": "x y"}, log)
    start_s = time.monotonic() - began
    assert handle.pgid == handle.pid and handle.backend == "ray"
    assert handle.extra["ray_node_id"] == backend.ray_node_id(node)
    assert handle.extra["actor"] == agent_name(handle.extra["ray_node_id"])
    assert wait_for(lambda: len(group_members(handle.pgid)) >= 4)  # sh, 3 sleeps
    assert backend.alive(node, handle)
    assert backend.exit_code(node, handle) is None
    assert wait_for(lambda: "started" in Path(log).read_text())
    assert Path(backend.workdir(node)).is_dir()

    with pytest.raises(NodeError, match=r"^n1: a command logging to .*tree\.log is still running"):
        backend.start(node, ["true"], {}, log)

    began = time.monotonic()
    backend.stop(node, handle, grace_s=3)
    stop_s = time.monotonic() - began
    assert group_members(handle.pgid) == []
    with pytest.raises(ValueError):  # its agent held nothing else, so it is gone too
        ray.get_actor(handle.extra["actor"], namespace=handle.extra["namespace"])
    assert not backend.alive(node, handle)
    assert backend.exit_code(node, handle) == 128 + signal.SIGTERM  # as a shell says; from the exit file
    backend.stop(node, handle, grace_s=1)  # stopping twice is harmless
    print(f"ray start {start_s:.2f} s, stop {stop_s:.2f} s")

    again = backend.start(node, ["sleep", "60"], {}, log)  # on a new agent
    assert again.extra["actor"] == handle.extra["actor"] and backend.alive(node, again)
    backend.stop(node, again, grace_s=1)
    assert group_members(again.pgid) == []


def test_stop_escalates_to_sigkill(backend: RayBackend) -> None:
    node = _node(backend, "n2")
    stubborn = "trap '' TERM; echo armed; while :; do sleep 0.1; done"
    handle = backend.start(node, ["sh", "-c", stubborn], {}, f"{backend.workdir(node)}/stub.log")
    assert wait_for(lambda: "armed" in Path(handle.log_path).read_text())
    started = time.monotonic()
    backend.stop(node, handle, grace_s=0.5)
    assert 0.4 < time.monotonic() - started < 5
    assert group_members(handle.pgid) == []
    assert Path(exit_path(handle.log_path)).read_text() == f"{128 + signal.SIGKILL}\n"


def test_commands_get_every_signal(backend: RayBackend) -> None:
    """Ray's worker threads block SIGINT; the commands they fork must not inherit that. What the
    user's own shell ignores (nohup: SIGHUP) they ignore too, as the cluster's processes do."""
    node = _node(backend, "n0")
    masks = "grep -E '^Sig(Blk|Ign)' /proc/self/status"
    here = subprocess.run(["sh", "-c", masks], capture_output=True, text=True, check=True).stdout.split()
    ours = here[3]  # what a command started from this shell ignores
    assert backend.run(node, ["sh", "-c", masks]).stdout.split() == [
        "SigBlk:", "0" * 16, "SigIgn:", ours,
    ]  # fmt: skip
    assert not int(ours, 16) & (1 << (signal.SIGINT - 1)), "this shell ignores Ctrl-C: run the tests from one that does not"
    waiting = "import time; print('armed', flush=True); time.sleep(60)"
    handle = backend.start(
        node, [sys.executable, "-c", waiting], {}, f"{backend.workdir(node)}/i.log"
    )
    assert wait_for(lambda: "armed" in Path(handle.log_path).read_text())
    os.killpg(handle.pgid, signal.SIGINT)  # as a user's Ctrl-C on that node would
    assert wait_for(lambda: backend.exit_code(node, handle) is not None)
    assert backend.exit_code(node, handle) == 128 + signal.SIGINT  # Python re-raises it at exit
    assert "KeyboardInterrupt" in Path(handle.log_path).read_text()
    backend.stop(node, handle)


def test_exit_code_env_and_missing_program(backend: RayBackend, ray_cluster: RayCluster) -> None:
    node = _node(backend, "n0")
    script = (
        "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
        "('MT_VALUE', 'RAY_ADDRESS', 'RAY_JOB_ID')}), flush=True); raise SystemExit(3)"
    )
    log = f"{backend.workdir(node)}/fail.log"
    value = 'it\'s "quoted"; $(touch pwned) & | >'
    handle = backend.start(node, [sys.executable, "-c", script], {"MT_VALUE": value}, log)
    assert wait_for(lambda: backend.exit_code(node, handle) is not None, timeout_s=10)
    assert backend.exit_code(node, handle) == 3
    assert not backend.alive(node, handle)
    assert Path(exit_path(log)).read_text().strip() == "3"
    assert handle.extra["exit_path"] == exit_path(log)
    seen = json.loads(Path(log).read_text())
    assert seen == {"MT_VALUE": value, "RAY_ADDRESS": ray_cluster.address, "RAY_JOB_ID": None}
    backend.stop(node, handle)

    missing = backend.start(node, ["no-such-program-xyz"], {}, f"{backend.workdir(node)}/m.log")
    assert wait_for(lambda: backend.exit_code(node, missing) == 127, timeout_s=10)
    assert "no-such-program-xyz" in backend.tail(node, missing.log_path)
    rerun = backend.start(node, ["sh", "-c", "exit 7"], {}, missing.log_path)  # ended, not stopped
    assert wait_for(lambda: backend.exit_code(node, rerun) == 7, timeout_s=10)
    backend.stop(node, rerun)


DRIVER = (
    "import ray; ray.init(logging_level='error'); "
    f"print(sorted(n['Labels'][{LABEL!r}] for n in ray.nodes() if n['Alive']))"
)


def test_a_started_command_can_drive_the_cluster(backend: RayBackend) -> None:
    """vLLM's Ray executor: the head's command is itself a Ray driver of the same cluster."""
    node = _node(backend, "n1")
    log = f"{backend.workdir(node)}/driver.log"
    handle = backend.start(node, [sys.executable, "-c", DRIVER], {}, log)
    assert wait_for(lambda: backend.exit_code(node, handle) is not None, timeout_s=60)
    assert (backend.exit_code(node, handle), Path(log).read_text()) == (0, "['n0', 'n1', 'n2']\n")
    backend.stop(node, handle)


def test_run(backend: RayBackend) -> None:
    node = _node(backend, "n1")
    result = backend.run(node, ["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert backend.run(node, ["sh", "-c", "echo ${RAY_JOB_ID-unset}"]).stdout == "unset\n"
    assert (result.returncode, result.stdout, result.stderr) == (4, "out\n", "err\n")
    assert backend.run(node, ["cat"], input=b"from stdin").stdout == "from stdin"
    assert backend.run(node, ["no-such-program-xyz"]).returncode == 127
    started = time.monotonic()
    with pytest.raises(NodeError, match=r"^n1: sh timed out after 0.5 s"):
        backend.run(node, ["sh", "-c", "sleep 30 & sleep 30; wait"], timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_fetch_is_exact_and_atomic(backend: RayBackend, tmp_path: Path) -> None:
    node = _node(backend, "n2")
    source = Path(backend.workdir(node)) / "rank0.pt.trace.json.gz"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(os.urandom(20 * 1024 * 1024 + 7))  # three chunks, the last one short
    target = tmp_path / "fetched" / "node2-TP0.trace.json.gz"
    backend.fetch(node, str(source), str(target))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest

    empty = source.with_name("empty.txt")
    empty.write_bytes(b"")
    backend.fetch(node, str(empty), str(tmp_path / "fetched" / "empty.txt"))
    assert (tmp_path / "fetched" / "empty.txt").read_bytes() == b""

    with pytest.raises(NodeError, match=r"^n2: cannot fetch .*/nope\.gz: No such file"):
        backend.fetch(node, str(source.parent / "nope.gz"), str(tmp_path / "fetched" / "x"))
    assert sorted(p.name for p in target.parent.iterdir()) == ["empty.txt", target.name]


def test_listdir(backend: RayBackend) -> None:
    node = _node(backend, "n0")
    folder = Path(backend.workdir(node)) / "traces"
    (folder / "sub.json.gz").mkdir(parents=True)
    (folder / "rank 0.json.gz").write_bytes(b"x" * 10)
    (folder / "rank1.json.gz").write_bytes(b"y" * 20)
    (folder / "notes.txt").write_text("z")
    os.symlink(folder / "notes.txt", folder / "link.json.gz")
    os.utime(folder / "rank1.json.gz", (1_700_000_000.5, 1_700_000_000.5))

    files = backend.listdir(node, str(folder), "*.json.gz")
    assert [(f.path, f.size) for f in files] == [
        (f"{folder}/rank 0.json.gz", 10),
        (f"{folder}/rank1.json.gz", 20),
    ]
    assert files[1].mtime == pytest.approx(1_700_000_000.5)
    assert len(backend.listdir(node, str(folder))) == 3
    assert backend.listdir(node, str(folder / "not-yet")) == []


def test_node_code_is_shipped_by_value(backend: RayBackend, ray_cluster: RayCluster) -> None:
    """Ray nodes need Ray, not magpie-trace: workers that ran our code never imported it."""
    node = _node(backend, "n1")
    backend.run(node, ["true"])
    backend.listdir(node, "/")

    def imported() -> list[str]:
        return sorted(name for name in sys.modules if name.startswith("magpie_trace"))

    here = NodeAffinitySchedulingStrategy(ray_cluster.node_ids["n1"], soft=False)
    task = ray.remote(imported).options(num_cpus=0, scheduling_strategy=here)  # run's workers
    assert ray.get(task.remote(), timeout=60) == []


def test_fanout_on_8_nodes(backend: RayBackend, ray_cluster: RayCluster) -> None:
    """8 config nodes over the 3 Ray nodes, started and stopped at once (as launch does)."""
    labels = ray_cluster.labels
    nodes = [
        NodeConfig(host="127.0.0.1", name=f"w{i}", ray_labels={LABEL: labels[i % len(labels)]})
        for i in range(8)
    ]
    began = time.monotonic()
    handles = on_nodes(
        lambda n: backend.start(n, ["sleep", "60"], {}, f"{backend.workdir(n)}/s.log"), nodes
    )
    start_s = time.monotonic() - began
    assert len({h.pgid for h in handles.values()}) == 8
    assert {h.extra["ray_node_id"] for h in handles.values()} == set(ray_cluster.node_ids.values())
    agents = {h.extra["actor"] for h in handles.values()}
    assert len(agents) == 3  # one agent per Ray node, shared by the parallel starts
    assert all(on_nodes(lambda n: backend.alive(n, handles[n.name]), nodes).values())
    backend.stop(nodes[0], handles["w0"], grace_s=2)  # w3 and w6 share its agent: it stays
    assert backend.alive(nodes[3], handles["w3"]) and backend.alive(nodes[6], handles["w6"])
    rest = nodes[1:]
    began = time.monotonic()
    on_nodes(lambda n: backend.stop(n, handles[n.name], grace_s=2), rest)
    print(f"8 starts {start_s:.2f} s, 7 stops {time.monotonic() - began:.2f} s")
    assert all(group_members(h.pgid) == [] for h in handles.values())
    assert not any(on_nodes(lambda n: backend.alive(n, handles[n.name]), nodes).values())
    namespace = backend.scheduler.ray.namespace
    assert wait_for(lambda: not any(_exists(a, namespace) for a in agents))  # nothing left behind


def test_a_start_meeting_a_closing_agent(backend: RayBackend) -> None:
    """An agent that holds nothing closes: it refuses new commands until its last stopper kills
    it. A start that meets it (that stopper was slow, or died before the kill) kills it and
    starts on a new agent."""
    node = _node(backend, "n2")
    wd = backend.workdir(node)
    first = backend.start(node, ["sleep", "60"], {}, f"{wd}/closing-a.log")
    namespace = backend.scheduler.ray.namespace
    agent = ray.get_actor(first.extra["actor"], namespace=namespace)
    os.killpg(first.pgid, signal.SIGKILL)  # it ends without a stop through the backend
    assert wait_for(lambda: backend.exit_code(node, first) == 128 + signal.SIGKILL)
    assert ray.get(agent.close_if_idle.remote(), timeout=30) is True  # closing, not yet killed

    second = backend.start(node, ["sleep", "60"], {}, f"{wd}/closing-b.log")
    assert backend.alive(node, second) and group_members(second.pgid) == [second.pgid]
    with pytest.raises(RayActorError):  # the closing agent was killed; second has a new one
        ray.get(agent.close_if_idle.remote(), timeout=30)
    assert not backend.alive(node, first)
    assert backend.exit_code(node, first) == 128 + signal.SIGKILL  # from its exit file
    backend.stop(node, first)  # harmless: the new agent never held it
    assert backend.alive(node, second)
    backend.stop(node, second, grace_s=1)
    assert group_members(second.pgid) == []
    assert wait_for(lambda: not _exists(second.extra["actor"], namespace))


def _exists(actor: str, namespace: str) -> bool:
    try:
        ray.get_actor(actor, namespace=namespace)
    except ValueError:
        return False
    return True


def test_stop_from_a_fresh_driver(backend: RayBackend) -> None:
    """`launch` starts and exits; `stop`, another process, finds the actors and ends the group."""
    node = _node(backend, "n2")
    sleeper, fails = (ProcessHandle.from_dict(d) for d in json.loads(drive(backend, 2, "launch")))
    assert sleeper.extra["ray_node_id"] == backend.ray_node_id(node)
    assert wait_for(lambda: backend.exit_code(node, fails) == 5, timeout_s=10)
    assert backend.alive(node, sleeper)
    assert len(group_members(sleeper.pgid)) == 3  # sh and two sleeps

    assert drive(backend, 2, "stop", json.dumps(sleeper.to_dict())) == f"{128 + signal.SIGTERM}\n"
    assert group_members(sleeper.pgid) == []
    assert not backend.alive(node, sleeper)
    backend.stop(node, fails)


def test_unmatched_and_ambiguous_nodes(backend: RayBackend, ray_cluster: RayCluster) -> None:
    nowhere = NodeConfig(host="127.0.0.1", name="gpu9", ray_labels={LABEL: "n9"})
    with pytest.raises(
        NodeError,
        match=r"^gpu9: no alive Ray node has ray_labels \{magpie-node=n9\}; "
        r"alive Ray nodes: .*127\.0\.0\.1 \{magpie-node=n0\}",
    ) as info:
        backend.run(nowhere, ["true"])
    assert info.value.node == "gpu9"
    with pytest.raises(NodeError, match=r"^gpu9: no alive Ray node has host 10\.9\.9\.9"):
        backend.start(NodeConfig(host="10.9.9.9", name="gpu9"), ["true"], {}, "/tmp/x.log")
    with pytest.raises(NodeError, match=r"^gpu9: no alive Ray node has ray_node_id abc"):
        backend.listdir(NodeConfig(host="127.0.0.1", name="gpu9", ray_node_id="abc"), "/")
    with pytest.raises(NodeError, match=r"^lo: host 127\.0\.0\.1 matches 3 Ray nodes .*ray_labels"):
        backend.run(NodeConfig(host="127.0.0.1", name="lo"), ["true"])


def test_a_node_that_is_gone(backend: RayBackend, ray_cluster: RayCluster) -> None:
    ray_cluster.add_node("n3")
    node = NodeConfig(host="127.0.0.1", name="n3", ray_labels={LABEL: "n3"})
    handle = backend.start(node, ["sleep", "60"], {}, f"{backend.workdir(node)}/s.log")
    try:
        assert backend.alive(node, handle)
        ray_cluster.remove_node("n3")
        gone = r"^n3: (Ray node \w+ is gone|.*Ray actor is gone)"
        with pytest.raises(NodeError, match=gone):
            wait_for(lambda: not backend.alive(node, handle), timeout_s=10)
        with pytest.raises(NodeError, match=r"^n3: Ray node \w+ is gone: .+"):
            backend.run(node, ["true"])
        with pytest.raises(NodeError, match=gone):
            backend.stop(node, handle)
    finally:
        if group_members(handle.pgid):  # the node's raylet is gone; the test ends what is left
            os.killpg(handle.pgid, signal.SIGKILL)


def test_an_address_without_a_cluster_fails_fast(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scheduler = SchedulerConfig(
        backend="ray",
        nodes=[NodeConfig(host="127.0.0.1", name="n0")],
        ray=RayConfig(address=f"127.0.0.1:{port}"),
    )
    started = time.monotonic()
    with pytest.raises(MagpieError, match=rf"^scheduler\.ray\.address: cannot reach .*:{port}: "):
        RayBackend(scheduler)
    assert time.monotonic() - started < 3
    scheduler.ray.address = "local"
    with pytest.raises(MagpieError, match=r"would start a new Ray instance"):
        RayBackend(scheduler)
    scheduler.ray.address = "ray://127.0.0.1:10001"
    with pytest.raises(MagpieError, match=r"Ray Client addresses are not supported"):
        RayBackend(scheduler)
