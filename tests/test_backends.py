"""The local and ssh backends, each against the real thing (processes here, real sshd on 127.0.0.x).

The same behaviour tests run for both transports: launch code must not be able to tell them apart.
The ssh "nodes" are on this machine, so the tests can check /proc and files directly.
"""

from __future__ import annotations

import getpass
import gc
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from magpie_trace.backends import Backend, ProcessHandle, make_backend
from magpie_trace.backends.posix import exit_path
from magpie_trace.config import NodeConfig, SchedulerConfig
from magpie_trace.errors import NodeError
from magpie_trace.fanout import NodesFailed, on_nodes
from tests.backend_driver import drive
from tests.fixtures.slurm_cluster import SlurmCluster
from tests.fixtures.sshd import SshdPool
from tests.procs import group_members, wait_for

HOSTILE = "it's \"quoted\"; $(touch {canary}) `touch {canary}2` & | > < \\ *\n second line"

Cluster = Callable[[int], tuple[Backend, list[NodeConfig]]]


@pytest.fixture(params=["local", "ssh", "slurm"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """cluster(n) -> (backend, n nodes) for the parametrised transport; closed after the test.

    slurm: an allocation of the whole test cluster, the n config nodes on its Slurm nodes round
    robin (each with its own workdir); cancelled after the test."""
    backends: list[Backend] = []
    jobs: list[str] = []

    def make(count: int) -> tuple[Backend, list[NodeConfig]]:
        if request.param == "ssh":
            scheduler = request.getfixturevalue("ssh_scheduler")(count)
        elif request.param == "slurm":
            slurm: SlurmCluster = request.getfixturevalue("slurm_cluster")
            jobs.append(slurm.hold(len(slurm.nodes)))
            scheduler = slurm.scheduler(tmp_path / "nodes", count, jobs[-1])
        else:
            nodes = [NodeConfig(host="localhost", name=f"node{i}") for i in range(count)]
            workdir = str(tmp_path / "nodes")
            scheduler = SchedulerConfig(backend="local", nodes=nodes, workdir=workdir)
        backend = make_backend(scheduler)
        backends.append(backend)
        return backend, scheduler.nodes

    yield make
    for backend in backends:
        backend.close()
    if jobs:
        slurm = request.getfixturevalue("slurm_cluster")
        slurm.run("scancel", *jobs)
        assert slurm.wait_idle(), slurm.squeue()


def test_start_alive_stop_leaves_no_process(cluster: Cluster) -> None:
    backend, (node,) = cluster(1)
    log = f"{backend.workdir(node)}/logs/tree.log"
    tree = "sleep 60 & sleep 60 & sh -c 'sleep 60' & echo started; wait"
    handle = backend.start(node, ["sh", "-c", tree], {}, log)
    assert handle.pgid == handle.pid and handle.backend == backend.name
    assert wait_for(lambda: len(group_members(handle.pgid)) >= 5)  # wrapper, sh, 3 sleeps
    assert backend.alive(node, handle)
    assert backend.exit_code(node, handle) is None
    assert wait_for(lambda: "started" in Path(log).read_text())
    assert Path(backend.workdir(node)).is_dir()

    backend.stop(node, handle, grace_s=3)
    assert group_members(handle.pgid) == []
    assert not backend.alive(node, handle)
    backend.stop(node, handle, grace_s=1)  # stopping twice is harmless


def test_stop_escalates_to_sigkill(cluster: Cluster) -> None:
    backend, (node,) = cluster(1)
    stubborn = "trap '' TERM; echo armed; while :; do sleep 0.1; done"
    log = f"{backend.workdir(node)}/stubborn.log"
    handle = backend.start(node, ["sh", "-c", stubborn], {}, log)
    assert wait_for(lambda: "armed" in Path(handle.log_path).read_text())
    started = time.monotonic()
    backend.stop(node, handle, grace_s=0.5)
    assert 0.4 < time.monotonic() - started < 5
    # Slurm: the step leaves squeue as its slurmstepd reports the kill, which one CI-mode run saw
    # a moment before the last task of the group was gone.
    assert wait_for(lambda: group_members(handle.pgid) == [], 2.0), group_members(handle.pgid)


def test_exit_code_of_failing_command(cluster: Cluster) -> None:
    backend, (node,) = cluster(1)
    log = f"{backend.workdir(node)}/fail.log"
    handle = backend.start(node, ["sh", "-c", "echo oops >&2; exit 3"], {}, log)
    assert wait_for(lambda: backend.exit_code(node, handle) is not None) is True
    assert backend.exit_code(node, handle) == 3
    assert not backend.alive(node, handle)
    assert Path(exit_path(log)).read_text().strip() == "3"
    assert handle.extra["exit_path"] == exit_path(log)
    assert "oops" in Path(log).read_text()
    assert "oops" in backend.tail(node, log)


def test_missing_program_exits_127(cluster: Cluster) -> None:
    backend, (node,) = cluster(1)
    log = f"{backend.workdir(node)}/missing.log"
    handle = backend.start(node, ["no-such-program-xyz"], {}, log)
    assert wait_for(lambda: backend.exit_code(node, handle) == 127)
    assert "no-such-program-xyz" in Path(handle.log_path).read_text()


def test_state_survives_the_launching_process(cluster: Cluster) -> None:
    """`launch` starts and exits; a later `stop` (another process) finds exit codes and groups."""
    backend, (node,) = cluster(1)
    sleeper, fails = (ProcessHandle.from_dict(d) for d in json.loads(drive(backend, 0, "launch")))
    assert wait_for(lambda: backend.exit_code(node, fails) == 5)
    assert backend.alive(node, sleeper)
    assert group_members(sleeper.pgid)
    backend.stop(node, sleeper, grace_s=2)
    assert group_members(sleeper.pgid) == []


def test_run(cluster: Cluster) -> None:
    backend, (node,) = cluster(1)
    result = backend.run(node, ["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert (result.returncode, result.stdout, result.stderr) == (4, "out\n", "err\n")
    assert backend.run(node, ["cat"], input=b"from stdin").stdout == "from stdin"
    assert backend.run(node, ["no-such-program-xyz"]).returncode == 127
    with pytest.raises(NodeError, match=rf"^{node.name}: sleep timed out"):
        backend.run(node, ["sleep", "5"], timeout_s=0.5)


def test_fetch_is_exact_and_atomic(cluster: Cluster, tmp_path: Path) -> None:
    backend, (node,) = cluster(1)
    source = Path(backend.workdir(node)) / "trace.json.gz"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    target = tmp_path / "fetched" / "node0-TP0.trace.json.gz"
    backend.fetch(node, str(source), str(target))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest

    missing = tmp_path / "fetched" / "missing.bin"
    with pytest.raises(NodeError, match=rf"^{node.name}: cannot fetch .*/nope\.gz: .*No such file"):
        backend.fetch(node, str(source.parent / "nope.gz"), str(missing))
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp, no partial


def test_listdir(cluster: Cluster) -> None:
    backend, (node,) = cluster(1)
    folder = Path(backend.workdir(node)) / "traces"
    (folder / "sub.json.gz").mkdir(parents=True)
    (folder / "rank 0.json.gz").write_bytes(b"x" * 10)
    (folder / "rank1.json.gz").write_bytes(b"y" * 20)
    (folder / "notes.txt").write_text("z")
    os.utime(folder / "rank1.json.gz", (1_700_000_000.5, 1_700_000_000.5))

    files = backend.listdir(node, str(folder), "*.json.gz")
    assert [(f.path, f.size) for f in files] == [
        (f"{folder}/rank 0.json.gz", 10),
        (f"{folder}/rank1.json.gz", 20),
    ]
    assert files[1].mtime == pytest.approx(1_700_000_000.5)
    assert len(backend.listdir(node, str(folder))) == 3
    assert backend.listdir(node, str(folder / "not-yet")) == []


def test_hostile_values_arrive_unchanged_and_execute_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    backend, (node,) = cluster(1)
    canary = tmp_path / "pwned"
    value = HOSTILE.format(canary=canary)
    model = Path(backend.workdir(node)) / value.replace("/", "_").replace("\n", " ")
    model.mkdir(parents=True)
    echo = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ.get('MT_VALUE')]))"
    argv = [sys.executable, "-c", echo, str(model), value]

    log = f"{backend.workdir(node)}/echo.log"
    handle = backend.start(node, argv, {"MT_VALUE": value}, log, cwd=str(model))
    assert wait_for(lambda: backend.exit_code(node, handle) == 0)
    assert json.loads(Path(handle.log_path).read_text()) == [[str(model), value], value]

    result = backend.run(node, argv)
    assert json.loads(result.stdout)[0] == [str(model), value]
    assert backend.listdir(node, str(model)) == []
    assert not canary.exists() and not Path(f"{canary}2").exists()


def test_env_values_stay_out_of_command_lines(cluster: Cluster) -> None:
    """Tokens in env reach the process but never any argv (ps shows argv to every user)."""
    backend, (node,) = cluster(1)
    secret = "hf_s3cret_value_for_test"
    log = f"{backend.workdir(node)}/t.log"
    handle = backend.start(node, ["sleep", "60"], {"HF_TOKEN": secret}, log)
    try:
        environ = Path(f"/proc/{handle.pid}/environ").read_bytes()
        assert f"HF_TOKEN={secret}".encode() in environ
        assert processes_mentioning(secret) == []
    finally:
        backend.stop(node, handle, grace_s=2)


def test_bad_env_name_is_refused(cluster: Cluster) -> None:
    backend, (node,) = cluster(1)
    with pytest.raises(NodeError, match=r"^node0: env: 'A;B' is not a valid variable name"):
        backend.start(node, ["true"], {"A;B": "x"}, f"{backend.workdir(node)}/x.log")


def test_fanout_on_8_nodes_is_parallel(cluster: Cluster) -> None:
    backend, nodes = cluster(8)
    on_nodes(lambda n: backend.run(n, ["true"]), nodes)  # ssh: open the control masters
    started = time.monotonic()
    results = on_nodes(lambda n: backend.run(n, ["sh", "-c", "sleep 1; echo done"]), nodes)
    elapsed = time.monotonic() - started
    assert list(results) == [n.name for n in nodes]
    assert all(r.stdout == "done\n" for r in results.values())
    assert elapsed < 4, f"8 nodes took {elapsed:.2f} s; one node takes ~1 s, serial 8 s"

    handles = on_nodes(
        lambda n: backend.start(n, ["sleep", "60"], {}, f"{backend.workdir(n)}/s.log"), nodes
    )
    assert len({h.pgid for h in handles.values()}) == 8
    assert all(on_nodes(lambda n: backend.alive(n, handles[n.name]), nodes).values())
    on_nodes(lambda n: backend.stop(n, handles[n.name], grace_s=2), nodes)
    assert all(group_members(h.pgid) == [] for h in handles.values())


# ---------------------------------------------------------------------------------------------
# ssh only


def test_ssh_unreachable_host_names_node_quickly(
    ssh_scheduler: Callable[..., SchedulerConfig],
) -> None:
    scheduler = ssh_scheduler(2)
    with socket.socket() as probe:  # a port on 127.0.0.2 with nothing listening
        probe.bind(("127.0.0.2", 0))
        dead_port = probe.getsockname()[1]
    scheduler.nodes[1].ssh_port = dead_port
    backend = make_backend(scheduler)
    try:
        started = time.monotonic()
        refused = r"^node1: ssh 127\.0\.0\.3: .*Connection refused"
        with pytest.raises(NodeError, match=refused) as info:
            backend.run(scheduler.nodes[1], ["true"])
        assert info.value.node == "node1"
        with pytest.raises(NodeError, match=r"^node1: ssh .*Connection refused"):
            backend.start(scheduler.nodes[1], ["sleep", "1"], {}, "/tmp/x.log")
        assert time.monotonic() - started < 3

        with pytest.raises(NodesFailed, match=r"^node1: ssh .*Connection refused$") as many:
            on_nodes(lambda n: backend.run(n, ["echo", n.name]), scheduler.nodes)
        assert many.value.results["node0"].stdout == "node0\n"
        assert list(many.value.failures) == ["node1"]
    finally:
        backend.close()


def test_ssh_refused_key_names_node(
    ssh_scheduler: Callable[..., SchedulerConfig], tmp_path: Path
) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    scheduler = ssh_scheduler(1)
    scheduler.nodes[0].ssh_identity = str(key)  # the node's own setting wins over the default
    backend = make_backend(scheduler)
    try:
        with pytest.raises(NodeError, match=r"^node0: ssh 127\.0\.0\.2: .*Permission denied"):
            backend.run(scheduler.nodes[0], ["true"])
    finally:
        backend.close()


def test_ssh_node_settings_win_over_defaults(
    ssh_scheduler: Callable[..., SchedulerConfig],
) -> None:
    scheduler = ssh_scheduler(1)
    scheduler.ssh.port = 1  # wrong default, overridden by the node's ssh_port
    scheduler.ssh.user = "nobody-here"
    scheduler.nodes[0].ssh_user = getpass.getuser()  # the test sshd runs as, and admits, this user
    backend = make_backend(scheduler)
    try:
        assert backend.run(scheduler.nodes[0], ["id", "-un"]).stdout == f"{getpass.getuser()}\n"
    finally:
        backend.close()


def test_ssh_close_ends_control_masters(
    ssh_scheduler: Callable[..., SchedulerConfig],
) -> None:
    scheduler = ssh_scheduler(1)
    for forget in (False, True):
        backend = make_backend(scheduler)
        backend.run(scheduler.nodes[0], ["true"])
        control_dir = backend._control_dir  # type: ignore[attr-defined]
        assert len(os.listdir(control_dir)) == 1  # one master socket for the node
        assert processes_mentioning(control_dir)  # the master: "ssh: <dir>/<hash> [mux]"
        if forget:
            del backend
            gc.collect()
        else:
            backend.close()
        assert not os.path.exists(control_dir)
        assert wait_for(lambda: not processes_mentioning(control_dir), timeout_s=3)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_ssh_session_sees_this_python_and_pool_home(
    ssh_scheduler: Callable[..., SchedulerConfig], sshd_pool: SshdPool
) -> None:
    """The fixture's remote login env: the tests' python first on PATH, a light HOME."""
    scheduler = ssh_scheduler(1)
    backend = make_backend(scheduler)
    try:
        probe = "import os, sys; print(os.environ['HOME']); print(sys.prefix)"
        result = backend.run(scheduler.nodes[0], ["python3", "-c", probe])
        home, prefix = result.stdout.splitlines()
        assert home == str(sshd_pool.home)
        assert prefix == sys.prefix
        path = backend.run(scheduler.nodes[0], ["sh", "-c", 'printf %s "$PATH"']).stdout
        assert path == sshd_pool.path
    finally:
        backend.close()
