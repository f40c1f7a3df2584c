"""Profiling through the head arms every rank on every node; failures hang the head like vLLM."""

from __future__ import annotations

import gzip
import re
import socket
import statistics
import threading
import time
from pathlib import Path

import orjson

from magpie_trace.engines.sim.kineto import TRIMONTH_NS
from tests.sim.conftest import group_gone, wait_for
from tests.sim.test_sim_server import get, post

WORKER = re.compile(r"(?:(?P<prefix>[^_]+)_)?dp(?P<dp>\d+)_pp(?P<pp>\d+)_tp(?P<tp>\d+)_dcp0_"
                    r"ep(?P<ep>\d+)_rank(?P<rank>\d+)\.(?P<ns>\d+)\.pt\.trace\.json\.gz")


STEP = re.compile(r"execute_context_(?P<ctx>\d+)\((?P<ctx_tokens>\d+)\)_generation_(?P<gen>\d+)\((?P=gen)\)")


def load(path: Path) -> dict:
    return orjson.loads(gzip.decompress(path.read_bytes()))


def kernel_ends_ns(trace: dict) -> list[int]:
    base = trace["baseTimeNanoseconds"]
    return [base + round((e["ts"] + e["dur"]) * 1000) for e in trace["traceEvents"]
            if e.get("cat") == "kernel"]


def load_in_parallel(url: str, requests: int, max_tokens: int) -> None:
    threads = [threading.Thread(target=post, args=(url, {"prompt": "a b c", "max_tokens": max_tokens,
                                                         "stream": True}))
               for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_one_stop_writes_one_file_per_rank_on_every_node_with_the_clock_offset(sim) -> None:
    cluster = sim(nnodes=2, tp=4, offsets_ms={1: 250.0}, layers=3).start().wait_ready()
    head_pid = cluster.processes[0].pid
    assert post(cluster.url("/start_profile"), {"profile_prefix": "run1"})[0] == 200
    assert post(cluster.url("/start_profile"))[0] == 409
    load_in_parallel(cluster.url("/v1/completions"), requests=3, max_tokens=20)
    time.sleep(0.2)  # let the engine run the step that carries the last tokens
    assert post(cluster.url("/stop_profile"))[0] == 200  # returns after every rank has written

    traces = {}
    for node in (0, 1):
        names = sorted(p.name for p in cluster.profile_dir(node).iterdir())
        workers = [n for n in names if WORKER.fullmatch(n)]
        assert len(workers) == 2, names  # exactly one file per rank hosted there
        others = sorted(set(names) - set(workers))
        if node == 0:
            assert len(others) == 1
            assert re.fullmatch(rf"run1_{re.escape(socket.gethostname())}_{head_pid}"
                                r"\.async_llm\.\d+\.pt\.trace\.json\.gz", others[0])
            frontend = load(cluster.profile_dir(0) / others[0])
            spans = [e for e in frontend["traceEvents"] if e.get("name") == "AsyncLLM.generate"]
            assert len(spans) == 3 and all(e["cat"] == "user_annotation" for e in spans)
        else:
            assert others == []  # no temp files left behind, no API server trace
        for name in workers:
            fields = WORKER.fullmatch(name).groupdict()  # type: ignore[union-attr]
            assert fields["prefix"] == "run1" and fields["dp"] == fields["pp"] == fields["ep"] == "0"
            rank = int(fields["rank"])
            assert rank in cluster.ranks[node] and int(fields["tp"]) == rank
            trace = load(cluster.profile_dir(node) / name)
            info = trace["distributedInfo"]
            assert (info["backend"], info["rank"], info["world_size"]) == ("nccl", rank, 4)
            assert trace["baseTimeNanoseconds"] % TRIMONTH_NS == 0
            assert len(trace["deviceProperties"]) == 1
            assert trace["deviceProperties"][0]["id"] == rank - cluster.ranks[node][0]
            traces[rank] = (int(fields["ns"]), trace)

    kernels = {rank: [e for e in t["traceEvents"] if e.get("cat") == "kernel"]
               for rank, (_, t) in traces.items()}
    count = len(kernels[0])
    assert count >= 3 * 10 and count % 3 == 0  # 3 layers per step, one step per 5 ms
    assert all(len(k) == count for k in kernels.values())  # every rank saw every step
    sample = kernels[2][0]
    assert sample["name"].startswith("ncclDevKernel_AllReduce_Sum_bf16_RING_LL")
    assert sample["pid"] == 0 and sample["args"]["Group size"] == 4
    assert sample["args"]["Collective name"] == "allreduce"
    flows = {(e["ph"], e["id"]) for e in traces[2][1]["traceEvents"] if e.get("cat") == "ac2g"}
    assert ("s", sample["args"]["correlation"]) in flows and ("f", sample["args"]["correlation"]) in flows
    markers = [STEP.fullmatch(e["name"]) for e in traces[0][1]["traceEvents"]
               if e.get("cat") == "user_annotation"]
    assert len(markers) == count // 3 and all(markers)
    # Each request's first token is in a context count (with its 3 prompt words), the rest in
    # generation counts: 3 requests x 19 decode tokens.
    assert sum(int(m["ctx"]) for m in markers) == 3  # type: ignore[index]
    assert sum(int(m["ctx_tokens"]) for m in markers) == 9  # type: ignore[index]
    assert sum(int(m["gen"]) for m in markers) == 57  # type: ignore[index]

    ends = {rank: kernel_ends_ns(t) for rank, (_, t) in traces.items()}
    same_node = [abs(a - b) for a, b in zip(ends[0], ends[1])]
    across = [b - a for a, b in zip(ends[0], ends[2])]
    assert max(same_node) <= 3_000  # the same instant, up to the few us of jitter
    assert abs(statistics.median(across) - 250_000_000) <= 3_000  # node 1's clock runs 250 ms ahead
    # Each file is named with its own node's clock at export time.
    assert traces[2][0] - traces[0][0] > 200_000_000


def test_step_window_auto_stop_and_prefix_check(sim) -> None:
    cluster = sim(tp=1, itl_ms=5).start().wait_ready()
    assert post(cluster.url("/start_profile"), {"profile_prefix": "-bad"})[0] == 400
    assert post(cluster.url("/start_profile"), {"delay_iterations": "2"})[0] == 400
    assert post(cluster.url("/start_profile"), {"delay_iterations": 2, "max_iterations": 3})[0] == 200
    load_in_parallel(cluster.url("/v1/completions"), requests=1, max_tokens=30)
    # The ranks write after 3 recorded steps, before any /stop_profile (vLLM's max_iterations).
    wait_for(lambda: any(cluster.profile_dir(0).glob("dp0_*")), 5, "the auto-stopped trace")
    assert post(cluster.url("/start_profile"))[0] == 409  # the session stays open until stopped
    assert post(cluster.url("/stop_profile"))[0] == 200
    (worker,) = cluster.profile_dir(0).glob("dp0_*")
    trace = load(worker)
    markers = [e for e in trace["traceEvents"] if e.get("cat") == "user_annotation"]
    assert len(markers) == 3 and len(kernel_ends_ns(trace)) == 3 * 4
    assert len(list(cluster.profile_dir(0).glob("*.async_llm.*"))) == 1


def test_a_dead_node_exits_1_and_the_head_hangs(sim) -> None:
    cluster = sim(nnodes=2, tp=2, die_after_s={1: 3.0}, itl_ms=5).start().wait_ready()
    node1 = cluster.processes[1]
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as conn:
        body = orjson.dumps({"prompt": "a", "max_tokens": 5000, "stream": True})
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert conn.recv(65536)  # tokens flow while node 1 is alive
        assert node1.wait(timeout=10) == 1
        wait_for(lambda: group_gone(node1.pid), 2, "node 1's rank children to exit")
        wait_for(lambda: "lost node 1" in cluster.log(0), 2, "the head to notice")
        time.sleep(0.1)
        conn.settimeout(0.2)
        while True:  # drain what was sent before the head noticed
            try:
                conn.recv(65536)
            except TimeoutError:
                break
        conn.settimeout(1.5)
        try:
            data = conn.recv(65536)
        except TimeoutError:
            data = None
        assert data is None  # no error, no end: the request hangs, as in a TP engine
    assert cluster.health() == 200 and cluster.processes[0].poll() is None
    assert cluster.log(0).count("lost node 1") == 1
    metrics = get(cluster.url("/metrics")).decode()
    assert 'vllm:num_requests_running{model_name="sim-model",engine="0"} 1.0' in metrics
