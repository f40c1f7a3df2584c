"""Deployments of several groups: placement per group, each engine's PD flags, the router's argv,
the endpoints, and the refusals of configs that cannot run."""

from __future__ import annotations

import json

import pytest

from magpie_trace.config import config_from_dict
from magpie_trace.errors import ConfigError
from magpie_trace.plan import make_plan
from tests.plan.test_topology import flag


def pd_config(engine: str = "sim", router: dict | None = None, nodes: int = 4, **server: object):
    groups = [{"name": "prefill", "role": "prefill", "nodes": ["node0", "node1"], "tp": 2},
              {"name": "decode", "role": "decode", "nodes": [2, 3], "tp": 2}]
    return config_from_dict(
        {
            "scheduler": {"backend": "ssh", "gpus_per_node": 1,
                          "nodes": [{"host": f"h{i}", "address": f"10.0.0.{i + 1}"}
                                    for i in range(nodes)]},
            "server": {"engine": engine, "model": "/m", "groups": groups, **server},
            "router": router if router is not None else {"kind": "sglang-router" if engine != "vllm"
                                                         else "vllm-router"},
        },
        source="pd.yaml",
    )


def test_sim_pd_places_each_group_on_its_own_nodes_with_its_own_head():
    plan = make_plan(pd_config(router={"kind": "sglang-router", "policy": "round_robin"}))
    assert [(n.index, n.group, n.group_role) for n in plan.nodes] == [
        (0, "prefill", "prefill"), (1, "prefill", "prefill"), (2, "decode", "decode"),
        (3, "decode", "decode")]
    # Node ranks and heads are per group: node2 is the decode group's head.
    assert [flag(n.args, "--node-rank") for n in plan.nodes] == ["0", "1", "0", "1"]
    assert ["--headless" in n.args for n in plan.nodes] == [False, True, False, True]
    assert flag(plan.nodes[3].args, "--rendezvous").startswith("10.0.0.3:")
    assert [r.node for n in plan.nodes for r in n.ranks] == [0, 1, 2, 3]
    assert [(r.tp, r.global_rank) for n in plan.nodes for r in n.ranks] == [(0, 0), (1, 1)] * 2
    assert all(flag(n.args, "--pd-role") == n.group_role for n in plan.nodes)
    prefill_head = plan.nodes[0].args
    assert flag(prefill_head, "--kv-port") == "8998"
    assert flag(prefill_head, "--kv-address") == "10.0.0.1"
    assert flag(prefill_head, "--transfer-ms") == "5"
    assert "--kv-port" not in plan.nodes[2].args
    router = plan.router
    assert router is not None and router.index == 0 and router.url == "http://10.0.0.1:8080"
    assert router.argv == [
        "sglang-router", "launch", "--host", "0.0.0.0", "--port", "8080", "--pd-disaggregation",
        "--prefill", "http://10.0.0.1:8000", "8998", "--decode", "http://10.0.0.3:8000",
        "--policy", "round_robin", "--prometheus-port", "29000",
        "--worker-startup-check-interval", "1", "--worker-startup-timeout-secs", "900"]
    assert plan.endpoints == [router.url] and plan.head_url == router.url
    assert plan.api_urls == ["http://10.0.0.1:8000", "http://10.0.0.3:8000"]
    shown = plan.to_dict()
    assert [g["name"] for g in shown["groups"]] == ["prefill", "decode"]
    assert shown["router"]["workers"][0] == {"url": "http://10.0.0.1:8000", "role": "prefill",
                                             "group": "prefill", "bootstrap_port": 8998}


def test_sglang_pd_flags_and_the_bootstrap_port_the_router_gets():
    config = pd_config("sglang", router={"kind": "sglang-router"})
    config.server.groups[0].transfer_backend = "nixl"
    config.server.groups[0].ib_device = "mlx5_0"
    config.server.groups[0].bootstrap_port = 9001
    plan = make_plan(config)
    prefill, decode = plan.nodes[0].args, plan.nodes[2].args
    assert flag(prefill, "--disaggregation-mode") == "prefill"
    assert flag(prefill, "--disaggregation-bootstrap-port") == "9001"
    assert flag(prefill, "--disaggregation-transfer-backend") == "nixl"
    assert flag(prefill, "--disaggregation-ib-device") == "mlx5_0"
    assert flag(decode, "--disaggregation-mode") == "decode"
    assert "--disaggregation-bootstrap-port" not in decode
    assert flag(decode, "--dist-init-addr") == "10.0.0.3:20000"
    assert plan.router.argv[plan.router.argv.index("--prefill") + 1:][:2] == [
        "http://10.0.0.1:30000", "9001"]


def test_vllm_pd_writes_the_kv_transfer_config_and_nixl_side_channel_on_every_node():
    plan = make_plan(pd_config("vllm", router={"kind": "vllm-router", "decode_policy": "power_of_two"}))
    for node in plan.nodes:
        kv = json.loads(flag(node.args, "--kv-transfer-config"))
        assert kv == {"kv_connector": "NixlConnector",
                      "kv_role": "kv_producer" if node.group == "prefill" else "kv_consumer"}
        assert node.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == node.address
        assert node.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600"
        assert flag(node.args, "--master-addr") == ("10.0.0.1" if node.group == "prefill"
                                                    else "10.0.0.3")
    argv = plan.router.argv
    assert argv[:1] == ["vllm-router"] and "--vllm-pd-disaggregation" in argv
    # NIXL needs no bootstrap port: the prefill's kv_transfer_params say where its KV is.
    assert argv[argv.index("--prefill") + 1:argv.index("--prefill") + 3] == [
        "http://10.0.0.1:8000", "--decode"]
    assert flag(argv, "--kv-connector") == "nixl"
    assert flag(argv, "--decode-policy") == "power_of_two"


def test_replicas_without_a_router_are_each_an_endpoint():
    config = config_from_dict({
        "scheduler": {"nodes": ["a", "b", "c"], "gpus_per_node": 2},
        "server": {"engine": "sim", "model": "m", "tp": 2,
                   "groups": [{"name": "r0", "nodes": ["node0"]},
                              {"name": "r1", "nodes": ["node1", "node2"], "tp": 4,
                               "port": 9100}]},
    }, source="r.yaml")
    plan = make_plan(config)
    assert plan.router is None
    assert plan.endpoints == ["http://a:8000", "http://b:9100"]
    assert [n.layout.tp for n in plan.nodes] == [2, 4, 4]


def test_a_plain_config_plans_as_before():
    config = config_from_dict({"scheduler": {"nodes": ["a", "b"], "gpus_per_node": 1},
                               "server": {"engine": "sim", "model": "m", "tp": 2}}, source="p.yaml")
    plan = make_plan(config)
    shown = plan.to_dict()
    assert "groups" not in shown and "router" not in shown
    assert all("group" not in node for node in shown["nodes"])
    assert plan.endpoints == [plan.head_url] == ["http://a:8000"]
    assert "--pd-role" not in plan.nodes[0].args


@pytest.mark.parametrize(("change", "message"), [
    (lambda raw: raw.pop("router"), "router: prefill and decode groups need a router"),
    (lambda raw: raw["server"]["groups"][1]["nodes"].append("node1"),
     "server.groups[1].nodes: node node1 is already in group prefill"),
    (lambda raw: raw["server"]["groups"][1]["nodes"].append("nodeX"),
     "server.groups[1].nodes: no node 'nodeX' in scheduler.nodes"),
    (lambda raw: raw["server"]["groups"][0].update(name="Prefill"),
     "server.groups[0].name: 'Prefill' must be 1-32 of [a-z0-9_]"),
    (lambda raw: raw["server"]["groups"][1].update(name="prefill"),
     "server.groups[1].name: 'prefill' names two groups"),
    (lambda raw: raw["server"]["groups"][1].update(role="serve"),
     "prefill/decode disaggregation needs at least one prefill and one decode group"),
    (lambda raw: raw["scheduler"]["nodes"].append({"host": "h4"}),
     "scheduler.nodes: node4 in no server group"),
    (lambda raw: raw["router"].update(policy="bucket"), "router.policy: 'bucket' is not one of"),
    (lambda raw: raw["router"].update(port=8000), "router: port 8000 on node0 is also group prefill's port"),
    (lambda raw: raw["router"].update(metrics_port=8998),
     "router: port 8998 on node0 is also group prefill's bootstrap_port"),
    (lambda raw: raw["server"]["groups"][0].update(kv_connector="NixlConnector"),
     "server.groups[0].kv_connector: a vLLM setting (engine is sim)"),
    (lambda raw: raw["server"]["groups"][0].update(tp=4),
     "server.groups[0]: TP4 needs 4 GPUs but the 2 node(s) have 2"),
])
def test_deployments_that_cannot_run_are_refused_naming_the_key(change, message):
    raw = {
        "scheduler": {"nodes": ["a", "b", "c", "d"], "gpus_per_node": 1},
        "server": {"engine": "sim", "model": "m",
                   "groups": [{"name": "prefill", "role": "prefill", "nodes": ["node0", "node1"], "tp": 2},
                              {"name": "decode", "role": "decode", "nodes": ["node2", "node3"], "tp": 2}]},
        "router": {"kind": "sglang-router"},
    }
    change(raw)
    with pytest.raises(ConfigError) as error:
        make_plan(config_from_dict(raw, source="bad.yaml"))
    assert str(error.value).startswith("bad.yaml: ")
    assert message in str(error.value)


def test_routers_pair_only_the_engines_that_speak_their_protocol():
    with pytest.raises(ConfigError, match="sglang-router cannot pair vllm prefill and decode "
                                          r"servers \(use vllm-router\)"):
        pd_config("vllm", router={"kind": "sglang-router"})
    with pytest.raises(ConfigError, match="router: needs server.groups"):
        config_from_dict({"scheduler": {"nodes": ["a"]}, "server": {"model": "m"},
                          "router": {"kind": "vllm-router"}}, source="x.yaml")
