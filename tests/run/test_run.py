"""`magpie-trace run` end to end with the sim engine over real ssh and Ray backends, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from magpie_trace.bench import latest_attempt, read_result
from magpie_trace.config import SimConfig
from magpie_trace.errors import MagpieError
from magpie_trace.launch import load_state
from magpie_trace.run import STAGES, run
from magpie_trace.rundir import RunDir
from tests.launch.simcluster import local_scheduler, sim_config
from tests.launch.test_launch_ray import ray_scheduler
from tests.procs import leftover_processes, wait_for
from tests.run.ending import read_until
from tests.run.report_statements import check_statements

OFFSET_MS = 2.5


def small_run_config(scheduler, tmp_path, **sim):
    config = sim_config(
        scheduler, tmp_path, ranks_per_node=2, profile=True,
        sim=SimConfig(startup_s=0.2, ttft_ms=10, itl_ms=5, clock_offset_ms={1: OFFSET_MS}, **sim),
    )
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 32, 24, 24
    bench.concurrency, bench.warmup_requests = [2, 8], 2
    config.profile.start_after_s, config.profile.duration_s = 0.2, 0.8
    return config


def check_run_layout(run_dir: RunDir, nodes: int, ranks_per_node: int) -> None:
    root = run_dir.root
    for name in ("run.json", "config.yaml", "plan.json", "state.json", "preflight.json",
                 "report.md", "report.html", "captures.json"):
        assert (root / name).is_file(), name
    assert sorted(p.name for p in run_dir.logs.iterdir()) == [f"node{i}.log" for i in range(nodes)]
    bench = latest_attempt(run_dir.bench)
    assert bench is not None and bench.name == "attempt-001"
    result = json.loads((bench / "result.json").read_text())
    # The capture runs in a load point of its own, before the measured ones, marked as such.
    assert result["valid"] is True and [p["point"] for p in result["points"]] == ["profile-c8", "c2", "c8"]
    assert [p["profiled"] for p in result["points"]] == [True, False, False]
    assert result["points"][0]["stopped_by"] == "until"
    assert (bench / "sweep.csv").read_text().count("\n") == 4
    assert (bench / "requests.jsonl").stat().st_size > 0
    assert {p.name for p in (bench / "plots").glob("*.png")} >= {
        "throughput_vs_concurrency.png", "ttft_vs_concurrency.png", "tpot_vs_concurrency.png",
        "throughput_vs_latency.png"}
    world = nodes * ranks_per_node
    expected = {f"node{r // ranks_per_node}-TP{r}.trace.json.gz" for r in range(world)}
    traces = {p.name for p in run_dir.traces.glob("*.trace.json.gz")}
    assert traces == expected | {"node0-api-server.trace.json.gz"}
    manifest = json.loads((run_dir.traces / "manifest.json").read_text())
    assert sorted(f["global_rank"] for f in manifest["files"] if f["kind"] == "rank") == list(range(world))
    merged = run_dir.merged
    aligned = {p.name for p in (merged / "aligned").iterdir()}
    assert {f"node{r // ranks_per_node}-TP{r}-rank{r}.trace.json.gz" for r in range(world)} <= aligned
    for name in ("merged.trace.json.gz", "alignment.json", "collectives.parquet", "collectives.csv",
                 "nodes.parquet", "nodes.csv"):
        assert (merged / name).is_file(), name
    # run's merge writes the events table (merge alone does so when asked); analyze reused it
    assert (merged / "events" / "meta.json").is_file()
    assert json.loads((merged / "analysis" / "analysis.json").read_text())["events"]["built"] is False
    if nodes > 1:
        alignment = json.loads((merged / "alignment.json").read_text())
        offset_ms = alignment["nodes"]["node1"]["offset_ns"] / 1e6
        # Node 1's clock runs 2.5 ms ahead; the merge must take that back out.
        assert abs(abs(offset_ms) - OFFSET_MS) < 0.05, offset_ms
    report = run_dir.report_md.read_text()
    for title in ("Topology and plan", "Benchmark", "Per node", "Clock alignment", "Cross-node collectives"):
        assert title in report
    assert "| profile-c8 | yes: profiler overhead |" in report
    check_statements(run_dir)  # every sentence the report derives, against its own tables
    html = run_dir.report_html.read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    run_json = json.loads((root / "run.json").read_text())
    assert run_json["schema"] == "magpie-trace/run/1" and run_json["ok"] is True
    assert [(s["name"], s["status"]) for s in run_json["stages"]] == [(name, "ok") for name in STAGES]


@pytest.mark.parametrize("backend", ["ssh", "ray"])
def test_run_end_to_end_writes_every_promised_output(backend, tmp_path, request):
    if backend == "ssh":
        scheduler = request.getfixturevalue("ssh_scheduler")(2)
    else:
        scheduler = ray_scheduler(request.getfixturevalue("ray_cluster"), tmp_path, 2)
    config = small_run_config(scheduler, tmp_path)
    result = run(config)
    run_dir = RunDir(result.run_dir)
    check_run_layout(run_dir, nodes=2, ranks_per_node=2)
    assert result.tracelens_command and "--world_size 4" in result.tracelens_command
    state = load_state(run_dir)
    assert state.stopped_at is not None
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)


def test_resume_from_merge_uses_only_files_on_disk(tmp_path):
    config = small_run_config(local_scheduler(tmp_path, 2), tmp_path)
    first = run(config)
    merged = RunDir(first.run_dir).merged
    (merged / "alignment.json").unlink()
    again = run(config, from_stage="merge", run_ref=str(first.run_dir))
    assert again.run_dir == first.run_dir
    assert (merged / "alignment.json").is_file()
    # A resume is attempt 2: the stages it did not run keep attempt 1's record.
    statuses = {s.name: (s.status, s.attempt) for s in again.stages}
    assert statuses == {"launch": ("ok", 1), "bench": ("ok", 1), "collect": ("ok", 1),
                        "merge": ("ok", 2), "analyze": ("ok", 2), "report": ("ok", 2)}
    assert again.ok and [a["from"] for a in again.attempts] == [None, "merge"]


def test_ctrl_c_mid_run_leaves_no_process(tmp_path):
    config = small_run_config(local_scheduler(tmp_path, 2), tmp_path)
    config.benchmark.num_prompts, config.benchmark.output_len = 2000, 200
    config.profile.enabled = False
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "magpie_trace.cli", "run", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    runs = Path(config.output.dir)
    try:
        seen = read_until(proc, "magpie-trace: c2:")
        run_dir = RunDir(next(runs.glob("*/state.json")).parent)
        time.sleep(1.0)  # the measured load is under way
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        err = "".join(seen) + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "error: interrupted (partial results, marked invalid:" in err
    state = load_state(run_dir)
    assert state.stopped_at is not None
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)
    for handle in state.handles.values():
        assert not os.path.exists(f"/proc/{handle.pid}") or leftover_processes([handle.pgid]) == {}


def test_a_node_dying_mid_run_stops_it_naming_the_node_and_tears_down(tmp_path):
    config = small_run_config(local_scheduler(tmp_path, 2), tmp_path, die_after_s={1: 4.0})
    config.benchmark.num_prompts, config.benchmark.output_len = 400, 100
    config.profile.enabled = False
    started = time.monotonic()
    with pytest.raises(MagpieError) as info:
        run(config)
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert message.startswith("node1: ") and "exited with code 1" in message
    assert info.value.exit_code == 3
    run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
    run_json = json.loads((run_dir.root / "run.json").read_text())
    assert run_json["ok"] is False and run_json["bench_valid"] is False
    assert run_json["error"].startswith("node1: ")
    stages = {s["name"]: s["status"] for s in run_json["stages"]}
    assert stages["launch"] == "ok" and stages["bench"] == "failed" and stages["report"] == "ok"
    result = read_result(run_dir.bench)
    assert result["valid"] is False and result["abort"]["node"] == "node1"
    assert "INVALID RUN" in run_dir.report_md.read_text()
    state = load_state(run_dir)
    assert state.stopped_at is not None
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)
