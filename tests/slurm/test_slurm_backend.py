"""What only the slurm backend does, on the real Slurm test cluster: steps pinned to their nodes,
env kept out of every argv and of Slurm's own records, stop of a stopped or cancelled step, the
nodes taken from an allocation, asked for, waited for and given up on, node states in preflight.
(The behaviour every backend shares is tested for slurm too, in tests/test_backends.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from magpie_trace.backends import make_backend
from magpie_trace.config import SchedulerConfig, SlurmConfig
from magpie_trace.errors import ConfigError, MagpieError, NodeError
from magpie_trace.fanout import on_nodes
from tests.fixtures.slurm_cluster import SlurmCluster
from tests.procs import group_members, wait_for
from tests.slurm.configs import outside_env

REPO = Path(__file__).resolve().parents[2]


def test_each_step_runs_on_its_own_slurm_node(slurm_cluster: SlurmCluster, slurm_job: str,
                                              tmp_path: Path) -> None:
    scheduler = slurm_cluster.scheduler(tmp_path, 3, slurm_job)
    backend = make_backend(scheduler)
    nodes = scheduler.nodes
    handles = on_nodes(lambda n: backend.start(n, ["sleep", "60"], {}, f"{backend.workdir(n)}/s.log"),
                       nodes)
    try:
        assert [handles[n.name].extra["slurm_node"] for n in nodes] == ["n1", "n2", "n3"]
        steps = {h.extra["step_id"] for h in handles.values()}
        assert len(steps) == 3 and steps <= set(" ".join(slurm_cluster.squeue()).split())
        where = on_nodes(lambda n: backend.run(n, ["sh", "-c", "echo $SLURMD_NODENAME"]).stdout, nodes)
        assert [where[n.name] for n in nodes] == ["n1\n", "n2\n", "n3\n"]
    finally:
        on_nodes(lambda n: backend.stop(n, handles[n.name], grace_s=2), nodes)
    assert all(group_members(h.pgid) == [] for h in handles.values())
    assert not any("." in line.split()[0] for line in slurm_cluster.squeue())  # no step left


def test_env_stays_out_of_argv_and_of_slurms_records(slurm_cluster: SlurmCluster, slurm_job: str,
                                                      tmp_path: Path) -> None:
    scheduler = slurm_cluster.scheduler(tmp_path, 1, slurm_job)
    backend = make_backend(scheduler)
    node = scheduler.nodes[0]
    secret = "hf_slurm_s3cret_for_test"
    handle = backend.start(node, ["sleep", "60"], {"HF_TOKEN": secret}, f"{backend.workdir(node)}/t.log")
    try:
        assert f"HF_TOKEN={secret}".encode() in Path(f"/proc/{handle.pid}/environ").read_bytes()
        step = handle.extra["step_id"]
        for argv in (["scontrol", "show", "step", step], ["scontrol", "show", "job", slurm_job],
                     ["squeue", "--steps", "--long"]):
            shown = slurm_cluster.run(*argv).stdout
            assert shown and secret not in shown, argv
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    assert secret.encode() not in Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
    finally:
        backend.stop(node, handle, grace_s=2)


def test_stop_ends_a_stopped_step(slurm_cluster: SlurmCluster, slurm_job: str, tmp_path: Path) -> None:
    """A SIGSTOPped step (a hang) still ends at stop: SIGTERM is followed by SIGCONT."""
    scheduler = slurm_cluster.scheduler(tmp_path, 1, slurm_job)
    backend = make_backend(scheduler)
    node = scheduler.nodes[0]
    handle = backend.start(node, ["sh", "-c", "sleep 60 & wait"], {}, f"{backend.workdir(node)}/h.log")
    step = handle.extra["step_id"]
    slurm_cluster.run("scancel", "--signal=STOP", step)
    assert wait_for(lambda: all(_state(pid) == "T" for pid in group_members(handle.pgid)))
    started = time.monotonic()
    backend.stop(node, handle, grace_s=5)
    assert time.monotonic() - started < 5  # the TERM took effect once the step woke up
    assert group_members(handle.pgid) == [] and not backend.alive(node, handle)
    assert backend.exit_code(node, handle) == 143  # sh's code after SIGTERM, from the exit file


def test_a_step_cancelled_from_outside_is_seen_ended(slurm_cluster: SlurmCluster, slurm_job: str,
                                                     tmp_path: Path) -> None:
    scheduler = slurm_cluster.scheduler(tmp_path, 1, slurm_job)
    backend = make_backend(scheduler)
    node = scheduler.nodes[0]
    handle = backend.start(node, ["sleep", "60"], {}, f"{backend.workdir(node)}/c.log")
    slurm_cluster.run("scancel", handle.extra["step_id"])
    assert wait_for(lambda: not backend.alive(node, handle), 15)
    assert wait_for(lambda: backend.exit_code(node, handle) is not None, 10)
    assert backend.exit_code(node, handle) == 137  # srun's: the step's processes were killed
    assert group_members(handle.pgid) == []
    backend.stop(node, handle, grace_s=1)  # nothing left to stop: harmless


def test_files_under_shared_dir_are_read_here_without_a_step(slurm_cluster: SlurmCluster, slurm_job: str,
                                                             tmp_path: Path) -> None:
    """With scheduler.shared_dir the exit file, listdir, fetch and tail read the shared filesystem
    here; a path outside it still goes through a step on the node."""
    scheduler = slurm_cluster.scheduler(tmp_path / "shared", 1, slurm_job)
    scheduler.shared_dir = str(tmp_path / "shared")
    backend = make_backend(scheduler)
    node = scheduler.nodes[0]
    workdir = backend.workdir(node)
    handle = backend.start(node, ["sh", "-c", "printf 'a b\\nlast\\n'; printf abc > out.bin; exit 3"],
                           {}, f"{workdir}/f.log")
    assert wait_for(lambda: not backend.alive(node, handle), 15)
    def no_step(*_args: object) -> list[str]:
        raise AssertionError("an srun for a path under shared_dir")

    srun, backend.command = backend.command, no_step  # type: ignore[method-assign]
    assert backend.exit_code(node, handle) == 3
    assert [(f.path, f.size) for f in backend.listdir(node, workdir, "*.bin")] == [(f"{workdir}/out.bin", 3)]
    backend.fetch(node, f"{workdir}/out.bin", str(tmp_path / "here.bin"))
    assert (tmp_path / "here.bin").read_bytes() == b"abc"
    assert backend.tail(node, f"{workdir}/f.log", 1) == "last\n"
    with pytest.raises(NodeError, match=r"^node0: cannot fetch .*/absent: No such file"):
        backend.fetch(node, f"{workdir}/absent", str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.bin").write_bytes(b"xy")
    with pytest.raises(AssertionError, match="an srun"):
        backend.listdir(node, str(outside), "*.bin")
    backend.command = srun  # type: ignore[method-assign]
    assert [f.path for f in backend.listdir(node, str(outside), "*.bin")] == [f"{outside}/x.bin"]  # a step


def test_a_node_outside_the_allocation_is_one_line(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.hold(1)  # n1 only
    try:
        scheduler = slurm_cluster.scheduler(tmp_path, 2, job)
        backend = make_backend(scheduler)
        with pytest.raises(NodeError, match=r"^node1: srun on n2: Unable to create step for job ") as info:
            backend.run(scheduler.nodes[1], ["true"])
        assert "\n" not in str(info.value)
        with pytest.raises(NodeError, match=r"^node1: cannot start sleep on Slurm node n2: Unable to "
                                            r"create step for job "):
            backend.start(scheduler.nodes[1], ["sleep", "9"], {}, f"{tmp_path}/x.log")
    finally:
        slurm_cluster.run("scancel", job)
        assert slurm_cluster.wait_idle(), slurm_cluster.squeue()


def test_preflight_refuses_a_drained_or_down_node(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    scheduler = slurm_cluster.scheduler(tmp_path, 3, "1")
    backend = make_backend(scheduler)
    backend.prepare(scheduler.nodes[2])  # idle: fine
    try:
        slurm_cluster.run("scontrol", "update", "nodename=n3", "state=drain", "reason=bad disk")
        with pytest.raises(NodeError, match=r"^node2: Slurm reports n3 drained \(bad disk\)$"):
            backend.prepare(scheduler.nodes[2])
        slurm_cluster.run("scontrol", "update", "nodename=n3", "state=resume")
        slurm_cluster.run("scontrol", "update", "nodename=n3", "state=down", "reason=power cut")
        with pytest.raises(NodeError, match=r"^node2: Slurm reports n3 down\*? \(power cut\)$"):
            backend.prepare(scheduler.nodes[2])
        # Asking for a listed node that is down fails at once, before any request.
        scheduler = SchedulerConfig(backend="slurm", nodes=scheduler.nodes[1:],
                                    workdir=str(tmp_path), slurm=SlurmConfig(wait_s=30))
        started = time.monotonic()
        with pytest.raises(NodeError, match=r"^node2: Slurm reports n3 down"):
            make_backend(scheduler).acquire_nodes()
        assert time.monotonic() - started < 5 and slurm_cluster.squeue() == []
    finally:
        slurm_cluster.run("scontrol", "update", "nodename=n3", "state=resume")
        assert wait_for(lambda: "idle" in slurm_cluster.run("sinfo", "-h", "-n", "n3", "-o", "%T").stdout, 30)


def test_nodes_come_from_the_allocation(slurm_cluster: SlurmCluster, slurm_job: str,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", slurm_job)  # as inside salloc or sbatch
    scheduler = SchedulerConfig(backend="slurm", workdir=str(tmp_path))
    make_backend(scheduler).acquire_nodes()
    assert [(n.name, n.host, n.address) for n in scheduler.nodes] == [
        ("node0", "n1", "127.0.77.1"), ("node1", "n2", "127.0.77.2"), ("node2", "n3", "127.0.77.3")]
    assert scheduler.slurm.job_id == slurm_job

    subset = SchedulerConfig(backend="slurm", workdir=str(tmp_path),
                             nodes=[scheduler.nodes[2], scheduler.nodes[0]])
    make_backend(subset).acquire_nodes()
    assert [n.host for n in subset.nodes] == ["n3", "n1"]  # the head is the first listed

    stranger = SchedulerConfig(backend="slurm", workdir=str(tmp_path), nodes=[scheduler.nodes[0]])
    stranger.nodes[0].host = "n9"
    with pytest.raises(ConfigError, match=rf"^cfg.yaml: scheduler.nodes\[0\].host: n9 is not a node "
                                          rf"of Slurm job {slurm_job} \(n1, n2, n3\)$"):
        make_backend(stranger).acquire_nodes(source="cfg.yaml")


def test_an_allocation_is_asked_for_reported_while_waiting_and_given_up(
    slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holder = slurm_cluster.hold(3)  # every node busy: a new request waits
    said: list[str] = []
    try:
        scheduler = SchedulerConfig(backend="slurm", workdir=str(tmp_path),
                                    slurm=SlurmConfig(nodes=2, partition="debug", wait_s=4))
        started = time.monotonic()
        with pytest.raises(MagpieError) as info:
            make_backend(scheduler).acquire_nodes(said.append)
        waited = time.monotonic() - started
        assert 4 <= waited < 15
        assert str(info.value).startswith(
            "scheduler.slurm: allocation (2 nodes, partition debug) not granted within 4 s "
            "(scheduler.slurm.wait_s); it was pending (Resources) in partition debug, 1st of 1 "
            "pending there")
        assert str(info.value).endswith("; cancelled")
        assert any(line.startswith("waiting 2 s for Slurm job") for line in said), said
        assert wait_for(lambda: [j.split()[0] for j in slurm_cluster.squeue()] == [holder], 10)
    finally:
        slurm_cluster.run("scancel", holder)
        assert slurm_cluster.wait_idle(), slurm_cluster.squeue()

    backend = make_backend(scheduler)  # now the cluster is free: granted, held, given back
    backend.acquire_nodes(said.append)
    try:
        assert [n.host for n in scheduler.nodes] == ["n1", "n2"]
        assert said[-1] == f"Slurm granted job {scheduler.slurm.job_id}: n1, n2"
        assert backend.run(scheduler.nodes[1], ["hostname"]).returncode == 0
    finally:
        backend.close()
    assert slurm_cluster.wait_idle(), slurm_cluster.squeue()


def test_plan_outside_an_allocation_without_nodes_is_one_line(slurm_cluster: SlurmCluster,
                                                              tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("scheduler: {backend: slurm, slurm: {nodes: 2}}\nserver: {engine: sim, model: m, tp: 2}\n")
    proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "plan", str(config)],
                          env=outside_env(slurm_cluster), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {config}: scheduler.nodes: none listed and not inside a "
                                  "Slurm allocation")
    assert proc.stderr.count("\n") == 1


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_every_allocation_setting_reaches_salloc_sbatch_and_srun(tmp_path: Path) -> None:
    """scheduler.slurm's request, as argv words (never a shell line): salloc's, the batch script's
    #SBATCH lines (the same options) and every step's srun; the user's extra args come last, so
    they win. (The loopback cluster has no accounts, QOS, GPUs or features to grant them.)"""
    from magpie_trace.backends.slurm_allocation import salloc_argv
    from magpie_trace.config import NodeConfig, config_from_dict
    from magpie_trace.submit import prepare

    slurm = SlurmConfig(partition="gpu", account="proj-1", qos="high", time="01:30:00", nodes=2,
                        gpus_per_node=8, gres="gpu:h100:8", constraint="h100&ib",
                        salloc_args=["--exclusive", "--comment=a b;$(x)"], srun_args=["--cpu-bind=none"])
    options = ["--partition=gpu", "--account=proj-1", "--qos=high", "--time=01:30:00",
               "--gres=gpu:h100:8", "--constraint=h100&ib", "--gpus-per-node=8"]
    assert salloc_argv(slurm, 2, []) == ["salloc", "--no-shell", "--job-name=magpie-trace", "--nodes=2",
                                         *options, "--exclusive", "--comment=a b;$(x)"]
    assert salloc_argv(slurm, 2, ["n1", "n3"])[-3] == "--nodelist=n1,n3"

    scheduler = SchedulerConfig(backend="slurm", nodes=[NodeConfig(host="n2", name="node0")],
                                workdir=str(tmp_path), slurm=slurm)
    srun = make_backend(scheduler).srun_argv(scheduler.nodes[0], "42", "magpie-trace-node0")
    assert srun[1:] == ["--jobid=42", "--nodes=1", "--ntasks=1", "--nodelist=n2", "--overlap",
                        "--mpi=none", "--quiet", "--job-name=magpie-trace-node0", "--cpu-bind=none"]

    slurm.salloc_args = ["--exclusive"]  # an #SBATCH line is one word
    config = config_from_dict({"scheduler": {"backend": "slurm", "slurm": slurm.__dict__},
                               "server": {"engine": "sim", "model": "m", "tp": 2},
                               "output": {"dir": str(tmp_path / "runs")}}, source="s.yaml")
    script = prepare(config, "s.yaml", [], []).script
    directives = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == ["--job-name=magpie-trace", "--nodes=2", "--signal=B:TERM@120", *options,
                          "--exclusive"]
    config.scheduler.slurm.salloc_args = ["--comment=a b"]
    with pytest.raises(ConfigError, match=r"^s.yaml: scheduler.slurm.salloc_args: '--comment=a b' cannot be "
                                          r"an #SBATCH option \(one word, no spaces\)$"):
        prepare(config, "s.yaml", [], [])
