"""Every rank process of every node is watched: a killed rank, a killed engine main process or a
frozen (SIGSTOPped) node ends the benchmark within seconds naming the node and the process, and
that node's whole process tree is stopped. Over ssh, with `magpie-trace bench` on a launched run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from magpie_trace.bench.results import read_result

from magpie_trace.launch import load_state
from tests.launch.test_launch_ray import ray_scheduler
from tests.procs import children_of, group_members, leftover_processes, wait_for
from tests.run.ending import (
    error_lines,
    long_run_config,
    only_run_dir,
    read_until,
    start_cli,
    stop_leftovers,
    write_config,
)

PROMPT_S = 20.0  # bench's exit after the failure, teardown of the node included (a busy 2 cores)
STALL_S = 60.0  # the no-progress check would fire only after this: the process is named first


def rank_pid(pgid: int, rank: int) -> int:
    """The sim rank process serving global rank `rank` in a node's process group."""
    for pid in group_members(pgid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"engines.sim.ranks" in cmdline and f'"global_rank":{rank},'.encode() in cmdline:
            return pid
    raise AssertionError(f"no rank {rank} in group {pgid}")


def engine_pid(backend: str, handle) -> int:
    """ssh runs the engine under a launcher shell; Ray's agent execs it (the group leader)."""
    return children_of(handle.pid)[0] if backend == "ssh" else handle.pid


@pytest.mark.parametrize(
    "backend, what", [("ssh", "rank"), ("ssh", "main"), ("ssh", "frozen"), ("ray", "rank"), ("ray", "frozen")]
)
def test_the_node_and_process_that_failed_are_named_and_its_tree_stopped(backend, what, tmp_path, request):
    if backend == "ssh":
        scheduler = request.getfixturevalue("ssh_scheduler")(2)
    else:
        scheduler = ray_scheduler(request.getfixturevalue("ray_cluster"), tmp_path, 2)
    config = long_run_config(scheduler, tmp_path)
    config.benchmark.num_prompts = 400
    config.benchmark.stall_timeout_s = STALL_S
    path = write_config(config, tmp_path)
    request.addfinalizer(lambda: stop_leftovers(config))
    launch = start_cli(["launch", str(path)])
    _, err = launch.communicate(timeout=120)
    assert launch.returncode == 0, err
    run_dir = only_run_dir(config)
    handles = load_state(run_dir).handles
    node1 = handles["node1"].pgid
    proc = start_cli(["bench", str(path)])
    try:
        seen = read_until(proc, "magpie-trace: c2:")
        time.sleep(1.0)  # into the measured load
        if what == "rank":
            victim = rank_pid(node1, 2)  # node1 hosts ranks 2 and 3
            os.kill(victim, signal.SIGKILL)
        elif what == "main":
            victim = engine_pid(backend, handles["node1"])
            os.kill(victim, signal.SIGKILL)
        else:
            victim = engine_pid(backend, handles["node1"])
            os.killpg(node1, signal.SIGSTOP)
        hit = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - hit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + err
    assert proc.returncode == 3, err
    errors = error_lines(err)
    assert len(errors) == 1, err
    expected = {
        "rank": f"error: node1: rank 2 {victim} exited during the benchmark",
        "main": f"error: node1: engine process {victim} exited with code 137 during the benchmark",
        "frozen": f"error: node1: engine process {victim} is stopped (SIGSTOP?): the node is frozen",
    }[what]
    assert errors[0].startswith(expected), err
    assert took < PROMPT_S, (took, err)
    data = read_result(run_dir.bench)
    assert data["valid"] is False and data["abort"]["node"] == "node1"
    assert data["points"][0]["point"] == "c2"
    # node1's whole tree is stopped (a frozen one too); node0 still serves, for the user to stop
    assert wait_for(lambda: not leftover_processes([node1]), 15), leftover_processes([node1])
    assert group_members(handles["node0"].pgid)
