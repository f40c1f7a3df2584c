"""Small Kineto traces written here, whose overlap is known by construction (times in microseconds).

Written with the stdlib json module, pretty-printed like Kineto (indent, `"key": value`), or compact
with orjson: the events scanner must read both layouts.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson

BASE_NS = 1_790_857_026_000_000_000  # a Kineto base: a whole number of 7889238 s periods


def trace(rank: int, world: int, events: list[dict[str, Any]], backend: str = "nccl") -> dict[str, Any]:
    return {
        "schemaVersion": 1, "deviceProperties": [],
        "distributedInfo": {"backend": backend, "rank": rank, "world_size": world},
        "traceEvents": events, "displayTimeUnit": "ms", "baseTimeNanoseconds": BASE_NS,
        "traceName": f"rank{rank}",
    }


def x(cat: str, name: str, ts: float, dur: float, pid: Any, tid: Any, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}


def kernel(name: str, ts: float, dur: float, stream: int, correlation: int, **args: Any) -> dict[str, Any]:
    return x("kernel", name, ts, dur, 0, stream, device=0, stream=stream, correlation=correlation, **args)


def launch(ts: float, correlation: int) -> dict[str, Any]:
    return x("cuda_runtime", "cudaLaunchKernel", ts, 1, 1000, 1000, correlation=correlation)


def meta(name: str, pid: Any, tid: Any, value: str) -> dict[str, Any]:
    return {"ph": "M", "name": name, "pid": pid, "tid": tid, "args": {"name": value}}


def write(doc: dict[str, Any], path: Path, pretty: bool = True) -> Path:
    data = json.dumps(doc, indent=2).encode() if pretty else orjson.dumps(doc)
    path.write_bytes(gzip.compress(data, compresslevel=1))
    return path


COMM_ARGS = {"Collective name": "allreduce", "In msg nelems": 1048576, "Out msg nelems": 1048576,
             "dtype": "Float", "Group size": 2, "Process Group Name": "0"}
ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


BROADCAST_ARGS = {"Collective name": "broadcast", "In msg nelems": 256, "Out msg nelems": 256, "dtype": "BFloat16",
                  "Group size": 2, "Process Group Name": "0"}


def gpu_rank(rank: int, comm_delay_us: float) -> dict[str, Any]:
    """A GPU rank: compute on stream 7, NCCL collectives on stream 13, a copy, three ProfilerSteps.

    Step 0 launches K1 [10,110), C1 [60+delay,210), M1 [260,310); step 1 K2 [400,500) and C2
    [450,480); step 2 a broadcast B [520,540) whose kernel has no args of its own (its
    record_param_comms has them), C3 [600,620) and C4 [630,650). See test_breakdown for the sums."""
    events = [
        meta("process_name", 1000, 0, "python"), meta("thread_name", 1000, 1000, "thread 1000 (python)"),
        x("user_annotation", "ProfilerStep#0", 0, 300, 1000, 1000),
        x("user_annotation", "ProfilerStep#1", 380, 130, 1000, 1000),
        x("user_annotation", "ProfilerStep#2", 510, 190, 1000, 1000),
        launch(5, 1), launch(6, 2), launch(7, 3), launch(390, 4), launch(391, 5), launch(515, 6), launch(516, 7),
        launch(517, 8),
        x("cpu_op", "record_param_comms", 514.5, 1, 1000, 1000, **{"External id": 77}, **BROADCAST_ARGS),
        kernel("ampere_sgemm_128x64_tn", 10, 100, 7, 1),
        kernel(ALLREDUCE, 60 + comm_delay_us, 150 - comm_delay_us, 13, 2, **COMM_ARGS),
        x("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 260, 50, 0, 7, device=0, stream=7, correlation=3),
        kernel("ampere_sgemm_128x64_tn", 400, 100, 7, 4),
        kernel(ALLREDUCE, 450, 30, 13, 5, **COMM_ARGS),
        kernel("ncclDevKernel_Broadcast_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 520, 20, 13, 6,
               **{"External id": 77}),
        kernel(ALLREDUCE, 600, 20, 13, 7, **COMM_ARGS),
        kernel(ALLREDUCE, 630, 20, 13, 8, **COMM_ARGS),
        x("gpu_user_annotation", "ProfilerStep#0", 9, 302, 0, 7),  # GPU annotations are not steps
    ]
    return trace(rank, 2, events)


def cpu_rank(rank: int) -> dict[str, Any]:
    """A CPU-only rank as the vLLM CPU build writes it: ops on the main thread (1), the gloo
    all-reduce on the gloo thread (2), another op on thread 3; three vLLM execute_ steps.

    Main thread: aten::linear [0,100) around c10d::allreduce_ [40,70); gloo [45,65); thread 3
    aten::mm [50,60); then aten::linear [200,260) and c10d::allreduce_ [260,290) around gloo
    [262,288); then c10d::allreduce_ [400,430) around gloo [402,428)."""
    pid = 500 + rank
    events = [
        meta("process_name", pid, 0, f"VLLM::Worker_TP{rank}"),
        meta("thread_name", pid, 1, "thread 1 (VLLM::Worker_TP)"), meta("thread_name", pid, 2, "thread 2 (pt_gloo_runloop)"),
        x("user_annotation", "execute_context_0(1)_generation_0(0)", 0, 120, pid, 1),
        x("user_annotation", "execute_context_0(0)_generation_1(1)", 200, 100, pid, 1),
        x("cpu_op", "aten::linear", 0, 100, pid, 1),
        x("cpu_op", "aten::addmm", 5, 30, pid, 1),
        x("cpu_op", "c10d::allreduce_", 40, 30, pid, 1),
        x("user_annotation", "gloo:all_reduce", 45, 20, pid, 2),
        x("cpu_op", "aten::mm", 50, 10, pid, 3),
        x("cpu_op", "aten::linear", 200, 60, pid, 1),
        x("cpu_op", "c10d::allreduce_", 260, 30, pid, 1),
        x("user_annotation", "gloo:all_reduce", 262, 26, pid, 2),
        x("user_annotation", "execute_context_0(0)_generation_1(1)", 400, 50, pid, 1),
        x("cpu_op", "c10d::allreduce_", 400, 30, pid, 1),
        x("user_annotation", "gloo:all_reduce", 402, 26, pid, 2),
    ]
    return trace(rank, 2, events, backend="gloo")
