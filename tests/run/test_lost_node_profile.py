"""A node lost while the profile window is open, or while the ranks write their files, ends the
run within seconds naming the node, instead of holding the cluster for profile.timeout_s."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from magpie_trace.bench.results import read_result

from magpie_trace.launch import load_state
from tests.run.ending import (
    check_torn_down,
    error_lines,
    long_run_config,
    only_run_dir,
    read_until,
    run_json,
    stages,
    start_cli,
    stop_leftovers,
    write_config,
)

PROMPT_S = 15.0  # the run must end this soon after the node is lost (profile.timeout_s is 600)


def kill_node(run_dir, name: str) -> None:
    """SIGKILL a node's whole process group, as a machine that loses power would."""
    os.killpg(load_state(run_dir).handles[name].pgid, signal.SIGKILL)


def profiled_config(scheduler, tmp_path, bench: bool):
    config = long_run_config(scheduler, tmp_path)
    config.profile.enabled = True
    config.profile.start_after_s, config.profile.duration_s = 0.5, 60.0
    config.benchmark.enabled = bench
    config.benchmark.num_prompts = 400
    return config


@pytest.mark.parametrize("when", ["capture-only", "capture-during-bench", "awaiting-files"])
def test_a_node_lost_in_the_profile_window_ends_the_run_naming_it(when, tmp_path, request, ssh_scheduler):
    """awaiting-files: a step window (profile.max_iterations) that never closes, so the run waits
    for every rank's trace file; node1's files will never come."""
    bench = when == "capture-during-bench"
    config = profiled_config(ssh_scheduler(2), tmp_path, bench)
    if when == "awaiting-files":
        config.profile.max_iterations = 1_000_000  # never reached
    request.addfinalizer(lambda: stop_leftovers(config))
    proc = start_cli(["run", str(write_config(config, tmp_path))])
    try:
        if when == "awaiting-files":
            seen = read_until(proc, "magpie-trace: waiting for the step window to close")
            time.sleep(1.0)  # a look or two at the nodes' files has been made
        else:
            seen = read_until(proc, "magpie-trace: capture ")  # "capture <id> open on <url>"
        run_dir = only_run_dir(config)
        kill_node(run_dir, "node1")
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + err
    assert took < PROMPT_S, (took, err)
    assert proc.returncode == 3, err
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("error: node1: "), err
    check_torn_down(run_dir)
    data = run_json(run_dir)
    assert data["ok"] is False and data["error"].startswith("node1: ")
    assert stages(run_dir)["report"] == "ok"
    captures = json.loads((run_dir.root / "captures.json").read_text())["captures"]
    assert captures[-1]["stopped_at"] is None  # opened, never completed
    if bench:
        result = read_result(run_dir.bench)
        assert result["valid"] is False and result["abort"]["node"] == "node1"


def test_profile_command_names_a_node_lost_in_the_window(tmp_path, request, ssh_scheduler):
    """`magpie-trace profile` on a launched server: same promptness, the node named."""
    config = profiled_config(ssh_scheduler(2), tmp_path, bench=False)
    path = write_config(config, tmp_path)
    request.addfinalizer(lambda: stop_leftovers(config))
    launch = start_cli(["launch", str(path)])
    _, err = launch.communicate(timeout=120)
    assert launch.returncode == 0, err
    run_dir = only_run_dir(config)
    proc = start_cli(["profile", str(path), "--duration", "60"])
    try:
        seen = read_until(proc, "magpie-trace: capture ")
        kill_node(run_dir, "node1")
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + err
    assert took < PROMPT_S, (took, err)
    assert proc.returncode == 3, err
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("error: node1: "), err
    captures = json.loads((run_dir.root / "captures.json").read_text())["captures"]
    assert captures[-1]["stopped_at"] is None  # recorded as opened, never completed


def test_a_frozen_node_in_the_profile_window_is_named_not_its_url(tmp_path, request, ssh_scheduler):
    """SIGSTOP: the process exists, the head's /stop_profile just never answers. The node is
    named (its engine is stopped), within seconds, not the head's URL after profile.timeout_s."""
    config = profiled_config(ssh_scheduler(2), tmp_path, bench=False)
    request.addfinalizer(lambda: stop_leftovers(config))
    proc = start_cli(["run", str(write_config(config, tmp_path))])
    try:
        seen = read_until(proc, "magpie-trace: capture ")
        run_dir = only_run_dir(config)
        os.killpg(load_state(run_dir).handles["node1"].pgid, signal.SIGSTOP)
        frozen = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - frozen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + err
    assert took < PROMPT_S, (took, err)
    assert proc.returncode == 3, err
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("error: node1: engine process "), err
    assert "is stopped (SIGSTOP?): the node is frozen during the profile capture" in errors[0]
    check_torn_down(run_dir)  # a frozen node is stopped too (SIGKILL after the grace period)
    assert run_json(run_dir)["error"].startswith("node1: ")

