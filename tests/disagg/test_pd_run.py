"""A sim prefill/decode deployment behind each real router, end to end: `magpie-trace run` over the
local and ssh backends launches every group and the router, benchmarks through the router,
profiles every rank, collects, merges (groups placed by their KV handoffs) and reports; a decode
node lost mid-benchmark stops the run naming node and group, with nothing left running."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from magpie_trace.bench import latest_attempt, read_result
from magpie_trace.config import (
    BenchmarkConfig,
    Config,
    GroupConfig,
    OutputConfig,
    ProfileConfig,
    RouterConfig,
    SchedulerConfig,
    ServerConfig,
    SimConfig,
    validate,
)
from magpie_trace.errors import MagpieError
from magpie_trace.launch import load_state
from magpie_trace.ports import free_port
from magpie_trace.run import STAGES, run
from magpie_trace.rundir import RunDir
from tests.launch.simcluster import local_scheduler
from tests.procs import leftover_processes, wait_for
from tests.router.conftest import router_command
from tests.run.ending import (
    check_torn_down,
    ended,
    only_run_dir,
    read_until,
    run_json,
    start_cli,
    stop_leftovers,
    write_config,
)
from tests.timing import busy_cores, measure_within

PREFILL_MS, TRANSFER_MS, ITL_MS = 30.0, 4.0, 5.0
# Node clocks (ms ahead of true time): every node off, by different amounts.
OFFSETS_MS = {0: 0.35, 1: 1.5, 2: -2.0, 3: 0.7}
TIMING_TOL_MS = 2.0
PROMPTS = 60
ALIGN_TOL_US = 100.0


def pd_config(scheduler: SchedulerConfig, tmp_path: Path, kind: str, **sim: object) -> Config:
    """Prefill TP2 on node0+node1, decode TP2 on node2+node3, the real router on node0."""
    scheduler.gpus_per_node = 1

    def address(index: int) -> str:  # ssh "nodes" are 127.0.0.2, .3, ...: each binds its own
        return scheduler.nodes[index].address or scheduler.nodes[index].host

    host = address(0)
    config = Config(
        scheduler=scheduler,
        server=ServerConfig(
            engine="sim", model="sim-model", host=host, ready_timeout_s=60.0,
            sim=SimConfig(startup_s=0.2, ttft_ms=PREFILL_MS, itl_ms=ITL_MS, transfer_ms=TRANSFER_MS,
                          clock_offset_ms=dict(OFFSETS_MS), **sim),
            groups=[
                GroupConfig(name="prefill", role="prefill", nodes=["node0", "node1"], tp=2,
                            host=address(0), port=free_port(), rendezvous_port=free_port(),
                            bootstrap_port=free_port()),
                GroupConfig(name="decode", role="decode", nodes=["node2", "node3"], tp=2,
                            host=address(2), port=free_port(), rendezvous_port=free_port()),
            ],
        ),
        router=RouterConfig(kind=kind, host=host, port=free_port(), metrics_port=free_port(),
                            policy="round_robin", command=router_command(kind),
                            ready_timeout_s=60.0),
        # The capture has a load point of its own at c4: about a hundred KV handoffs per second,
        # each an NTP exchange between the groups. Timing is read at c1.
        profile=ProfileConfig(enabled=True, start_after_s=0.2, duration_s=1.2, concurrency=4),
        benchmark=BenchmarkConfig(input_len=32, output_len=16, num_prompts=PROMPTS,
                                  concurrency=[1], warmup_requests=2),
        output=OutputConfig(dir=str(tmp_path / "runs")),
        source="pd-test",
    )
    validate(config)
    return config


def quiet() -> bool:
    """Is the machine idle enough that latency (and loopback round trips) can be measured?"""
    return busy_cores(1.0) <= 0.5


def check_pd_run(run_dir: RunDir, measurable: bool) -> dict:
    """Every output of a PD run; returns the c1 point. The KV handoffs bound each
    offset by two loopback one-way delays, which a busy machine stretches: the 100 us accuracy is
    checked when the machine was quiet, the stated uncertainty covering the error always."""
    run_json = json.loads((run_dir.root / "run.json").read_text())
    assert run_json["ok"] is True and [(s["name"], s["status"]) for s in run_json["stages"]] == [(name, "ok") for name in STAGES]
    result = json.loads((latest_attempt(run_dir.bench) / "result.json").read_text())
    assert result["valid"] is True
    assert [p["point"] for p in result["points"]] == ["profile-c4", "c1"]
    assert result["topology"]["endpoints"] == [result["topology"]["router"]["url"]]
    groups = {n["name"]: n.get("group") for n in result["topology"]["nodes"]}
    assert groups == {"node0": "prefill", "node1": "prefill", "node2": "decode", "node3": "decode"}
    c1 = result["points"][1]
    assert c1["max_concurrency"] == 1 and c1["completed"] == PROMPTS
    # Per group: the prefill computed one token per request, the decode every token, and the
    # decode's KV pulls took the transfer delay.
    server = c1["server_groups"]
    assert server["prefill"]["total"]["generation_tokens"] == PROMPTS
    assert server["decode"]["total"]["generation_tokens"] == PROMPTS * 16
    assert abs(server["decode"]["mean_kv_transfer_ms"] - TRANSFER_MS) < 0.5
    # Every rank of both groups, named with its group; one TraceLens command per group.
    names = sorted(p.name for p in run_dir.traces.glob("node*-TP*.trace.json.gz"))
    assert names == ["node0-TP0-prefill.trace.json.gz", "node1-TP1-prefill.trace.json.gz",
                     "node2-TP0-decode.trace.json.gz", "node3-TP1-decode.trace.json.gz"]
    manifest = json.loads((run_dir.traces / "manifest.json").read_text())
    assert [(g["name"], g["role"], g["nodes"]) for g in manifest["groups"]] == [
        ("prefill", "prefill", [0, 1]), ("decode", "decode", [2, 3])]
    assert run_json["tracelens_command"]
    # Cross-group alignment: every node's offset recovered, the stated uncertainty covering it.
    alignment = json.loads((run_dir.merged / "alignment.json").read_text())
    assert alignment["reference_node"] == "node0"
    for name, fit in alignment["nodes"].items():
        node = int(name.removeprefix("node"))
        true_ns = (OFFSETS_MS[node] - OFFSETS_MS[0]) * 1e6
        error_us = abs(fit["offset_ns"] - true_ns) / 1e3
        assert error_us <= fit["uncertainty_us"] + 0.01, (name, fit)
        if measurable:
            assert error_us < ALIGN_TOL_US, (name, fit)
    assert alignment["nodes"]["node1"]["method"] in ("ends", "envelope")  # its group's collectives
    assert alignment["nodes"]["node2"]["method"] == "kv_transfer"
    assert alignment["nodes"]["node3"]["method"].startswith("kv_transfer+")
    # Inside the decode group the collectives keep their accuracy.
    inner_us = (alignment["nodes"]["node3"]["offset_ns"] - alignment["nodes"]["node2"]["offset_ns"]) / 1e3
    assert abs(inner_us - (OFFSETS_MS[3] - OFFSETS_MS[2]) * 1e3) < 10.0
    state = load_state(run_dir)
    assert "router" in state.handles and state.stopped_at is not None
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)
    return c1


def c1_point(run_dir: RunDir) -> dict:
    return json.loads((latest_attempt(run_dir.bench) / "result.json").read_text())["points"][-1]


def ttft_over_ms(c1: dict) -> float:
    """How far the c1 median TTFT lies above prefill + transfer."""
    return c1["median_ttft_ms"] - (PREFILL_MS + TRANSFER_MS)


def timing_holds(c1: dict) -> bool:
    """At concurrency 1: TTFT = prefill + transfer, TPOT = the decode's ITL (each within 2 ms)."""
    tpot_off = abs(c1["median_tpot_ms"] - ITL_MS)
    return -TIMING_TOL_MS < ttft_over_ms(c1) < TIMING_TOL_MS and tpot_off < TIMING_TOL_MS


def run_for_timing(make_config: Callable[[], Config]) -> tuple[RunDir, bool]:
    """`run` until its c1 point keeps the timing bounds (at most three runs: see tests/timing.py);
    the run directory and whether the machine was quiet enough to measure latency."""

    def attempt() -> tuple[RunDir, dict, bool]:
        measurable = quiet()
        run_dir = RunDir(run(make_config()).run_dir)
        c1 = c1_point(run_dir)
        print(f"median TTFT {c1['median_ttft_ms']:.2f} ms, TPOT {c1['median_tpot_ms']:.2f} ms")
        return run_dir, c1, measurable and quiet()

    run_dir, _, measurable = measure_within(attempt, lambda outcome: not outcome[2] or timing_holds(outcome[1]))
    return run_dir, measurable


def check_timing(c1: dict, measurable: bool) -> None:
    """The c1 point's latency: TTFT carries the router's two hops and the client's own, 1.1-1.96
    ms on a quiet 2-core VM (2.0-3.8 ms when its neighbours are busy, hence up to three runs)."""
    measured = (f"median TTFT {c1['median_ttft_ms']:.2f} ms (expected {PREFILL_MS + TRANSFER_MS:g}), "
                f"TPOT {c1['median_tpot_ms']:.2f} ms (expected {ITL_MS:g})")
    if not measurable:
        pytest.skip(f"other processes keep the cores busy: latency is not measurable ({measured}; "
                    "every other output was checked)")
    print(measured)
    assert abs(c1["median_tpot_ms"] - ITL_MS) < TIMING_TOL_MS, c1
    over = ttft_over_ms(c1)
    assert over > -TIMING_TOL_MS, c1  # never faster than prefill + transfer
    if over >= TIMING_TOL_MS:
        # Open (issue 17): sglang-router's path gave 2.03-2.34 ms over in all three runs of a
        # CI-mode run of the whole tier (1.44-1.96 ms alone on a quiet VM; vllm-router within).
        pytest.xfail(f"TTFT {over:.2f} ms above prefill + transfer (bound {TIMING_TOL_MS:g} ms): {measured}")


@pytest.mark.parametrize("kind", ["sglang-router", "vllm-router"])
def test_pd_run_over_local_behind_each_router(kind, tmp_path):
    run_dir, measurable = run_for_timing(lambda: pd_config(local_scheduler(tmp_path, 4), tmp_path, kind))
    check_timing(check_pd_run(run_dir, measurable), measurable)


@pytest.mark.parametrize("kind", ["sglang-router", "vllm-router"])
def test_pd_run_over_ssh_behind_each_router(kind, tmp_path, ssh_scheduler):
    run_dir, measurable = run_for_timing(lambda: pd_config(ssh_scheduler(4), tmp_path, kind))
    check_timing(check_pd_run(run_dir, measurable), measurable)


def test_a_real_clock_shift_of_the_decode_group_is_recovered_through_the_handoffs(tmp_path, libfaketime):
    """libfaketime moves the wall clock of both decode nodes' processes 250 ms ahead, as two
    machines whose clocks are off together: the handoffs place the decode group, and the clock
    probe (which reads each node's processes' clock) agrees with its traces.

    Both nodes, not the head alone: the sim's headless nodes write the head's step times (shifted
    by their own sim offset), so a shift of the head's process alone would reach the traces of
    node3 but not its clock probe, a disagreement no real engine has."""
    config = pd_config(local_scheduler(tmp_path, 4), tmp_path, "sglang-router")
    for node in config.scheduler.nodes[2:]:
        node.env = {"LD_PRELOAD": str(libfaketime), "FAKETIME": "+0.25"}
    measurable = quiet()
    result = run(config)
    measurable = measurable and quiet()
    alignment = json.loads((RunDir(result.run_dir).merged / "alignment.json").read_text())
    for name in ("node2", "node3"):
        fit = alignment["nodes"][name]
        node = int(name.removeprefix("node"))
        true_ns = 250e6 + (OFFSETS_MS[node] - OFFSETS_MS[0]) * 1e6
        error_us = abs(fit["offset_ns"] - true_ns) / 1e3
        print(f"{name}: recovered {fit['offset_ns'] / 1e6:.4f} ms, true {true_ns / 1e6:.4f} ms, "
              f"+-{fit['uncertainty_us']:.1f} us")
        assert error_us <= fit["uncertainty_us"] + 0.01, (name, fit)
        if measurable:
            assert error_us < ALIGN_TOL_US, (name, fit)
    assert alignment["nodes"]["node2"]["method"] == "kv_transfer"
    assert not [w for w in alignment["warnings"] if "contradict" in w], alignment["warnings"]


def test_a_decode_node_lost_mid_benchmark_stops_the_run_naming_node_and_group(tmp_path):
    # 20 s after its start: past a launch that takes 6-15 s on a busy 2-core machine (at 5 s it
    # died during startup there), well inside the ~50 s load.
    config = pd_config(local_scheduler(tmp_path, 4), tmp_path, "sglang-router",
                       die_after_s={3: 20.0})
    config.benchmark.num_prompts, config.benchmark.output_len = 400, 100
    config.benchmark.concurrency = [4]
    config.profile.enabled = False
    with pytest.raises(MagpieError) as info:
        run(config)
    message = str(info.value)
    assert message.startswith("node3 (group decode): ") and "exited with code 1" in message, message
    assert info.value.exit_code == 3
    run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
    result = json.loads((latest_attempt(run_dir.bench) / "result.json").read_text())
    assert result["valid"] is False and result["abort"]["node"] == "node3 (group decode)"
    run_json = json.loads((run_dir.root / "run.json").read_text())
    assert run_json["ok"] is False and run_json["bench_valid"] is False
    state = load_state(run_dir)
    assert set(state.handles) == {"node0", "node1", "node2", "node3", "router"}
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)


def test_a_decode_node_killed_mid_benchmark_is_one_line_naming_node_and_group(tmp_path, request):
    """`magpie-trace run`; SIGKILL on decode node3's whole process group (a machine that loses
    power) while the c4 load runs: exit 3, one error line naming the node and its group, the result
    invalid, and every process of the run gone, the router's included."""
    config = pd_config(local_scheduler(tmp_path, 4), tmp_path, "sglang-router")
    config.benchmark.num_prompts, config.benchmark.output_len = 400, 100
    config.benchmark.concurrency = [4]
    config.profile.enabled = False
    request.addfinalizer(lambda: stop_leftovers(config))
    proc = start_cli(["run", str(write_config(config, tmp_path))])
    seen: list[str] = []
    try:
        seen = read_until(proc, "magpie-trace: c4 requests: ")  # the load's first heartbeat
        run_dir = only_run_dir(config)
        os.killpg(load_state(run_dir).handles["node3"].pgid, signal.SIGKILL)
    finally:
        err, errors = ended(proc, seen)
    assert proc.returncode == 3, err
    assert len(errors) == 1 and errors[0].startswith("error: node3 (group decode): "), err
    check_torn_down(run_dir)  # every process group of state.json, the router's among them
    assert set(load_state(run_dir).handles) == {"node0", "node1", "node2", "node3", "router"}
    result = read_result(run_dir.bench)
    assert result["valid"] is False and result["abort"]["node"] == "node3 (group decode)"
    assert run_json(run_dir)["ok"] is False
