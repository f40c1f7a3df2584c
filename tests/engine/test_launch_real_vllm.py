"""A real vLLM (CPU build), TP=2 across two nodes, launched by magpie_trace.launch itself.

Through the ssh backend (real sshd on 127.0.0.2 and 127.0.0.3) and the local backend: preflight
(engine version from `vllm --version` on both nodes, the model's files by checksum, free ports),
the planner's mp-executor command lines (`--nnodes 2 --node-rank i --master-addr <head>` and
`--headless` on node 1), readiness (head /health and both nodes alive), one completion through the
head, stop, and nothing left of any process group that was started. About 70-100 s per launch on
2 cores: one launch per backend.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from magpie_trace.config import (
    Config,
    OutputConfig,
    SchedulerConfig,
    ServerConfig,
    validate,
)
from magpie_trace.launch import launch, stop
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir
from tests.launch.simcluster import free_port, local_scheduler
from tests.procs import leftover_processes, wait_for

pytestmark = pytest.mark.engine

READY_TIMEOUT_S = 420.0


def vllm_config(
    scheduler: SchedulerConfig, tmp_path: Path, model: Path, command: list[str], env: dict[str, str]
) -> Config:
    """vLLM TP=2 on two 1-"GPU" nodes; env: only what the CPU build needs beyond ours."""
    scheduler.gpus_per_node = 1
    config = Config(
        scheduler=scheduler,
        server=ServerConfig(
            engine="vllm",
            model=str(model),
            tp=2,
            host=scheduler.nodes[0].address or scheduler.nodes[0].host,
            port=free_port(),
            rendezvous_port=free_port(),
            command=list(command),
            env={k: v for k, v in env.items() if os.environ.get(k) != v},
            ready_timeout_s=READY_TIMEOUT_S,
        ),
        output=OutputConfig(dir=str(tmp_path / "runs")),
        source="test-config",
    )
    validate(config)
    return config


def complete(url: str, model: str) -> dict:
    body = {"model": model, "prompt": "the node rank waits", "max_tokens": 8, "temperature": 0}
    request = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.mark.parametrize("backend", ["ssh", "local"])
def test_real_vllm_tp2_two_nodes_launch_serve_stop(
    backend, request, tmp_path, tiny_model, vllm_command, engine_env
):
    if backend == "ssh":
        scheduler = request.getfixturevalue("ssh_scheduler")(2)  # 127.0.0.2, 127.0.0.3
    else:
        scheduler = local_scheduler(tmp_path, 2)
    config = vllm_config(scheduler, tmp_path, tiny_model, vllm_command, engine_env)
    plan = make_plan(config)
    assert "--headless" in plan.nodes[1].argv and "--headless" not in plan.nodes[0].argv
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    marks: dict[str, float] = {}
    began = time.monotonic()

    def progress(message: str) -> None:
        marks.setdefault(message.split()[0], time.monotonic() - began)

    state = launch(plan, run_dir, progress=progress)
    ready_s = time.monotonic() - began
    pgids = [h.pgid for h in state.handles.values()]
    try:
        assert set(state.handles) == {"node0", "node1"}
        preflight = json.loads(run_dir.preflight.read_text())["nodes"]
        versions = {node["engine_version"] for node in preflight}
        assert len(versions) == 1 and versions.pop().startswith("0.")
        assert all(node["model_files"].get("config.json") for node in preflight)
        assert preflight[0]["model_files"] == preflight[1]["model_files"]

        reply = complete(plan.head_url, str(tiny_model))
        assert isinstance(reply["choices"][0]["text"], str)
        assert reply["usage"]["completion_tokens"] == 8
    finally:
        stop_began = time.monotonic()
        stop(plan, run_dir)
        stop_s = time.monotonic() - stop_began
    assert wait_for(lambda: not leftover_processes(pgids), 10), leftover_processes(pgids)
    logs = {p.name: p.read_text(errors="replace") for p in run_dir.logs.iterdir()}
    assert set(logs) == {"node0.log", "node1.log"}
    assert "Application startup complete" in logs["node0.log"]
    print(
        f"{backend}: preflight + start {marks.get('started', 0) - marks.get('preflight', 0):.1f} s, "
        f"launch to ready {ready_s:.1f} s (server {state.ready_at - state.started_at:.1f} s), "
        f"stop {stop_s:.1f} s"
    )
