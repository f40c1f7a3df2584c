"""Several API servers without a router: the benchmark spreads its requests as configured and
reports per endpoint; a group that fails to start is named with its node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magpie_trace.backends import make_backend
from magpie_trace.bench import run_benchmark
from magpie_trace.bench.endpoints import Endpoints
from magpie_trace.config import (
    BenchmarkConfig,
    Config,
    GroupConfig,
    OutputConfig,
    RouterConfig,
    ServerConfig,
    SimConfig,
    validate,
)
from magpie_trace.errors import MagpieError
from magpie_trace.launch import launch, load_state, stop
from magpie_trace.plan import make_plan
from magpie_trace.ports import free_port
from magpie_trace.preflight import check_router
from magpie_trace.rundir import new_run_dir
from tests.launch.simcluster import local_scheduler
from tests.procs import leftover_processes, wait_for
from tests.router.conftest import router_command

PROMPTS = 24


def replica_config(tmp_path: Path, spread: str, itl_ms: tuple[float, float] = (5.0, 5.0),
                   bad_extra: list[str] | None = None) -> Config:
    """Two single-node replicas (TP1 each), no router."""
    config = Config(
        scheduler=local_scheduler(tmp_path, 2),
        server=ServerConfig(
            engine="sim", model="sim-model", host="127.0.0.1", ready_timeout_s=30.0,
            sim=SimConfig(startup_s=0.2, ttft_ms=10, itl_ms=itl_ms[0]),
            groups=[GroupConfig(name="r0", nodes=["node0"], port=free_port(),
                                rendezvous_port=free_port()),
                    GroupConfig(name="r1", nodes=["node1"], port=free_port(),
                                rendezvous_port=free_port(), extra_args=bad_extra or [])],
        ),
        benchmark=BenchmarkConfig(input_len=16, output_len=8, num_prompts=PROMPTS, concurrency=[3],
                                  warmup_requests=1, spread=spread),
        output=OutputConfig(dir=str(tmp_path / "runs")),
        source="replicas-test",
    )
    validate(config)
    return config


@pytest.mark.parametrize("spread", ["round_robin", "least_outstanding"])
def test_requests_spread_over_every_replica_with_per_endpoint_metrics(spread, tmp_path):
    config = replica_config(tmp_path, spread)
    plan = make_plan(config)
    assert plan.router is None and len(plan.endpoints) == 2
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    state = launch(plan, run_dir)
    try:
        result = run_benchmark(config, plan, run_dir.bench, handles=state.handles)
    finally:
        stop(plan, run_dir, state=state)
    data = json.loads(result.result_path.read_text())
    assert data["topology"]["endpoints"] == plan.endpoints and data["topology"]["spread"] == spread
    point = data["points"][0]
    counts = {url: entry["requests"] for url, entry in point["per_endpoint"].items()}
    assert sum(counts.values()) == PROMPTS
    if spread == "round_robin":
        assert sorted(counts.values()) == [PROMPTS // 2, PROMPTS // 2]
    else:  # equal replicas, fewest in flight first: neither is starved
        assert min(counts.values()) >= PROMPTS // 3, counts
    for entry in point["per_endpoint"].values():
        assert entry["completed"] == entry["requests"] and entry["median_ttft_ms"] >= 10
    # Every request's record names where it went.
    requests = result.result_path.parent / "requests.jsonl"
    records = [json.loads(line) for line in requests.read_text().splitlines()]
    assert {r["endpoint"] for r in records if r["point"] == point["point"]} == set(plan.endpoints)
    assert set(point["server"]) == {"node0", "node1"}  # each replica's /metrics, on its own port
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)


def test_least_outstanding_keeps_requests_off_a_busy_endpoint():
    endpoints = Endpoints(["http://a", "http://b"], "least_outstanding")
    first, second = endpoints.acquire(), endpoints.acquire()
    assert {first, second} == {0, 1}
    endpoints.release(second)  # b finished, a is still busy
    assert [endpoints.acquire() for _ in range(1)] == [second]
    assert endpoints.outstanding == [1, 1] and endpoints.sent == [1, 2]
    round_robin = Endpoints(["http://a/", "http://b"], "round_robin")
    assert [round_robin.acquire() for _ in range(5)] == [0, 1, 0, 1, 0]
    assert round_robin.urls == ["http://a", "http://b"]


def test_a_group_that_cannot_start_is_named_with_its_node_and_nothing_is_left(tmp_path):
    config = replica_config(tmp_path, "round_robin", bad_extra=["--no-such-flag"])
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    with pytest.raises(MagpieError) as info:
        launch(plan, run_dir)
    assert str(info.value).startswith("node1 (group r1): process exited with code 2 during startup")
    state = load_state(run_dir)
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)


def test_a_router_that_cannot_start_is_named_and_the_groups_are_stopped(tmp_path):
    """The real sglang-router refusing an argument: launch fails naming the router and its node
    (the groups were ready), and every process it started, the groups' included, is gone."""
    config = replica_config(tmp_path, "round_robin")
    config.router = RouterConfig(kind="sglang-router", host="127.0.0.1", port=free_port(),
                                 metrics_port=free_port(), command=router_command("sglang-router"),
                                 extra_args=["--no-such-flag"], ready_timeout_s=30.0)
    validate(config)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    with pytest.raises(MagpieError) as info:
        launch(plan, run_dir)
    message = str(info.value)
    assert message.startswith("router (sglang-router on node0): process exited with code 2 during "
                              "startup"), message
    assert "--no-such-flag" in message  # the router's own complaint, from its log
    state = load_state(run_dir)
    assert set(state.handles) == {"node0", "node1", "router"}
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)


def test_preflight_starts_the_router_under_its_own_env(tmp_path):
    """router.command found only through router.env's PATH (as launch starts it): preflight's
    `--help` check runs under that env too."""
    real = Path(router_command("sglang-router")[0])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "my-router").symlink_to(real)
    config = replica_config(tmp_path, "round_robin")
    config.router = RouterConfig(kind="sglang-router", host="127.0.0.1", port=free_port(),
                                 metrics_port=free_port(), command=["my-router", "launch"],
                                 env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    validate(config)
    plan = make_plan(config)
    check_router(plan, make_backend(config.scheduler))
    config.router.env = {}
    with pytest.raises(MagpieError, match=r"^router \(sglang-router on node0\): preflight: my-router "
                                          r"launch does not start: "):
        check_router(make_plan(config), make_backend(config.scheduler))
