"""A separate process that uses a backend the way `magpie-trace launch` and `stop` do: one starts
and exits, a later one stops from the handles alone. Shared by the ssh, Ray and Slurm backend tests.

    python tests/backend_driver.py SCHEDULER_JSON NODE_INDEX launch
    python tests/backend_driver.py SCHEDULER_JSON NODE_INDEX stop HANDLE_JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

from magpie_trace.backends import Backend, ProcessHandle, make_backend
from magpie_trace.config import NodeConfig, RayConfig, SchedulerConfig, SlurmConfig, SshConfig


def drive(backend: Backend, node_index: int, *args: str) -> str:
    """Run this script in a fresh interpreter against `backend`'s scheduler; its stdout."""
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps(asdict(backend.scheduler)), str(node_index), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _main(raw_scheduler: str, node_index: str, action: str, *rest: str) -> None:
    raw = json.loads(raw_scheduler)
    raw["nodes"] = [NodeConfig(**n) for n in raw["nodes"]]
    raw["ssh"] = SshConfig(**raw["ssh"])
    raw["ray"] = RayConfig(**raw["ray"])
    raw["slurm"] = SlurmConfig(**raw["slurm"])
    backend = make_backend(SchedulerConfig(**raw))
    node = backend.scheduler.nodes[int(node_index)]
    workdir = backend.workdir(node)
    if action == "launch":  # a group that outlives us, and a command that fails
        handles = [
            backend.start(node, ["sh", "-c", "sleep 60 & sleep 60"], {}, workdir + "/sleeper.log"),
            backend.start(node, ["sh", "-c", "exit 5"], {}, workdir + "/fails.log"),
        ]
        print(json.dumps([h.to_dict() for h in handles]))
    else:
        handle = ProcessHandle.from_dict(json.loads(rest[0]))
        backend.stop(node, handle, grace_s=2)
        print(backend.exit_code(node, handle))
    backend.close()


if __name__ == "__main__":
    _main(*sys.argv[1:])
