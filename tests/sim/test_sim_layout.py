"""Rank placement, process groups, file names and trace timing, without processes."""

from __future__ import annotations

from magpie_trace.engines.sim import kineto
from magpie_trace.engines.sim.layout import place, process_groups
from magpie_trace.topology import Layout


def test_places_follow_vllm_ordering_and_name_files_like_the_gpu_worker() -> None:
    layout = Layout(tp=2, pp=2, dp=2, ep=4, nnodes=1, ranks_per_node=8)
    rank = place(layout, 6)  # global = dp * (tp * pp) + pp * tp + tp
    assert (rank.dp, rank.pp, rank.tp, rank.rank_in_dp, rank.ep) == (1, 1, 0, 2, 2)
    assert kineto.worker_file_name(None, rank, 17) == "dp1_pp1_tp0_dcp0_ep2_rank2.17.pt.trace.json.gz"
    assert kineto.worker_file_name("p1", rank, 17).startswith("p1_dp1_pp1_tp0_dcp0_ep2_rank2.")
    assert place(Layout(tp=2, pp=2, dp=2, ep=1, nnodes=1, ranks_per_node=8), 6).ep == 0  # no EP group: ep0
    assert kineto.frontend_file_name("p1", "host", 42, 9) == "p1_host_42.async_llm.9.pt.trace.json.gz"


def test_process_groups_are_shared_names_with_this_ranks_members() -> None:
    layout = Layout(tp=2, pp=2, dp=2, ep=1, nnodes=1, ranks_per_node=8)
    groups = {rank: process_groups(layout, rank) for rank in range(8)}
    assert groups[6].count == 1 + 4 + 4 + 4
    assert groups[6].tp_ranks == [6, 7] and groups[7].tp_name == groups[6].tp_name
    assert groups[6].tp_name != groups[4].tp_name
    config = {g["pg_name"]: g["ranks"] for g in groups[6].config}
    assert config["0"] == list(range(8)) and [6, 7] in config.values()
    assert [4, 6] in config.values() and [2, 6] in config.values()  # its PP and DP groups


def test_kernel_ends_are_the_true_instant_plus_offset_and_jitter() -> None:
    layout = Layout(tp=2, pp=1, dp=1, ep=1, nnodes=1, ranks_per_node=2)
    period = 5_000_000
    steps = [kineto.Step(n, 1_790_857_026_000_000_000 + n * period, period, 0, 0, 2)
             for n in range(1, 11)]
    ends = {}
    for rank, offset in ((0, 0), (1, 7_000_000)):
        trace = kineto.rank_trace(
            layout=layout, place=place(layout, rank), groups=process_groups(layout, rank),
            device=rank, pid=100 + rank, steps=steps, layers=4, offset_ns=offset,
            base_ns=kineto.base_time_ns(steps[0].end_ns), start_ns=steps[0].end_ns - period,
            end_ns=steps[-1].end_ns + offset, trace_name="t",
        )
        base = trace["baseTimeNanoseconds"]
        ends[rank] = [base + round((e["ts"] + e["dur"]) * 1000)
                      for e in trace["traceEvents"] if e.get("cat") == "kernel"]
        starts = [e["ts"] for e in trace["traceEvents"] if e.get("cat") == "kernel"]
        assert len(ends[rank]) == 40 and starts == sorted(starts)
    gaps = [b - a - 7_000_000 for a, b in zip(ends[0], ends[1])]
    assert max(abs(g) for g in gaps) <= kineto.END_JITTER_NS + 1
    # layer l of step n ends at (l + 1) / (layers + 1) of the step, on every rank
    first_step_start = steps[0].end_ns - period
    assert 0 <= ends[0][0] - (first_step_start + period // 5) <= kineto.END_JITTER_NS + 1
