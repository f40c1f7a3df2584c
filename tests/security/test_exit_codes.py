"""Issue 11 finding 13: the same death reads the same on every backend.

Found with an engine killed by SIGKILL: ssh reported code 137 (the shell's 128 + 9), Ray -9
(Python's Popen). Every backend now reports the shell's convention, and names the signal.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from magpie_trace.backends import make_backend
from magpie_trace.config import SimConfig
from magpie_trace.errors import MagpieError
from magpie_trace.launch import load_state
from magpie_trace.run import run
from magpie_trace.rundir import RunDir
from tests.launch.simcluster import sim_config
from tests.procs import group_members, leftover_processes, wait_for
from tests.security.runs import scheduler_for


def engine_pids(pgid: int) -> list[int]:
    """The sim engine's own process(es) in a started group (not the wrapper shell around it)."""
    pids = []
    for pid in group_members(pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"magpie_trace.engines.sim" in cmdline and not cmdline.startswith(b"sh\0"):
            pids.append(pid)
    return pids


@pytest.mark.parametrize("backend", ["ssh", "ray"])
def test_an_engine_killed_by_sigkill_is_code_137_on_every_backend(backend, request, tmp_path):
    config = sim_config(scheduler_for(backend, request, tmp_path), tmp_path, sim=SimConfig(startup_s=0.2, ttft_ms=5, itl_ms=5))
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 16, 50, 400
    bench.concurrency, bench.warmup_requests = [4], 1
    killed: list[int] = []

    def on_progress(message: str) -> None:
        if message == "stage bench":  # every node serves: kill node1's engine as the OOM killer would
            run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
            handle = load_state(run_dir).handles["node1"]
            for pid in engine_pids(handle.pgid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with pytest.raises(MagpieError) as info:
        run(config, progress=on_progress)
    assert killed, "no engine process was found to kill"
    message = str(info.value)
    # The node's monitor may see the engine's group empty before the code is written.
    assert message.startswith("node1: ") and ("exited with code 137 (SIGKILL)" in message
                                              or "has no process left" in message), message
    assert info.value.exit_code == 3
    run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
    run_json = json.loads((run_dir.root / "run.json").read_text())
    assert run_json["ok"] is False and run_json["error"] == message
    assert run_dir.report_md.is_file()
    state = load_state(run_dir)
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)
    backend = make_backend(config.scheduler)
    try:  # what the backend says, from the node's exit-code file: the same on every backend
        assert backend.exit_code(config.scheduler.nodes[1], state.handles["node1"]) == 137
    finally:
        backend.close()
