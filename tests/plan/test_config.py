"""Config loading: strict keys and types, one clear line for every mistake."""

from __future__ import annotations

import pytest

from magpie_trace.config import config_from_dict, load_config
from magpie_trace.errors import ConfigError

BASE = {
    "scheduler": {"backend": "ssh", "nodes": ["a", "b"]},
    "server": {"engine": "vllm", "model": "m", "tp": 16},
}


def load(tmp_path, text: str, overrides=None):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, overrides)


def error_of(tmp_path, text: str, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, overrides)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "c.yaml"))
    return message


def test_magpie_head_and_worker_keys_become_nodes(tmp_path):
    config = load(
        tmp_path,
        "scheduler:\n  head_node: h\n  worker_nodes: [w1, {host: w2, address: 10.1.1.2}]\n"
        "server: {model: m}\n",
    )
    assert [n.host for n in config.scheduler.nodes] == ["h", "w1", "w2"]
    assert [n.name for n in config.scheduler.nodes] == ["node0", "node1", "node2"]
    assert config.scheduler.nodes[2].address == "10.1.1.2"
    assert config.scheduler.nodes[0].address == "h"


def test_overrides_sweep_like_users_do(tmp_path):
    config = load(
        tmp_path,
        "scheduler: {nodes: [a]}\nserver: {model: m}\n",
        ["server.tp=4", "benchmark.concurrency=[1,8]", "server.env.HF_HOME=/x", "server.engine=sglang"],
    )
    assert config.server.tp == 4 and config.benchmark.concurrency == [1, 8]
    assert config.server.env == {"HF_HOME": "/x"} and config.server.engine == "sglang"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("scheduler: {nodes: [a]}\nserver: {model: m, tpp: 2}\n", "server.tpp: unknown key (did you mean tp?)"),
        ("scheduler: {nodes: [a]}\nserver: {model: m, tp: two}\n", "server.tp: expected an integer, got a string"),
        ("scheduler: {nodes: [a]}\nserver: {engine: vllm}\n", "server.model: missing"),
        ("scheduler: {backend: ssh, nodes: [a, a]}\nserver: {model: m}\n", "host 'a' is listed twice"),
        ("scheduler: {backend: pbs, nodes: [a]}\nserver: {model: m}\n", "scheduler.backend: 'pbs' is not one of: local, ssh, ray, slurm"),
        ("scheduler: {backend: slurm, slurm: {partition: 'gpu a'}}\nserver: {model: m}\n", "scheduler.slurm.partition: 'gpu a' is not one word"),
        ("scheduler: {backend: slurm, slurm: {job_id: '12;x'}}\nserver: {model: m}\n", "scheduler.slurm.job_id: '12;x' is not a Slurm job id"),
        ("scheduler: {backend: slurm, slurm: {nodes: 0}}\nserver: {model: m}\n", "scheduler.slurm.nodes: must be at least 1"),
        ("scheduler: {backend: slurm, slurm: {wait_s: 0}}\nserver: {model: m}\n", "scheduler.slurm.wait_s: must be more than 0"),
        ("scheduler: {backend: slurm, slurm: {partiton: gpu}}\nserver: {model: m}\n", "scheduler.slurm.partiton: unknown key (did you mean partition?)"),
        ("scheduler: {nodes: []}\nserver: {model: m}\n", "scheduler.nodes: at least one node"),
        ("server: [1, 2]\n", "server: expected a mapping, got a list"),
        ("scheduler: {nodes: [a]}\nserver: {model: m}\nbenchmark: {goodput: {ttfb: 3}}\n", "benchmark.goodput.ttfb: unknown SLO"),
        ("scheduler: {nodes: [a]\n", "not valid YAML"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("scheduler: {nodes: [{hots: a}]}\nserver: {model: m}\n", "scheduler.nodes[0].hots: unknown key (did you mean host?)"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_slurm_nodes_may_come_from_the_allocation(tmp_path):
    config = load(tmp_path, "scheduler: {backend: slurm, slurm: {partition: gpu, nodes: 2, time: '1:00:00'}}\n"
                            "server: {model: m}\n")
    assert config.scheduler.nodes == [] and config.scheduler.slurm.nodes == 2
    assert config.scheduler.slurm.time == "1:00:00"


def test_bad_override_is_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "scheduler: {nodes: [a]}\nserver: {model: m}\n", ["server.tp"])
    assert str(info.value) == "--set 'server.tp': expected KEY=VALUE, e.g. server.tp=16"


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_to_dict_round_trips():
    config = config_from_dict(BASE)
    again = config_from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
