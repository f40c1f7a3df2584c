"""Synthetic traces whose overlap is known by construction give exact answers, through the real
merge and `analyze`."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from magpie_trace.analyze import AnalyzeOptions, analyze, query
from magpie_trace.merge import merge
from tests.analyze import synth

BREAKDOWN = ("total_us", "compute_us", "comm_us", "overlapped_us", "exposed_comm_us", "compute_only_us",
             "memcpy_only_us", "busy_us", "idle_us")


def _merged(tmp_path: Path, docs: list[dict], pretty: bool = True) -> Path:
    src = tmp_path / "traces"
    src.mkdir()
    for rank, doc in enumerate(docs):
        synth.write(doc, src / f"node{rank}-TP{rank}.trace.json.gz", pretty=pretty)
    out = tmp_path / "merged"
    merge(src, out)
    return out


def _rows(merged: Path, sql: str) -> list[dict]:
    columns, rows = query(merged, sql)
    return [dict(zip(columns, r)) for r in rows]


@pytest.fixture(scope="module")
def gpu_merge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("gpu")
    merged = _merged(tmp, [synth.gpu_rank(0, 0), synth.gpu_rank(1, 70)])
    analyze(merged)
    return merged


def test_gpu_breakdown_is_exact(gpu_merge: Path) -> None:
    rows = {r["rank"]: r for r in _rows(gpu_merge, "SELECT * FROM breakdown")}
    assert {k: rows[0][k] for k in BREAKDOWN} == {
        "total_us": 640, "compute_us": 200, "comm_us": 240, "overlapped_us": 80, "exposed_comm_us": 160,
        "compute_only_us": 120, "memcpy_only_us": 50, "busy_us": 410, "idle_us": 230}
    # rank 1's all-reduce starts 70 us later: less of it under the first kernel
    assert {k: rows[1][k] for k in BREAKDOWN} == {
        "total_us": 640, "compute_us": 200, "comm_us": 170, "overlapped_us": 30, "exposed_comm_us": 140,
        "compute_only_us": 170, "memcpy_only_us": 50, "busy_us": 390, "idle_us": 250}
    assert rows[0]["domain"] == rows[1]["domain"] == "gpu"
    assert rows[0]["comm_only_us"] == rows[0]["exposed_comm_us"]


def test_gpu_steps_follow_the_kernels_their_cpu_step_launched(gpu_merge: Path) -> None:
    rows = {(r["rank"], r["step"]): r for r in _rows(gpu_merge, "SELECT * FROM breakdown_steps")}
    assert set(rows) == {(rank, step) for rank in (0, 1) for step in (0, 1, 2)}
    step0 = rows[(0, 0)]  # K1, C1, M1: [10, 310)
    assert (step0["total_us"], step0["compute_us"], step0["comm_us"], step0["overlapped_us"],
            step0["exposed_comm_us"], step0["memcpy_only_us"], step0["idle_us"]) == (300, 100, 150, 50, 100, 50, 50)
    step1 = rows[(0, 1)]  # K2 hides C2 wholly
    assert (step1["total_us"], step1["compute_us"], step1["overlapped_us"], step1["exposed_comm_us"],
            step1["idle_us"]) == (100, 100, 30, 0, 0)
    step2 = rows[(0, 2)]  # B, C3, C4 exposed: [520, 650)
    assert (step2["total_us"], step2["comm_us"], step2["exposed_comm_us"], step2["idle_us"]) == (130, 60, 60, 70)
    # the steps' exposed communication adds up to the rank's (the gaps between steps have none)
    assert sum(r["exposed_comm_us"] for (rank, _), r in rows.items() if rank == 0) == 160


def test_events_table_columns(gpu_merge: Path) -> None:
    kernels = _rows(gpu_merge, """SELECT rank, name, category, device, track, step, collective, process_group,
                                  msg_bytes, algorithm, start_ns, end_ns FROM events
                                  WHERE category = 'comm_kernel' ORDER BY rank, start_ns""")
    assert len(kernels) == 10
    assert {k["algorithm"] for k in kernels} == {"RING_LL"}
    broadcast = [k for k in kernels if "Broadcast" in k["name"]]
    assert {k["msg_bytes"] for k in broadcast} == {512}  # borrowed from record_param_comms (External id)
    assert {k["msg_bytes"] for k in kernels if k not in broadcast} == {4 * 1048576}
    assert {k["process_group"] for k in kernels} == {"0"}
    assert [k["step"] for k in kernels[:5]] == [0, 1, 2, 2, 2]
    assert {k["track"] for k in kernels} == {"stream 13"}
    # the same collective has the same id on both ranks
    ids = [k["collective"] for k in kernels]
    assert ids[:5] == ids[5:] and None not in ids[:2] and len(set(ids[:2])) == 2
    assert kernels[0]["end_ns"] - kernels[0]["start_ns"] == 150_000
    cats = set(duckdb.sql(f"""SELECT DISTINCT cat, name, category FROM read_parquet('{gpu_merge}/events/rank0.parquet')
                             WHERE cat <> 'kernel'""").fetchall())
    assert cats == {("cpu_op", "record_param_comms", "cpu_comm"), ("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", "memcpy"),
                    ("user_annotation", "ProfilerStep#0", "annotation"), ("user_annotation", "ProfilerStep#1", "annotation"),
                    ("user_annotation", "ProfilerStep#2", "annotation"), ("gpu_user_annotation", "ProfilerStep#0", "gpu_annotation"), ("cuda_runtime", "cudaLaunchKernel", "runtime")}
    steps = _rows(gpu_merge, "SELECT rank, step, name, end_ns - start_ns AS ns FROM steps ORDER BY rank, step")
    assert [(s["step"], s["name"], s["ns"]) for s in steps if s["rank"] == 0] == [
        (0, "ProfilerStep#0", 300_000), (1, "ProfilerStep#1", 130_000), (2, "ProfilerStep#2", 190_000)]


def test_collective_families_and_waits(gpu_merge: Path) -> None:
    fam = _rows(gpu_merge, "SELECT * FROM collective_families WHERE family = 'allreduce'")
    assert len(fam) == 1
    f = fam[0]
    assert (f["process_group"], f["scope"], f["ranks"], f["nodes"]) == ("0", "inter-node", 2, 2)
    assert (f["family"], f["calls"]) == ("allreduce", 4)
    assert f["time_us"] == 150  # C1 on the last arrival (80) + C2, C3, C4 (30 + 20 + 20)
    assert f["algbw_gbps"] == pytest.approx(4 * 4 * 1048576 / 150e-6 / 1e9)
    assert f["busbw_gbps"] == pytest.approx(f["algbw_gbps"])  # 2(n-1)/n = 1 for two ranks
    waits = {(r["step"], r["node"]): r for r in _rows(gpu_merge, "SELECT * FROM wait_timeline")}
    assert waits[(0, "node1")]["times_last"] == 1
    assert waits[(0, "node1")]["waited_for_us"] == pytest.approx(70, abs=0.01)
    assert waits[(0, "node0")]["wait_us_per_rank"] == pytest.approx(70, abs=0.01)
    assert waits[(0, "node0")]["waited_for_us"] == 0
    top = _rows(gpu_merge, "SELECT * FROM stragglers")
    assert [(r["step"], r["straggler_node"], r["streak"]) for r in top] == [(0, "node1", 1)]


@pytest.mark.parametrize("pretty", [True, False])
def test_cpu_breakdown_is_exact(tmp_path: Path, pretty: bool) -> None:
    merged = _merged(tmp_path, [synth.cpu_rank(0), synth.cpu_rank(1)], pretty=pretty)
    result = analyze(merged, AnalyzeOptions(plots=False))
    rows = _rows(merged, "SELECT * FROM breakdown ORDER BY rank")
    for row in rows:
        assert row["domain"] == "cpu"
        # the collective hides aten::linear around it on the main thread; aten::mm on thread 3 overlaps it
        assert {k: row[k] for k in BREAKDOWN} == {
            "total_us": 430, "compute_us": 140, "comm_us": 90, "overlapped_us": 10, "exposed_comm_us": 80,
            "compute_only_us": 130, "memcpy_only_us": 0, "busy_us": 220, "idle_us": 210}
    steps = {(r["rank"], r["step"]): r for r in _rows(merged, "SELECT * FROM breakdown_steps")}
    assert (steps[(0, 0)]["total_us"], steps[(0, 0)]["exposed_comm_us"], steps[(0, 0)]["overlapped_us"]) == (100, 20, 10)
    assert (steps[(0, 1)]["total_us"], steps[(0, 1)]["exposed_comm_us"], steps[(0, 1)]["idle_us"]) == (90, 30, 0)
    tracks = {r["track"] for r in _rows(merged, "SELECT DISTINCT track FROM events WHERE rank = 0")}
    assert tracks == {"thread 1 (VLLM::Worker_TP)", "thread 2 (pt_gloo_runloop)", "thread 3"}
    assert [n["node"] for n in result.nodes] == ["node0", "node1"]
    assert _rows(merged, "SELECT count(*) AS n FROM events WHERE collective IS NOT NULL")[0]["n"] == 6  # gloo, 3 x 2


def test_analyze_writes_tables_plots_and_reuses_events(gpu_merge: Path) -> None:
    out = gpu_merge / "analysis"
    for name in ("breakdown", "breakdown_nodes", "breakdown_steps", "collective_families", "wait_timeline",
                 "stragglers"):
        assert (out / f"{name}.parquet").is_file() and (out / f"{name}.csv").is_file()
    for name in ("node_breakdown", "exposed_comm_per_step", "wait_timeline"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    again = analyze(gpu_merge, AnalyzeOptions(plots=False))
    assert again.events["built"] is False
    rebuilt = analyze(gpu_merge, AnalyzeOptions(plots=False, rebuild=True, jobs=2))
    assert rebuilt.events["built"] is True and rebuilt.events["events"] == again.events["events"]
