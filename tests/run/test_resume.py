"""A resume (`run --from STAGE`) is a new attempt on the same run folder: it keeps what earlier
attempts measured and says so. A bench that failed is not made `ok` by collecting after it, and a
new bench does not overwrite the partial results of the one before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from magpie_trace.bench.results import attempts as bench_attempts
from magpie_trace.launch import load_state
from tests.launch.simcluster import local_scheduler
from tests.procs import children_of
from tests.run.ending import (
    REPO,
    check_torn_down,
    error_lines,
    long_run_config,
    only_run_dir,
    read_until,
    run_json,
    start_cli,
    stop_leftovers,
    write_config,
)
from tests.run.report_statements import check_statements


def test_resumes_are_attempts_that_keep_earlier_measurements(tmp_path, request):
    scheduler = local_scheduler(tmp_path, 2)
    for i, node in enumerate(scheduler.nodes):
        node.name = f"node{i}"
    config = long_run_config(scheduler, tmp_path)
    config.profile.enabled = True
    config.profile.start_after_s, config.profile.duration_s = 0.2, 0.5
    path = str(write_config(config, tmp_path))
    request.addfinalizer(lambda: stop_leftovers(config))

    # Attempt 1: the capture completes, then node1 dies in the measured load.
    proc = start_cli(["run", path])
    try:
        seen = read_until(proc, "magpie-trace: c2:")
        run_dir = only_run_dir(config)
        os.kill(children_of(load_state(run_dir).handles["node1"].pid)[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, "".join(seen) + err
    check_torn_down(run_dir)
    first_bench = bench_attempts(run_dir.bench)
    assert len(first_bench) == 1
    partial = (first_bench[0] / "result.json").read_bytes()

    # Attempt 2: collect, merge and report what attempt 1 captured. The bench stays failed.
    again = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "run", path, "--from", "collect",
                            "--run", str(run_dir.root)], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "the run is not ok: bench failed in attempt 1: node1: " in again.stderr
    data = run_json(run_dir)
    assert data["ok"] is False and data["bench_valid"] is False
    assert data["error"].startswith("bench failed in attempt 1: node1: ")
    stages = {s["name"]: (s["status"], s["attempt"]) for s in data["stages"]}
    assert stages == {"launch": ("ok", 1), "bench": ("failed", 1), "collect": ("ok", 2),
                      "merge": ("ok", 2), "analyze": ("ok", 2), "report": ("ok", 2)}
    assert [(a["attempt"], a["from"], a["ok"]) for a in data["attempts"]] == [(1, None, False), (2, "collect", True)]
    assert (run_dir.traces / "manifest.json").is_file() and "bench" in data["outputs"]
    report = run_dir.report_md.read_text()
    assert "## Attempts" in report and "bench failed in attempt 1" in report
    check_statements(run_dir)

    # Attempt 3: a new launch and bench; attempt 1's partial bench results are kept as they were.
    third = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "run", path, "--from", "bench",
                            "--run", str(run_dir.root)], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr
    assert not error_lines(third.stderr)
    benches = bench_attempts(run_dir.bench)
    assert len(benches) == 2 and (benches[0] / "result.json").read_bytes() == partial
    data = run_json(run_dir)
    assert data["ok"] is True and data["error"] is None and data["bench_valid"] is True
    assert {s["name"]: s["attempt"] for s in data["stages"]} == {
        "launch": 3, "bench": 3, "collect": 3, "merge": 3, "analyze": 3, "report": 3}
    assert [a["ok"] for a in data["attempts"]] == [False, True, True]
    check_torn_down(run_dir)
    check_statements(run_dir)
