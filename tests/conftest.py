"""Shared test fixtures. Each fixture module registers itself in pytest_plugins below."""

import os
import sys

# The tests' "nodes" run `python3` for their probes and children, as a user's activated venv
# would give them; install.sh and CI run `.venv/bin/python -m pytest` without activating it, so
# its bin folder goes first on PATH here (else a system python3 without magpie_trace answers).
_BIN = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

pytest_plugins: list[str] = [
    "tests.fixtures.engine_env",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.slurm_cluster",
    "tests.fixtures.sshd",
]
