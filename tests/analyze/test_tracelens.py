"""The per-rank GPU breakdown on real single-rank GPU traces (TraceLens's and HTA's test traces, in
tests/data) against TraceLens's GPU timeline breakdown.

Expected values: TraceLens @171dd747 (AMD-AGI/TraceLens, not on PyPI; installed from its source in a
separate venv, not a dependency of this project), `TreePerfAnalyzer.from_file(path,
include_unlinked_kernels=True).get_df_gpu_timeline()`, in microseconds. With its default
(include_unlinked_kernels=False) TraceLens leaves out kernels it cannot link to a CPU op (e.g. graph
replays); we count every GPU event. Two definitions differ by design (docs/merge.md, "Analysis"):
gpu_memset counts as copying here, as computation in TraceLens; PyTorch's symmetric-memory all-reduce
kernel (`multimem_all_reduce_kernel`) is communication here, computation in TraceLens (it matches only
nccl/rccl/cross_device_reduce).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from magpie_trace.analyze import AnalyzeOptions, analyze, query
from magpie_trace.merge import merge
from tests.real_traces import TRACES

TRACELENS = {  # computation, exposed comm, exposed memcpy, idle, total, total comm
    "hta/legacy-abs-ts-16rank-rank0.json.gz": (211484.0, 185300.0, 41640.0, 793037.0, 1231461.0, 187870.0),
    "hta/nccl-2rank-rank0.json.gz": (116046.561, 39529.327, 1924.190, 503050.928, 660551.006, 46876.492),
    "tracelens/b200-vllm-gptoss-tp8-rank0.json.gz": (10771.683, 21.953, 802.843, 72890.698, 84487.178, 21.953),
    "tracelens/mi300x-resnet-ddp8-rank0.json.gz": (26175.002, 55371.218, 2455.848, 2565.639, 86567.708, 71516.523),
    "tracelens/mi300x-sglang-qwen3-8b-decode.json.gz": (9759.752, 0.0, 13.177, 463977.015, 473749.943, 0.0),
    "tracelens/mi300x-vllm-gptoss-decode-graph.json.gz": (10674.507, 0.0, 43.190, 25.484, 10743.182, 0.0),
}


@pytest.mark.parametrize("name", sorted(TRACELENS))
def test_gpu_breakdown_agrees_with_tracelens(tmp_path: Path, name: str) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(TRACES / name, tmp_path / "in" / "node0-TP0.trace.json.gz")
    merge(tmp_path / "in", tmp_path / "out")
    analyze(tmp_path / "out", AnalyzeOptions(plots=False))
    columns, rows = query(tmp_path / "out", "SELECT * FROM breakdown")
    ours = dict(zip(columns, rows[0]))
    assert ours["domain"] == "gpu"
    comp, exposed, memcpy, idle, total, comm = TRACELENS[name]
    # what TraceLens files under computation but we do not: memsets (ours: copies) and symmetric-memory
    # all-reduce kernels (ours: communication; on this trace none of them overlaps compute)
    _, [(memset_us,)] = query(tmp_path / "out", "SELECT coalesce(sum(dur_ns), 0) / 1e3 FROM events WHERE cat = 'gpu_memset'")
    _, [(symmetric_us,)] = query(tmp_path / "out", """SELECT coalesce(sum(dur_ns), 0) / 1e3 FROM events
                                                      WHERE category = 'comm_kernel' AND name LIKE '%multimem_all_reduce%'""")
    # within 1% of total time, every column, on TraceLens's side of the symmetric-memory difference
    assert ours["total_us"] == pytest.approx(total, abs=0.01 * total)
    assert ours["idle_us"] == pytest.approx(idle, abs=0.01 * total)
    assert ours["compute_us"] + symmetric_us == pytest.approx(comp, abs=0.01 * total)
    assert ours["exposed_comm_us"] - symmetric_us == pytest.approx(exposed, abs=0.01 * total)
    assert ours["comm_us"] - symmetric_us == pytest.approx(comm, abs=0.01 * total)
    assert ours["memcpy_only_us"] == pytest.approx(memcpy, abs=0.01 * total)
    # and closer still: the rest of the difference is the memsets (0.01% of total once counted as
    # TraceLens does; TraceLens sums float microseconds)
    assert ours["total_us"] == pytest.approx(total, abs=0.5)
    assert ours["idle_us"] == pytest.approx(idle, abs=0.5)
    assert ours["compute_us"] + memset_us + symmetric_us == pytest.approx(comp, abs=1e-4 * total)
