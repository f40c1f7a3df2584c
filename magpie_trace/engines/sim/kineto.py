"""Kineto (torch.profiler) JSON traces for the sim's ranks and API server, named as vLLM names them.

Layout and conventions follow real Kineto traces (tests/data/traces):
`ts`/`dur` in microseconds relative to `baseTimeNanoseconds` (wall clock floored to 7889238 s),
GPU events on pid = device index and tid = stream, ac2g flows from the launch to the kernel, and
the collective metadata c10d puts on `record_param_comms` copied onto the kernel.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from magpie_trace.clock_client import shifted_ns

from magpie_trace.engines.sim.layout import ProcessGroups, RankPlace
from magpie_trace.fsutil import atomic_write_bytes
from magpie_trace.topology import Layout

TRIMONTH_NS = 7_889_238 * 1_000_000_000
KERNEL = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
P2P_KERNEL = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"
STREAM = 7
P2P_STREAM = 20
HIDDEN = 4096  # all-reduce elements per token
END_JITTER_NS = 3_000  # a kernel's end on one rank differs from the true instant by at most this


def base_time_ns(clock_ns: int) -> int:
    """Kineto's ChromeTraceBaseTime: the wall clock floored to a 7,889,238 s boundary."""
    return clock_ns // TRIMONTH_NS * TRIMONTH_NS


def worker_file_name(prefix: str | None, place: RankPlace, time_ns: int) -> str:
    """vLLM's GPU worker: `[{prefix}_]dp{D}_pp{P}_tp{T}_dcp0_ep{E}_rank{R}.{time_ns}.pt.trace.json.gz`."""
    worker = f"{prefix}_{place.suffix()}" if prefix else place.suffix()
    return f"{worker}.{time_ns}.pt.trace.json.gz"


def frontend_file_name(prefix: str | None, hostname: str, pid: int, time_ns: int) -> str:
    """vLLM's API server (AsyncLLM): `[{prefix}_]{hostname}_{pid}.async_llm.{time_ns}.pt.trace.json.gz`."""
    worker = f"{hostname}_{pid}.async_llm"
    if prefix:
        worker = f"{prefix}_{worker}"
    return f"{worker}.{time_ns}.pt.trace.json.gz"


def write_trace(directory: str | Path, name: str, trace: dict[str, Any]) -> Path:
    """Gzip the trace into directory/name through a temp file, so no reader sees half a file."""
    path = Path(directory) / name
    atomic_write_bytes(path, gzip.compress(orjson.dumps(trace), compresslevel=6))
    return path


@dataclass(frozen=True)
class Step:
    """One engine step as the head announced it: its true (real-time) end and what it ran."""

    n: int
    end_ns: int
    period_ns: int
    ctx_reqs: int
    ctx_tokens: int
    gen_reqs: int

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Step:
        return cls(message["n"], message["end_ns"], message["period_ns"], message["ctx_reqs"],
                   message["ctx_tokens"], message["gen_reqs"])


def _us(ns: int) -> float:
    return ns / 1000


def _metadata(pid: int | str, tid: int | str, name: str, args: dict[str, Any], ts: float) -> dict:
    return {"ph": "M", "name": name, "ts": ts, "pid": pid, "tid": tid, "args": args}


def _header(base_ns: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"schemaVersion": 1, **extra, "displayTimeUnit": "ms", "baseTimeNanoseconds": base_ns}


def rank_trace(
    *,
    layout: Layout,
    place: RankPlace,
    groups: ProcessGroups,
    device: int,
    pid: int,
    steps: list[Step],
    layers: int,
    offset_ns: int,
    base_ns: int,
    drift_ppm: float = 0.0,
    start_ns: int,
    end_ns: int,
    trace_name: str,
) -> dict[str, Any]:
    """One rank's trace: per step a step marker and, per layer, a TP all-reduce; with pipeline
    stages, each stage runs its layers in its share of the step and hands its activations to the
    next stage through an NCCL SendRecv kernel pair (no args, as vLLM's pynccl path writes them).

    Every rank's all-reduce of (step, layer) ends at the same true instant plus at most
    END_JITTER_NS, and so do both kernels of a transfer; starts differ (arrival skew, a receive
    waiting for its send). All times are written in this node's clock (clock_client.shifted_ns:
    true time + offset_ns + drift); start_ns/end_ns bound the profiling window in that clock.
    """
    rng = random.Random(place.global_rank)
    events: list[dict[str, Any]] = []
    external = correlation = 0
    ranks_text = str(groups.tp_ranks)
    group_args = {
        "Collective name": "allreduce",
        "Group size": layout.tp,
        "dtype": "BFloat16",
        "In split size": "[]",
        "Out split size": "[]",
        "Process Group Name": groups.tp_name,
        "Process Group Description": "undefined",
        "Process Group Ranks": ranks_text,
    }
    for step in steps:
        period = step.period_ns
        first = shifted_ns(step.end_ns, offset_ns, drift_ppm) - period
        tokens = step.ctx_tokens + step.gen_reqs
        external += 1
        events.append({
            "ph": "X", "cat": "user_annotation",
            "name": f"execute_context_{step.ctx_reqs}({step.ctx_tokens})"
                    f"_generation_{step.gen_reqs}({step.gen_reqs})",
            "pid": pid, "tid": pid, "ts": _us(first + period // 50 - base_ns),
            "dur": _us(period * 48 // 50), "args": {"External id": external},
        })
        slot = period // layout.pp  # this stage's share of the step
        slot_start = first + place.pp * slot
        gap = slot // (layers + 1)
        unit = max(gap // 1000, 1)  # 1 us when a step of 5 ms runs 4 layers
        for handoff, peer_stage in ((slot_start, place.pp - 1), (slot_start + slot, place.pp + 1)):
            if 0 <= peer_stage < layout.pp:  # receive at the start of our share, send at its end
                p2p_end = handoff + rng.randrange(END_JITTER_NS + 1)
                waited = 20 * unit + rng.randrange(300 * unit + 1) if peer_stage < place.pp else 0
                p2p_start = p2p_end - 10 * unit - waited - rng.randrange(10 * unit + 1)
                correlation += 1
                events += [
                    {"ph": "X", "cat": "kernel", "name": P2P_KERNEL, "pid": device, "tid": P2P_STREAM,
                     "ts": _us(p2p_start - base_ns), "dur": _us(p2p_end - p2p_start),
                     "args": {"queued": 0, "device": device, "context": 1, "stream": P2P_STREAM,
                              "correlation": correlation, "grid": [1, 1, 1], "block": [640, 1, 1]}},
                ]
        for layer in range(layers):
            kernel_end = slot_start + (layer + 1) * gap + rng.randrange(END_JITTER_NS + 1)
            kernel_start = kernel_end - 20 * unit - rng.randrange(40 * unit + 1)
            launch = kernel_start - 25 * unit - rng.randrange(25 * unit + 1)
            launch_dur = 5 * unit
            external += 2
            correlation += 1
            op_args = {"External id": external - 1, "Record function id": 0}
            # Seq: the process group's collective count, the same on every rank (PyTorch >= 2.12
            # records it); it lets the merge match collectives exactly despite periodic steps.
            seq = step.n * layers + layer
            comm_args = {"External id": external, "Record function id": 0,
                         "In msg nelems": tokens * HIDDEN, "Out msg nelems": tokens * HIDDEN,
                         "Rank": place.global_rank, "Seq": seq, **group_args}
            events += [
                {"ph": "X", "cat": "cpu_op", "name": "c10d::allreduce_", "pid": pid, "tid": pid,
                 "ts": _us(launch - 5 * unit - base_ns), "dur": _us(launch_dur + 8 * unit),
                 "args": op_args},
                {"ph": "X", "cat": "cpu_op", "name": "record_param_comms", "pid": pid, "tid": pid,
                 "ts": _us(launch - 3 * unit - base_ns), "dur": _us(launch_dur + 4 * unit),
                 "args": comm_args},
                {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": pid,
                 "tid": pid, "ts": _us(launch - base_ns), "dur": _us(launch_dur),
                 "args": {"External id": external, "cbid": 211, "correlation": correlation}},
                {"ph": "X", "cat": "kernel", "name": KERNEL, "pid": device, "tid": STREAM,
                 "ts": _us(kernel_start - base_ns), "dur": _us(kernel_end - kernel_start),
                 "args": {"External id": external, "queued": 0, "device": device, "context": 1,
                          "stream": STREAM, "correlation": correlation,
                          "registers per thread": 96, "shared memory": 103808,
                          "grid": [16, 1, 1], "block": [512, 1, 1],
                          "In msg nelems": tokens * HIDDEN, "Out msg nelems": tokens * HIDDEN,
                          "Seq": seq, **group_args}},
                {"ph": "s", "id": correlation, "pid": pid, "tid": pid, "ts": _us(launch - base_ns),
                 "cat": "ac2g", "name": "ac2g"},
                {"ph": "f", "id": correlation, "pid": device, "tid": STREAM,
                 "ts": _us(kernel_start - base_ns), "cat": "ac2g", "name": "ac2g", "bp": "e"},
            ]
    start = _us(start_ns - base_ns)
    worker = "VLLM::Worker" + "".join(
        f"_{label}{value}" for label, size, value in
        (("DP", layout.dp, place.dp), ("PP", layout.pp, place.pp), ("TP", layout.tp, place.tp))
        if size > 1
    )
    meta = [
        _metadata(pid, 0, "process_name", {"name": worker}, start),
        _metadata(pid, 0, "process_labels", {"labels": "CPU"}, start),
        _metadata(pid, 0, "process_sort_index", {"sort_index": pid}, start),
        _metadata(pid, pid, "thread_name", {"name": f"thread {pid} (VLLM::Worker)"}, start),
        _metadata(pid, pid, "thread_sort_index", {"sort_index": pid}, start),
        _metadata(device, 0, "process_name", {"name": f"GPU {device}"}, start),
        _metadata(device, 0, "process_labels", {"labels": f"GPU {device}"}, start),
        _metadata(device, 0, "process_sort_index", {"sort_index": 5000000 + device}, start),
        _metadata(device, STREAM, "thread_name", {"name": f"stream {STREAM}"}, start),
        _metadata(device, STREAM, "thread_sort_index", {"sort_index": STREAM}, start),
    ]
    window_end = {"ph": "i", "s": "g", "name": "Record Window End", "pid": "", "tid": "",
                  "ts": _us(end_ns - base_ns)}
    header = _header(base_ns, {
        "deviceProperties": [{
            "id": device, "name": "Simulated GPU (magpie-trace sim)", "totalGlobalMem": 85899345920,
            "computeMajor": 9, "computeMinor": 0, "maxThreadsPerBlock": 1024,
            "maxThreadsPerMultiprocessor": 2048, "regsPerBlock": 65536, "warpSize": 32,
            "sharedMemPerBlock": 49152, "numSms": 132,
        }],
        "distributedInfo": {
            "backend": "nccl", "rank": place.global_rank, "world_size": layout.world_size,
            "pg_count": groups.count, "pg_config": groups.config, "nccl_version": "2.27.5",
        },
        "vllm_version": "sim",
    })
    return {**header, "traceEvents": meta + events + [window_end], "traceName": trace_name}


def transfer_events(pid: int, transfers: list[dict[str, Any]], offset_ns: int,
                    base_ns: int) -> list[dict[str, Any]]:
    """KV handoffs as CPU spans `kv_transfer.send` (prefill) / `kv_transfer.recv` (decode).

    A send spans pull received -> KV sent; a recv spans pull sent -> KV received, so the pair of
    one `transfer_id` nests recv around send in true time (an NTP exchange between the nodes).
    """
    return [
        {"ph": "X", "cat": "user_annotation", "name": f"kv_transfer.{t['side']}", "pid": pid,
         "tid": pid, "ts": _us(t["start_ns"] + offset_ns - base_ns),
         "dur": _us(t["end_ns"] - t["start_ns"]),
         "args": {"transfer_id": t["key"], "peer": t["peer"], "xfer_us": _us(t["xfer_ns"])}}
        for t in transfers
    ]


def frontend_trace(
    *,
    pid: int,
    requests: list[tuple[str, int, int]],
    base_ns: int,
    start_ns: int,
    end_ns: int,
    hostname: str,
    trace_name: str,
) -> dict[str, Any]:
    """The API server's CPU-only trace: one span per request (id, arrival, finish) in the window."""
    start = _us(start_ns - base_ns)
    events = [
        _metadata(pid, 0, "process_name", {"name": "python"}, start),
        _metadata(pid, 0, "process_labels", {"labels": "CPU"}, start),
        _metadata(pid, 0, "process_sort_index", {"sort_index": pid}, start),
    ]
    for external, (request_id, arrival, finish) in enumerate(requests, 1):
        events.append({
            "ph": "X", "cat": "user_annotation", "name": "AsyncLLM.generate", "pid": pid,
            "tid": pid, "ts": _us(arrival - base_ns), "dur": _us(finish - arrival),
            "args": {"External id": external, "request_id": request_id},
        })
    events.append({"ph": "i", "s": "g", "name": "Record Window End", "pid": "", "tid": "",
                   "ts": _us(end_ns - base_ns)})
    header = _header(base_ns, {"deviceProperties": [], "vllm_version": "sim", "host_name": hostname})
    return {**header, "traceEvents": events, "traceName": trace_name}
