"""`collect --allow-missing` takes a partial capture: the ranks with a complete trace are brought
in, the missing ones are named on the command line and listed in manifest.json. Over ssh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.run.ending import REPO, long_run_config, only_run_dir, stop_leftovers, write_config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "magpie_trace.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180)


def test_allow_missing_collects_the_rest_and_names_the_missing_ranks(tmp_path, request, ssh_scheduler):
    config = long_run_config(ssh_scheduler(2), tmp_path)
    config.profile.enabled = True
    path = str(write_config(config, tmp_path))
    request.addfinalizer(lambda: stop_leftovers(config))
    launched = cli("launch", path)
    assert launched.returncode == 0, launched.stderr
    captured = cli("profile", path, "--duration", "0.5", "--json")
    assert captured.returncode == 0, captured.stderr
    record = json.loads(captured.stdout)
    stopped = cli("stop", path)
    assert stopped.returncode == 0, stopped.stderr
    lost = next(t for t in record["traces"] if t["rank"] and t["rank"]["global_rank"] == 3)
    Path(lost["path"]).unlink()  # node1's rank 3 never wrote its file

    whole = cli("collect", path)
    assert whole.returncode == 1
    assert whole.stderr.strip().splitlines()[-1].endswith("node1: no trace for rank 3 (TP3)")

    partial = cli("collect", path, "--allow-missing")
    assert partial.returncode == 0, partial.stderr
    assert "warning: partial capture: 1 rank(s) missing: node1 rank 3 (TP3)" in partial.stderr
    run_dir = only_run_dir(config)
    names = {p.name for p in run_dir.traces.glob("*.trace.json.gz")}
    assert names == {"node0-TP0.trace.json.gz", "node0-TP1.trace.json.gz", "node1-TP2.trace.json.gz",
                     "node0-api-server.trace.json.gz"}
    manifest = json.loads((run_dir.traces / "manifest.json").read_text())
    assert manifest["missing"] == [{"node": 1, "node_name": "node1", "global_rank": 3, "rank": "rank 3 (TP3)"}]
    assert manifest["problems"] == ["node1: no trace for rank 3 (TP3)"]
