"""Every router argv the planner writes is accepted by that router's own parser and read as
planned: PD pairs with their bootstrap ports, replicas, policies, the metrics port."""

from __future__ import annotations

import pytest

from magpie_trace.config import config_from_dict
from magpie_trace.plan import make_plan
from magpie_trace.router import RouterPlan, Worker, unready_workers


def _parse(router: RouterPlan):
    if router.kind == "sglang-router":
        parse = pytest.importorskip("sglang_router.launch_router").parse_router_args
        assert router.argv[:2] == ["sglang-router", "launch"]
        return parse(router.argv[2:])
    parse = pytest.importorskip("vllm_router.launch_router").parse_router_args
    assert router.argv[:1] == ["vllm-router"]
    return parse(router.argv[1:])


def _config(engine: str, kind: str, roles: tuple[str, str], **router: object):
    return config_from_dict({
        "scheduler": {"nodes": [{"host": f"h{i}", "address": f"10.0.0.{i + 1}"} for i in range(4)],
                      "gpus_per_node": 2},
        "server": {"engine": engine, "model": "m", "tp": 2, "groups": [
            {"name": "p0", "role": roles[0], "nodes": [0]},
            {"name": "p1", "role": roles[0], "nodes": [1],
             **({"bootstrap_port": 9100} if roles[0] == "prefill" else {})},
            {"name": "d", "role": roles[1], "nodes": [2, 3], "tp": 4},
        ]},
        "router": {"kind": kind, "port": 8123, "metrics_port": 8124, **router},
    }, source="r.yaml")


@pytest.mark.parametrize(("engine", "kind"), [("sglang", "sglang-router"), ("sim", "sglang-router"),
                                               ("vllm", "vllm-router"), ("sim", "vllm-router")])
def test_pd_router_argv_is_read_as_planned(engine, kind):
    plan = make_plan(_config(engine, kind, ("prefill", "decode"), policy="round_robin",
                             decode_policy="power_of_two"))
    args = _parse(plan.router)
    assert (args.host, args.port, args.prometheus_port) == ("0.0.0.0", 8123, 8124)
    assert getattr(args, "pd_disaggregation", False) or getattr(args, "vllm_pd_disaggregation", False)
    bootstrap = (8998, 9100) if engine != "vllm" else (None, None)
    port = 30000 if engine == "sglang" else 8000
    assert args.prefill_urls == [(f"http://10.0.0.1:{port}", bootstrap[0]),
                                 (f"http://10.0.0.2:{port}", bootstrap[1])]
    assert args.decode_urls == [f"http://10.0.0.3:{port}"]
    assert (args.policy, args.decode_policy) == ("round_robin", "power_of_two")
    assert args.worker_startup_check_interval == 1
    assert args.worker_startup_timeout_secs == 900  # server.ready_timeout_s


@pytest.mark.parametrize("kind", ["sglang-router", "vllm-router"])
def test_replica_router_argv_lists_every_api_server(kind):
    plan = make_plan(_config("sim", kind, ("serve", "serve")))
    args = _parse(plan.router)
    assert args.worker_urls == ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]
    assert not getattr(args, "pd_disaggregation", False)
    assert not getattr(args, "vllm_pd_disaggregation", False)


def test_readiness_needs_every_worker_listed_healthy():
    """GET /workers as both routers answer it: a worker counts once listed with is_healthy true
    (trailing slashes aside); anything unreadable leaves every worker missing."""
    workers = [Worker("http://10.0.0.1:8000", "prefill", "p", 8998), Worker("http://10.0.0.3:8000", "decode", "d")]
    listed = {"workers": [{"url": "http://10.0.0.1:8000/", "worker_type": "prefill", "is_healthy": True},
                          {"url": "http://10.0.0.3:8000", "worker_type": "decode", "is_healthy": False}]}
    assert unready_workers(listed, workers) == [workers[1]]
    listed["workers"][1]["is_healthy"] = True
    assert unready_workers(listed, workers) == []
    listed["workers"][1]["is_healthy"] = "true"  # only a JSON true counts
    assert unready_workers(listed, workers) == [workers[1]]
    for unreadable in ({}, {"workers": None}, [], "ok", None):
        assert unready_workers(unreadable, workers) == workers
