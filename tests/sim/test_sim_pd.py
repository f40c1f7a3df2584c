"""The sim's prefill and decode roles: both routers' handoff protocols, the KV transfer's timing,
its events in every rank's trace of both groups, and the failures a decode server reports."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from magpie_trace.ports import free_port
from tests.sim.test_sim_server import post, sse_events
from tests.timing import busy_cores

TTFT_MS, ITL_MS, TRANSFER_MS = 30.0, 5.0, 8.0


def pd_pair(sim, offsets: dict[str, dict[int, float]] | None = None, transfer_ms: float = TRANSFER_MS):
    """A prefill group (TP2 over 2 nodes) and a decode group (TP2 over 2 nodes), both profiling."""
    offsets = offsets or {}
    kv_port = free_port()
    prefill = sim(nnodes=2, tp=2, ttft_ms=TTFT_MS, itl_ms=ITL_MS, offsets_ms=offsets.get("prefill"),
                  extra=["--pd-role", "prefill"],
                  head_extra=["--kv-port", str(kv_port), "--transfer-ms", str(transfer_ms)])
    decode = sim(nnodes=2, tp=2, ttft_ms=TTFT_MS, itl_ms=ITL_MS, offsets_ms=offsets.get("decode"),
                 extra=["--pd-role", "decode"])
    prefill.start()
    decode.start()
    prefill.wait_ready()
    decode.wait_ready()
    return prefill, decode, kv_port


def timed_stream(url: str, body: dict) -> tuple[float, list[float]]:
    """Seconds from sending to each SSE token chunk (and the send instant, perf_counter)."""
    import urllib.request

    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                     headers={"Content-Type": "application/json"})
    sent = time.perf_counter()
    stamps = []
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response:
            if line.startswith(b"data: {"):
                stamps.append(time.perf_counter())
    return sent, stamps


def transfer_events(cluster) -> dict[int, list[dict]]:
    """Each node's kv_transfer events (every rank's file of the latest capture), by node."""
    found: dict[int, list[dict]] = {}
    for node in range(cluster.nnodes):
        for path in sorted(cluster.profile_dir(node).glob("*rank*.pt.trace.json.gz")):
            trace = orjson.loads(gzip.decompress(path.read_bytes()))
            found.setdefault(node, []).extend(
                e for e in trace["traceEvents"] if e.get("name", "").startswith("kv_transfer."))
    return found


def test_vllm_router_protocol_hands_the_kv_over_after_the_transfer_delay(sim) -> None:
    prefill, decode, kv_port = pd_pair(sim)
    body = {"prompt": "a b c d", "max_tokens": 6, "stream": False,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}}
    started = time.perf_counter()
    status, raw = post(prefill.url("/v1/completions"), body)
    prefill_s = time.perf_counter() - started
    assert status == 200, raw
    answer = orjson.loads(raw)
    params = answer["kv_transfer_params"]
    assert answer["usage"]["completion_tokens"] == 1  # a prefill server computes one token
    assert params["do_remote_prefill"] is True and params["remote_port"] == kv_port
    assert params["remote_host"] == "127.0.0.1" and params["remote_request_id"] == answer["id"]
    assert prefill_s >= TTFT_MS / 1000
    sent, stamps = timed_stream(decode.url("/v1/completions"),
                                {"prompt": "a b c d", "max_tokens": 6, "stream": True,
                                 "kv_transfer_params": params})
    assert len(stamps) == 6
    # The handoff takes the transfer delay from the prefill's first token: the decode's first token
    # comes no sooner, and a decode that asks after the delay is over has the KV at once.
    assert (stamps[0] - started) * 1000 >= TTFT_MS + TRANSFER_MS
    late = dict(body, prompt="e f g h", stream=False)
    status, raw = post(prefill.url("/v1/completions"), late)
    assert status == 200, raw
    time.sleep(2 * TRANSFER_MS / 1000)
    sent, late_stamps = timed_stream(decode.url("/v1/completions"),
                                     {"prompt": "e f g h", "max_tokens": 6, "stream": True,
                                      "kv_transfer_params": orjson.loads(raw)["kv_transfer_params"]})
    assert len(late_stamps) == 6 and (late_stamps[0] - sent) * 1000 < TRANSFER_MS
    gaps = sorted((b - a) * 1000 for a, b in zip(stamps, stamps[1:]))
    if busy_cores(0.5) <= 0.5:  # a busy machine delivers tokens in bursts
        assert abs(gaps[len(gaps) // 2] - ITL_MS) < 2.0


def test_sglang_router_protocol_with_both_sides_at_once_and_transfer_events_on_every_rank(sim) -> None:
    # Node clocks: prefill node0 +0, node1 +7 ms; decode node0 -40 ms, node1 +55 ms.
    offsets = {"prefill": {1: 7.0}, "decode": {0: -40.0, 1: 55.0}}
    prefill, decode, kv_port = pd_pair(sim, offsets)
    for cluster in (prefill, decode):
        assert post(cluster.url("/start_profile"), {"profile_prefix": "pd"})[0] == 200
    rooms = [random.getrandbits(63) for _ in range(5)]
    for room in rooms:
        body = {"prompt": "a b c", "max_tokens": 4, "stream": True, "bootstrap_host": "127.0.0.1",
                "bootstrap_port": kv_port, "bootstrap_room": room}
        results: dict[str, object] = {}

        def prefill_side(body=body, results=results) -> None:
            results["prefill"] = post(prefill.url("/v1/completions"), body)

        thread = threading.Thread(target=prefill_side)
        earliest = time.perf_counter()  # the prefill cannot have its request before this
        thread.start()
        sent, stamps = timed_stream(decode.url("/v1/completions"), body)
        thread.join()
        status, raw = results["prefill"]  # type: ignore[misc]
        assert status == 200 and len(sse_events(raw)) == 1  # one token from the prefill
        assert len(stamps) == 4
        # The KV lands TRANSFER_MS after the prefill's first token: the prefill sends it early by
        # the link's measured one-way latency, an estimate (0.5 ms of slack for its error).
        assert (stamps[0] - earliest) * 1000 >= TTFT_MS + TRANSFER_MS - 0.5
    for cluster in (prefill, decode):
        assert post(cluster.url("/stop_profile"), timeout=30)[0] == 200
    sends, recvs = transfer_events(prefill), transfer_events(decode)
    assert set(sends) == set(recvs) == {0, 1}  # every node of both groups shows every transfer
    for events in sends.values():
        assert {e["name"] for e in events} == {"kv_transfer.send"}
        assert sorted(int(e["args"]["transfer_id"]) for e in events) == sorted(rooms)
        assert all(e["args"]["xfer_us"] == TRANSFER_MS * 1000 for e in events)
    # Each (recv, send) pair of one transfer is an NTP exchange: it bounds the offset between the
    # two nodes' clocks, and the true (configured) offset lies within the bound.
    for p_node, p_events in sends.items():
        for d_node, d_events in recvs.items():
            true_ms = offsets["prefill"].get(p_node, 0.0) - offsets["decode"].get(d_node, 0.0)
            by_id = {e["args"]["transfer_id"]: e for e in d_events}
            for send in p_events:
                recv = by_id[send["args"]["transfer_id"]]
                t1, t4 = recv["ts"], recv["ts"] + recv["dur"]
                t2, t3 = send["ts"], send["ts"] + send["dur"]
                estimate_ms = ((t2 - t1) + (t3 - t4)) / 2 / 1000
                bound_ms = ((t4 - t1) - (t3 - t2)) / 2 / 1000
                assert bound_ms >= 0
                assert abs(estimate_ms - true_ms) <= bound_ms + 0.002


def test_decode_refuses_requests_no_router_paired_and_reports_a_lost_prefill(sim) -> None:
    prefill, decode, kv_port = pd_pair(sim)
    status, raw = post(decode.url("/v1/completions"), {"prompt": "a", "max_tokens": 2})
    assert status == 400 and b"PD router" in raw
    status, raw = post(decode.url("/v1/completions"),
                       {"prompt": "a", "max_tokens": 2, "bootstrap_host": "127.0.0.1",
                        "bootstrap_room": 1, "bootstrap_port": None})
    assert status == 400 and b"bootstrap_port" in raw
    # A prefill that is not there: the decode answers 503 naming the KV port it could not reach.
    dead = free_port()
    status, raw = post(decode.url("/v1/completions"),
                       {"prompt": "a", "max_tokens": 2, "bootstrap_host": "127.0.0.1",
                        "bootstrap_room": 2, "bootstrap_port": dead})
    assert status == 503 and f"127.0.0.1:{dead}".encode() in raw
    # Streamed, the headers went out on arrival (as vLLM's do): the failure is an error event.
    status, raw = post(decode.url("/v1/completions"),
                       {"prompt": "a", "max_tokens": 2, "stream": True, "bootstrap_host": "127.0.0.1",
                        "bootstrap_room": 3, "bootstrap_port": dead})
    (event,) = sse_events(raw)
    assert status == 200 and event["error"]["code"] == 503 and f"127.0.0.1:{dead}" in event["error"]["message"]
    # A plain request to a prefill server is served whole (vLLM's kv_both instance does so).
    status, raw = post(prefill.url("/v1/completions"), {"prompt": "a", "max_tokens": 3})
    assert status == 200 and orjson.loads(raw)["usage"]["completion_tokens"] == 3


def test_cli_refuses_a_kv_port_outside_a_prefill_head(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "magpie_trace.engines.sim", "serve", "--model", "m", "--nnodes",
            "1", "--node-rank", "0", "--ranks", "0"]
    for extra in (["--pd-role", "prefill"], ["--pd-role", "decode", "--kv-port", "5000"],
                  ["--kv-port", "5000"]):
        result = subprocess.run(base + extra, check=False, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, extra
        assert result.stderr.startswith("error: sim: --kv-port is required on a prefill head")
