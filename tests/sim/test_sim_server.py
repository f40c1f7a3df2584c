"""The sim engine as real processes: readiness, the OpenAI API, /metrics, timing, SIGTERM, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.sim.conftest import group_gone, wait_for
from tests.timing import busy_cores, measure_within


def post(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = orjson.dumps(body) if body is not None else b""
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def sse_events(raw: bytes) -> list:
    lines = [line[6:] for line in raw.split(b"\n\n") if line.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    return [orjson.loads(line) for line in lines[:-1]]


def test_cli_rejects_bad_arguments_with_one_line(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "magpie_trace.engines.sim", "serve", "--model", "m",
            "--nnodes", "2", "--rendezvous", "127.0.0.1:1"]
    cases = {
        ("--node-rank", "0", "--ranks", "0,7", "--tp", "2"): "--ranks 0,7 must be distinct ranks in 0..1",
        ("--node-rank", "0", "--ranks", "0", "--tp", "2", "--headless"): "node 0 is the head",
        ("--node-rank", "1", "--ranks", "x", "--tp", "2", "--headless"): "--ranks 'x'",
    }
    for extra, message in cases.items():
        result = subprocess.run(base + list(extra), check=False, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: sim: ")
        assert message in result.stderr


def test_head_is_not_ready_until_every_node_has_joined(sim) -> None:
    cluster = sim(nnodes=3, tp=3).start([0, 1])
    time.sleep(2.0)  # far past --startup-s: only node 2's absence keeps the head closed
    assert cluster.health() is None  # connection refused, as vLLM's head before it is ready
    assert all(process.poll() is None for process in cluster.processes.values())
    cluster.start([2]).wait_ready()
    assert "node 1 joined" in cluster.log(0) and "node 2 joined" in cluster.log(0)


def test_streaming_usage_errors_and_metrics(sim) -> None:
    cluster = sim(tp=2, ttft_ms=5, itl_ms=2, profile=False).start().wait_ready()
    url = cluster.url

    status, raw = post(url("/v1/completions"), {
        "model": "sim-model", "prompt": "count these five words", "max_tokens": 7,
        "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}})
    events = sse_events(raw)
    content, usage = events[:-1], events[-1]
    assert status == 200 and len(content) == 7
    assert [e["choices"][0]["finish_reason"] for e in content] == [None] * 6 + ["length"]
    text = "".join(e["choices"][0]["text"] for e in content)
    assert len(text.split()) == 7
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}

    status, raw = post(url("/v1/chat/completions"), {
        "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 3, "stream": True})
    events = sse_events(raw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"].get("content") for e in events[1:]] == [" the", " sim", " engine"]
    assert all("usage" not in e for e in events)  # no include_usage, no usage chunk

    status, raw = post(url("/v1/completions"), {"prompt": [1, 2, 3, 4, 5, 6], "max_tokens": 2})
    body = orjson.loads(raw)
    assert status == 200 and body["usage"]["prompt_tokens"] == 6
    assert body["choices"][0]["text"] == " the sim" and body["choices"][0]["finish_reason"] == "length"

    assert post(url("/v1/completions"), {"prompt": "x", "max_tokens": 0})[0] == 400
    assert post(url("/v1/completions"), {"prompt": "x", "model": "other"})[0] == 404
    assert post(url("/v1/completions"), {"prompt": "x", "stream_options": {}})[0] == 400
    assert post(url("/start_profile"))[0] == 404  # no --profile-dir: the routes are not mounted
    assert json.loads(get(url("/v1/models")))["data"][0]["id"] == "sim-model"
    assert "version" in json.loads(get(url("/version")))

    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as conn:
        body = orjson.dumps({"prompt": "a", "max_tokens": 1000, "stream": True})
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        received = b""
        while b'"text"' not in received:
            received += conn.recv(65536)
    # The client went away mid-stream: counted as aborted, its tokens so far as generated.
    wait_for(lambda: 'finished_reason="abort"} 1.0' in get(url("/metrics")).decode(), 5, "abort")

    metrics = get(url("/metrics")).decode()
    labels = '{model_name="sim-model",engine="0"}'
    generated = int(float(re.search(rf"vllm:generation_tokens_total{labels} (\S+)", metrics)[1]))
    assert 12 < generated < 1000
    for line in (f"vllm:prompt_tokens_total{labels} 13.0",
                 f"vllm:num_requests_running{labels} 0.0",
                 f"vllm:num_requests_waiting{labels} 0.0",
                 f"vllm:time_to_first_token_seconds_count{labels} 4.0",
                 ('vllm:request_success_total{model_name="sim-model",engine="0",'
                 'finished_reason="length"} 3.0')):
        assert line in metrics.splitlines(), line
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in metrics


def run_client(url: str, concurrency: int, requests: int, low: int, high: int) -> dict:
    client = Path(__file__).with_name("timing_client.py")
    result = subprocess.run([sys.executable, str(client), url, str(concurrency), str(requests),
                             str(low), str(high)], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ttft_and_tpot_are_precise_as_a_client_sees_them(sim) -> None:
    """TPOT p50 within 1 ms and TTFT p50 within 2 ms at concurrency 1 and 64, p99 within 5 ms at
    256 (ITL 20 ms there: 12,800 chunks/s is most of what a Python server on this 2-core machine
    writes). The client stamps arrivals with the kernel's receive time, so its own backlog is not
    counted. TTFT carries the loop timer's lateness, which a token gap cancels: asyncio's epoll
    timeout rounds up to whole ms (0.76 ms late at the median, measured), and a quiet 2-core CI
    machine saw TTFT 1.04 ms over at concurrency 1."""
    fast = sim(ttft_ms=20, itl_ms=5, profile=False).start()
    slow = sim(ttft_ms=50, itl_ms=20, profile=False).start()
    fast.wait_ready()
    slow.wait_ready()
    others = busy_cores(1.0)  # our servers are idle now: this is everyone else
    if others > 0.5:
        pytest.skip(f"other processes keep {others:.1f} cores busy: latency is not measurable")
    url = fast.url("/v1/completions")
    for concurrency, requests in ((1, 30), (64, 256)):
        measured = run_client(url, concurrency, requests, 10, 40)
        assert measured["bad_counts"] == 0
        assert 20 - 0.2 < measured["ttft_p50"] < 20 + 2, (concurrency, measured)
        assert abs(measured["tpot_p50"] - 5) < 1, (concurrency, measured)
    # Lengths spread over 8-40 tokens, so that finished streams (and the requests replacing them)
    # do not bunch on one engine step; with 8-16 one CI run saw a 5.6 ms p99. One pause of a
    # shared VM delays every one of 256 streams at once, which is the whole p99 (6.5-77 ms over
    # seen, 3.1-5.7 in runs beside them): a miss is measured again.
    measured = measure_within(
        lambda: run_client(slow.url("/v1/completions"), 256, 512, 8, 40),
        lambda m: abs(m["ttft_p99"] - 50) < 5 and abs(m["tpot_p99"] - 20) < 5)
    assert measured["bad_counts"] == 0
    assert abs(measured["ttft_p99"] - 50) < 5, measured
    assert abs(measured["tpot_p99"] - 20) < 5, measured


def test_sigterm_ends_the_node_and_its_rank_children(sim) -> None:
    cluster = sim(tp=2).start().wait_ready()
    head = cluster.processes[0]
    children = [int(p) for p in Path(f"/proc/{head.pid}/task/{head.pid}/children").read_text().split()]
    assert len(children) == 2  # one process per rank
    started = time.monotonic()
    os.kill(head.pid, signal.SIGTERM)
    assert head.wait(timeout=5) == 0
    wait_for(lambda: group_gone(head.pid), 2, "the rank children to exit")
    assert time.monotonic() - started < 2.5
