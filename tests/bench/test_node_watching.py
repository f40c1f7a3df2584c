"""Issue 11 finding 14: the benchmark watches each node through one long-lived channel.

Found over ssh: the watchdog's once-a-second process check and the telemetry each started a new
remote shell per node (each sourcing the node's ~/.bashrc), about 0.35 of a core per node with a
pyenv init in it, and a real vLLM served about 2x slower under `bench CONFIG` than under
`bench --url`. Every command this process starts is seen here through Python's audit hook (for ssh,
the ssh clients' argv: one per remote shell), so a command per check shows as a count that grows
with the benchmark's length; one monitor per node shows as one stream per node, whatever the
length, started with the configured interval.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from magpie_trace.backends import make_backend
from magpie_trace.bench import run_benchmark
from magpie_trace.config import SimConfig
from magpie_trace.launch import launch, stop
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir
from tests.launch.simcluster import local_scheduler, sim_config
from tests.procs import leftover_processes, wait_for
from tests.security.argv_audit import argv_seen

INTERVAL_S = 0.5  # benchmark.telemetry_interval_s: twice the checks a second the old way made
MIN_BENCH_S = 6.0  # long enough that a check per interval would start dozens of commands


def monitor_options(argv: list[str]) -> dict | None:
    """The options a node_monitor was started with, if argv starts one (directly or via ssh)."""
    text = " ".join(argv)
    if "What runs on each node for the whole run" not in text:  # the monitor's own docstring
        return None
    words = shlex.split(argv[-1]) if argv[0].endswith("ssh") else argv  # ssh: one remote command line
    return json.loads(words[-1])


@pytest.mark.parametrize("backend_name", ["ssh", "local"])
def test_a_benchmark_starts_one_monitor_per_node_and_no_command_per_check(backend_name, tmp_path, request):
    if backend_name == "ssh":
        scheduler = request.getfixturevalue("ssh_scheduler")(2)
    else:
        scheduler = local_scheduler(tmp_path, 2)
    config = sim_config(scheduler, tmp_path, sim=SimConfig(startup_s=0.2, ttft_ms=10, itl_ms=5))
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 16, 100, 24
    bench.concurrency, bench.warmup_requests = [2], 1
    bench.telemetry_interval_s = INTERVAL_S
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    state = launch(plan, run_dir, backend)
    try:
        with argv_seen() as seen:
            began = time.monotonic()
            result = run_benchmark(config, plan, run_dir.bench, backend=backend, handles=state.handles)
            took = time.monotonic() - began
    finally:
        stop(plan, run_dir, backend, state)
        backend.close()
    pgids = [h.pgid for h in state.handles.values()]
    assert wait_for(lambda: not leftover_processes(pgids), 15), leftover_processes(pgids)
    assert result.points[0]["completed"] == 24 and result.points[0]["failed"] == 0
    assert took > MIN_BENCH_S, f"the benchmark took {took:.1f} s: too short to tell"
    monitors = [options for argv in seen if (options := monitor_options(argv)) is not None]
    others = [argv for argv in seen if monitor_options(argv) is None]
    # One monitor per node, with the configured interval and the node's engine group to watch.
    assert len(monitors) == 2, seen
    assert [m["interval"] for m in monitors] == [INTERVAL_S, INTERVAL_S]
    assert sorted(m["groups"][0][0] for m in monitors) == sorted(pgids)
    # Nothing else started on a node while the load ran: a check per interval per node would be
    # 2 x took / INTERVAL_S commands (for ssh: remote shells, each sourcing ~/.bashrc).
    assert others == [], f"{len(others)} other command(s) in {took:.1f} s: {others[:3]}"
