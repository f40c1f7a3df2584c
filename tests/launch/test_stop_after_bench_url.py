"""`stop CONFIG`, as launch prints it, always finds what launch started: a `bench --url` (an
endpoint this run did not launch) in between must not take its place as the latest run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from magpie_trace.launch import load_state
from tests.procs import leftover_processes, wait_for
from tests.run.ending import REPO, long_run_config, stop_leftovers, write_config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "magpie_trace.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180)


def test_stop_config_after_bench_url_without_out_stops_the_launched_run(tmp_path, request, ssh_scheduler):
    config = long_run_config(ssh_scheduler(2), tmp_path)
    path = str(write_config(config, tmp_path))
    request.addfinalizer(lambda: stop_leftovers(config))
    launched = cli("launch", path, "--json")
    assert launched.returncode == 0, launched.stderr
    started = json.loads(launched.stdout)
    run_dir = Path(started["run_dir"])
    pgids = [h["pgid"] for h in started["handles"].values()]

    bench = cli("bench", path, "--url", started["url"], "-c", "2", "-n", "4")
    assert bench.returncode == 0, bench.stderr
    result = Path(bench.stdout.strip().splitlines()[-1].removeprefix("results: "))
    assert json.loads(result.read_text())["points"][0]["completed"] == 4  # its results are kept
    assert (Path(config.output.dir) / "latest").resolve() == run_dir.resolve()

    stopped = cli("stop", path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped 2 node(s)")
    assert wait_for(lambda: not leftover_processes(pgids), 15), leftover_processes(pgids)
    assert load_state(__import__("magpie_trace.rundir").rundir.RunDir(run_dir)).stopped_at
