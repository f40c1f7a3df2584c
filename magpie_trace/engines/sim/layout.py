"""Where a global rank sits in vLLM's DP x PP x TP layout (topology.Layout), and the process groups it
belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from magpie_trace.topology import Layout, vllm_coordinates


@dataclass(frozen=True)
class RankPlace:
    """One worker's coordinates, as vLLM's `get_worker_rank_suffix` sees them."""

    global_rank: int
    dp: int
    pp: int
    tp: int
    ep: int
    rank_in_dp: int  # the executor's worker rank inside its DP replica, the `rank{R}` of the file name

    def suffix(self) -> str:
        return f"dp{self.dp}_pp{self.pp}_tp{self.tp}_dcp0_ep{self.ep}_rank{self.rank_in_dp}"


def place(layout: Layout, global_rank: int) -> RankPlace:
    """The rank's coordinates in vLLM's order (the planner's rule, topology.vllm_coordinates)."""
    tp, pp, dp, ep = vllm_coordinates(global_rank, layout.tp, layout.pp, layout.ep)
    return RankPlace(global_rank, dp, pp, tp, ep, global_rank % layout.replica_size)


@dataclass(frozen=True)
class ProcessGroups:
    count: int
    config: list[dict[str, Any]]  # torch's distributedInfo.pg_config entries for this rank
    tp_name: str
    tp_ranks: list[int]


def process_groups(layout: Layout, global_rank: int) -> ProcessGroups:
    """The groups torch.distributed would list for this rank.

    Every rank creates every group in the same order (as vLLM's initialize_model_parallel does),
    so group names are shared numbers: "0" is the default group, then all TP, PP and DP groups.
    """
    r, t, p, d = layout.replica_size, layout.tp, layout.pp, layout.dp
    tp_groups = [[dp * r + pp * t + i for i in range(t)] for dp in range(d) for pp in range(p)]
    pp_groups = [[dp * r + i * t + tp for i in range(p)] for dp in range(d) for tp in range(t)]
    dp_groups = [[i * r + pp * t + tp for i in range(d)] for pp in range(p) for tp in range(t)]
    world = list(range(layout.world_size))
    groups = [world] + tp_groups + pp_groups + dp_groups
    config = []
    tp_name = ""
    tp_ranks: list[int] = []
    for index, ranks in enumerate(groups):
        if global_rank not in ranks:
            continue
        name = str(index)
        config.append({
            "pg_name": name,
            "pg_desc": "default_pg" if index == 0 else "undefined",
            "backend_config": "cuda:nccl",
            "pg_size": len(ranks),
            "ranks": ranks,
        })
        if not tp_name and 1 <= index <= len(tp_groups):
            tp_name, tp_ranks = name, ranks
    return ProcessGroups(len(groups), config, tp_name, tp_ranks)
