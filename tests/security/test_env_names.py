"""Issue 11 finding 7: an env name is data, never an option or a command, on any node.

Found over ssh: the key `--split-string=sh -c '...'` reached preflight's `env K=V probe` command
line and `env` ran it on every node. Env names are refused at load now, before any node is seen.
"""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.launch.simcluster import sim_config


def test_an_env_name_that_is_an_option_is_refused_before_any_node_runs_it(ssh_scheduler, tmp_path):
    config = sim_config(ssh_scheduler(2), tmp_path)
    marker = tmp_path / "ran-on-a-node"
    raw = config.to_dict()
    key = f'--split-string=sh -c "touch {marker}" #'
    raw["scheduler"]["nodes"][1]["env"] = {key: "1"}
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "launch", str(path)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert not marker.exists(), "the env name ran as a command"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: scheduler.nodes[1].env: {key!r} is not a valid environment variable name "
        "([A-Za-z_][A-Za-z0-9_]*)"]
    assert not list((tmp_path / "runs").glob("*")), "a run folder was made for a refused config"
