"""Helpers the security tests share: a run in a process of its own, a scheduler by backend name."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from magpie_trace.config import SchedulerConfig
from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir
from tests.launch.test_launch_ray import ray_scheduler
from tests.procs import wait_for


def scheduler_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path, nodes: int = 2) -> SchedulerConfig:
    """`nodes` sshd or Ray nodes (the session's fixtures)."""
    if backend == "ssh":
        return request.getfixturevalue("ssh_scheduler")(nodes)
    return ray_scheduler(request.getfixturevalue("ray_cluster"), tmp_path, nodes)


@contextmanager
def running(config_path: Path, output_dir: str) -> Iterator[tuple[subprocess.Popen[str], RunDir]]:
    """`magpie-trace run CONFIG` in a process of its own, once every node is ready; killed on
    leaving if it is still running (the test failed)."""
    proc = subprocess.Popen([sys.executable, "-m", "magpie_trace.cli", "run", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state_file = wait_for(lambda: next(Path(output_dir).glob("2*/state.json"), None), 60)
        assert state_file, "the run never launched"
        run_dir = RunDir(state_file.parent)
        assert wait_for(lambda: load_state(run_dir).ready_at is not None, 60)
        yield proc, run_dir
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
