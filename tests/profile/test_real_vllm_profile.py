"""A real vLLM (CPU build), TP=2 across two ssh "nodes" (sshd on 127.0.0.2 and 127.0.0.3), launched
by magpie-trace, profiled during real requests and collected: node0-TP0, node1-TP1 and the API
server's trace, each rank's distributedInfo matching its name. Node 1 runs under libfaketime 250 ms
ahead, and the collected traces keep that offset (median difference of matching all-reduce ends).

One launch (about 70 s here) serves every assertion.
"""

from __future__ import annotations

import gzip
import json
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from magpie_trace import trace_probe
from magpie_trace.backends import make_backend
from magpie_trace.collect import collect, tracelens_command
from magpie_trace.config import (
    ProfileConfig,
)
from magpie_trace.launch import launch, stop
from magpie_trace.plan import make_plan
from magpie_trace.profile import capture
from magpie_trace.rundir import new_run_dir
from tests.fixtures.engine_env import FAKETIME_OFFSET_S

pytestmark = pytest.mark.engine

def allreduce_ends_ns(path: Path) -> list[int]:
    """Absolute wall-clock end (ns) of every c10d::allreduce_ CPU op, in trace order."""
    with gzip.open(path, "rb") as handle:
        trace = json.load(handle)
    base = int(trace.get("baseTimeNanoseconds", 0))
    events = [e for e in trace["traceEvents"] if e.get("name") == "c10d::allreduce_" and e.get("ph") == "X"]
    events.sort(key=lambda e: e["ts"])
    return [base + round((e["ts"] + e["dur"]) * 1000) for e in events]


def requests_while(url: str, model: str, stop_event: threading.Event, done: list[int]) -> None:
    body = json.dumps({"model": model, "prompt": "the node rank waits", "max_tokens": 8}).encode()
    for _ in range(500):  # bounded
        if stop_event.is_set():
            return
        request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
        done.append(1)


def test_real_vllm_tp2_two_ssh_nodes_profiled_and_collected(skewed_vllm_tp2):
    config = skewed_vllm_tp2("real-vllm-test", profile=ProfileConfig(enabled=True, with_stack=False, timeout_s=300.0))
    scheduler = config.scheduler
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    started = time.monotonic()
    launch(plan, run_dir, backend)
    print(f"ready after {time.monotonic() - started:.1f} s")
    try:
        stop_event, done = threading.Event(), []
        load = threading.Thread(
            target=requests_while, args=(plan.head_url, config.server.model, stop_event, done), daemon=True
        )
        load.start()
        try:
            started = time.monotonic()
            record = capture(plan, backend, run_dir, duration_s=3.0)
            print(f"capture (3 s open, stop, wait for files): {time.monotonic() - started:.1f} s")
        finally:
            stop_event.set()
            load.join(timeout=120)
        assert done, "no request completed during the capture"

        started = time.monotonic()
        result = collect(plan, backend, run_dir)
        print(f"collect: {time.monotonic() - started:.2f} s for "
              f"{sum(e['size'] for e in result.manifest['files']) / 1e6:.1f} MB")
    finally:
        stop(plan, run_dir, backend)
        backend.close()

    names = sorted(p.name for p in run_dir.traces.iterdir())
    assert names == ["manifest.json", "node0-TP0.trace.json.gz", "node0-api-server.trace.json.gz",
                     "node1-TP1.trace.json.gz"]
    manifest = result.manifest
    assert manifest["engine"] == "vllm" and manifest["engine_version"]
    assert set(manifest["clock_offsets_ns"]) == {"0", "1"}
    by_file = {entry["file"]: entry for entry in manifest["files"]}
    for node, rank in ((0, 0), (1, 1)):
        entry = by_file[f"node{node}-TP{rank}.trace.json.gz"]
        assert (entry["node"], entry["global_rank"], entry["tp_rank"]) == (node, rank, rank)
        assert entry["host"] == scheduler.nodes[node].host
        assert entry["source_name"] == Path(entry["source_path"]).name
        assert entry["source_name"].startswith(f"{record.profile_id}_rank{rank}.")  # CPU worker name
        probe = trace_probe.probe(str(run_dir.traces / entry["file"]))
        assert probe["complete"] and (probe["rank"], probe["world_size"]) == (rank, 2)
        assert trace_probe.sha256_file(entry["source_path"]) == entry["sha256"]  # source untouched
    api = by_file["node0-api-server.trace.json.gz"]
    assert api["kind"] == "api_server" and ".async_llm." in api["source_name"]
    assert tracelens_command(manifest, run_dir.traces) is not None

    ends0 = allreduce_ends_ns(run_dir.traces / "node0-TP0.trace.json.gz")
    ends1 = allreduce_ends_ns(run_dir.traces / "node1-TP1.trace.json.gz")
    assert len(ends0) == len(ends1) > 50
    diffs_ms = [(b - a) / 1e6 for a, b in zip(ends0, ends1)]
    median = statistics.median(diffs_ms)
    print(f"all-reduce end difference node1 - node0: median {median:.2f} ms over {len(diffs_ms)}")
    assert abs(median - FAKETIME_OFFSET_S * 1000) < 10.0
