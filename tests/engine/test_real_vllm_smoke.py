"""A real vLLM (CPU build) with TP=2 across two "nodes" on loopback, started by hand, no magpie code.

This pins down the facts the rest of the project builds on: the mp-backend multi-node command lines
(node 0 serves on 127.0.0.1, node 1 runs --headless), profiler arming with --profiler-config, one
/start_profile + /stop_profile on node 0 writing one trace per rank on both nodes, and that stopping
the two process groups leaves nothing running.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from magpie_trace.ports import free_port
from tests.procs import group_members, leftover_processes

pytestmark = pytest.mark.engine

READY_TIMEOUT_S = 420.0
STOP_TIMEOUT_S = 30.0


def _http(method: str, url: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each group we started, SIGKILL what is left after STOP_TIMEOUT_S, reap our children."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and leftover_processes(p.pid for p in procs):
        time.sleep(0.2)
    for proc in procs:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


def _wait_ready(url: str, procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} before ready:\n{_log_tail(logs[name])}")
        try:
            if _http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{_log_tail(logs['node0'])}")


def _load_trace(path: Path) -> dict:
    with gzip.open(path, "rb") as fh:
        return json.load(fh)


def test_vllm_tp2_across_two_loopback_nodes_serves_profiles_and_stops(
    tmp_path: Path, tiny_model: Path, vllm_command: list[str], engine_env: dict[str, str]
) -> None:
    trace_dir = tmp_path / "traces"
    http_port, master_port = free_port(), free_port()
    profiler_config = json.dumps(
        {"profiler": "torch", "torch_profiler_dir": str(trace_dir), "torch_profiler_with_stack": False}
    )
    common = [
        *vllm_command, "serve", str(tiny_model),
        "--tensor-parallel-size", "2", "--nnodes", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(master_port),
        "--profiler-config", profiler_config,
    ]  # fmt: skip
    argvs = {
        "node0": [*common, "--node-rank", "0", "--host", "127.0.0.1", "--port", str(http_port)],
        "node1": [*common, "--node-rank", "1", "--headless"],
    }
    logs = {name: tmp_path / f"{name}.log" for name in argvs}
    procs: dict[str, subprocess.Popen] = {}
    base = f"http://127.0.0.1:{http_port}"
    completion = {"model": str(tiny_model), "prompt": "the node rank waits", "max_tokens": 8, "temperature": 0}
    try:
        started = time.monotonic()
        for name, argv in argvs.items():
            with logs[name].open("wb") as log:
                procs[name] = subprocess.Popen(
                    argv, env=engine_env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        _wait_ready(f"{base}/health", procs, logs)
        print(f"time to ready: {time.monotonic() - started:.1f} s")

        status, body = _http("POST", f"{base}/v1/completions", completion)
        assert status == 200, body
        choice = json.loads(body)["choices"][0]
        assert isinstance(choice["text"], str) and choice["finish_reason"] == "length"
        assert json.loads(body)["usage"]["completion_tokens"] == 8

        assert _http("POST", f"{base}/start_profile")[0] == 200
        for _ in range(3):
            assert _http("POST", f"{base}/v1/completions", completion)[0] == 200
        stop_started = time.monotonic()
        assert _http("POST", f"{base}/stop_profile", timeout=300)[0] == 200
        print(f"stop_profile: {time.monotonic() - stop_started:.1f} s")

        rank_traces = sorted(trace_dir.glob("rank*.pt.trace.json.gz"))
        assert len(rank_traces) == 2, sorted(p.name for p in trace_dir.iterdir())
        traces = [_load_trace(p) for p in rank_traces]
        assert sorted(t["distributedInfo"]["rank"] for t in traces) == [0, 1]
        assert all(t["distributedInfo"]["world_size"] == 2 for t in traces)
        allreduces = [
            sum(1 for e in t["traceEvents"] if e.get("name") == "c10d::allreduce_") for t in traces
        ]
        assert allreduces[0] > 0 and allreduces[0] == allreduces[1]
        assert len(list(trace_dir.glob("*.async_llm.*.pt.trace.json.gz"))) == 1
    finally:
        _stop_groups(list(procs.values()))
    assert leftover_processes(p.pid for p in procs.values()) == {}
