"""Which ranks live on which node, by each engine's own placement rule.

vLLM (mp executor) numbers the ranks of a multi-node world `local_world_size * node_rank +
local_rank`, with TP innermost, then PP, then DP (global = dp*(tp*pp) + pp*tp + tp). SGLang assigns
each node a TP range and a PP range (`_calculate_rank_ranges` in sglang/srt/entrypoints/engine.py)
and numbers ranks pp*tp + tp inside a DP replica. Both give contiguous blocks of ranks per node for
the layouts they support; the SGLang rule is computed on its own terms so a divergence would show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from magpie_trace.errors import ConfigError


@dataclass(frozen=True)
class Rank:
    """One engine worker (one GPU): its global rank and its place in every parallel group."""

    global_rank: int
    node: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    ep: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    ep: int
    nnodes: int
    ranks_per_node: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def replica_size(self) -> int:
        """GPUs of one model replica (TP x PP)."""
        return self.tp * self.pp

    @property
    def replicas_per_node(self) -> int:
        """DP replicas that live entirely on one node (0 when a replica spans nodes)."""
        return self.ranks_per_node // self.replica_size if self.replica_size <= self.ranks_per_node else 0

    @property
    def nodes_per_replica(self) -> int:
        return max(self.replica_size // self.ranks_per_node, 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["world_size"] = self.world_size
        return data


def check_layout(
    engine: str, tp: int, pp: int, dp: int, ep: int, gpus: list[int], where: str
) -> Layout:
    """Refuse layouts the engines cannot run, with one line that says why."""
    nnodes = len(gpus)
    world = tp * pp * dp
    total = sum(gpus)
    shape = f"TP{tp}" + (f" x PP{pp}" if pp > 1 else "") + (f" x DP{dp}" if dp > 1 else "")
    if world > total:
        raise ConfigError(
            f"{where}: {shape} needs {world} GPUs but the {nnodes} node(s) have {total}"
        )
    if world % nnodes:
        raise ConfigError(
            f"{where}: {shape} = {world} GPUs cannot be split evenly over {nnodes} nodes "
            "(every node runs the same number of ranks)"
        )
    per_node = world // nnodes
    for index, count in enumerate(gpus):
        if per_node > count:
            raise ConfigError(
                f"{where}: {shape} puts {per_node} ranks on each node but node {index} has {count} GPUs"
            )
    replica = tp * pp
    if replica > per_node:
        if replica % per_node or per_node != gpus[0]:
            raise ConfigError(
                f"{where}: TP x PP = {replica} spans nodes, so it must fill whole nodes of "
                f"{gpus[0]} GPUs ({replica} is not a multiple of {gpus[0]})"
            )
        if replica % per_node == 0 and nnodes % (replica // per_node):
            raise ConfigError(
                f"{where}: a replica of {replica} GPUs spans {replica // per_node} nodes, "
                f"which does not divide {nnodes} nodes"
            )
    elif per_node % replica:
        raise ConfigError(
            f"{where}: DP{dp} replicas of TP x PP = {replica} GPUs cannot be split evenly over "
            f"{nnodes} nodes ({per_node} ranks per node)"
        )
    if ep > 1:
        if engine == "vllm" and ep != tp * dp:
            raise ConfigError(
                f"{where}: vLLM's expert-parallel size is TP x DP = {tp * dp}, not {ep} "
                "(set server.ep to 1 or to TP x DP)"
            )
        if engine != "vllm" and (tp * dp) % ep:
            raise ConfigError(f"{where}: server.ep = {ep} must divide TP x DP = {tp * dp}")
    return Layout(tp=tp, pp=pp, dp=dp, ep=ep, nnodes=nnodes, ranks_per_node=per_node)


def place_ranks(engine: str, layout: Layout) -> list[list[Rank]]:
    """Ranks per node, in local-rank order."""
    if engine == "sglang":
        return _place_sglang(layout)
    return _place_vllm(layout)


def vllm_coordinates(global_rank: int, tp: int, pp: int, ep: int) -> tuple[int, int, int, int]:
    """(tp, pp, dp, ep) ranks of a global rank in vLLM's order: global = dp*(tp*pp) + pp*tp + tp.

    The EP rank is the rank in vLLM's EP group (DP x TP within a PP stage) when EP is on, else 0.
    """
    dp_rank, rest = divmod(global_rank, tp * pp)
    pp_rank, tp_rank = divmod(rest, tp)
    return tp_rank, pp_rank, dp_rank, (dp_rank * tp + tp_rank if ep > 1 else 0)


def _sglang_ep_rank(layout: Layout, tp: int, dp: int) -> int:
    if layout.ep <= 1:
        return 0
    return (dp * layout.tp + tp) // (layout.tp * layout.dp // layout.ep)


def _place_vllm(layout: Layout) -> list[list[Rank]]:
    nodes: list[list[Rank]] = [[] for _ in range(layout.nnodes)]
    for global_rank in range(layout.world_size):
        tp, pp, dp, ep = vllm_coordinates(global_rank, layout.tp, layout.pp, layout.ep)
        node, local = divmod(global_rank, layout.ranks_per_node)
        nodes[node].append(Rank(global_rank, node, local, tp, pp, dp, ep))
    return nodes


def _place_sglang(layout: Layout) -> list[list[Rank]]:
    """SGLang's `_calculate_rank_ranges`, applied per DP replica."""
    nodes: list[list[Rank]] = [[] for _ in range(layout.nnodes)]
    replica_nodes = layout.nodes_per_replica
    for dp in range(layout.dp):
        if replica_nodes == 1:
            first_node = dp // layout.replicas_per_node
            node_ranks = [first_node]
        else:
            first_node = dp * replica_nodes
            node_ranks = list(range(first_node, first_node + replica_nodes))
        for node_rank_in_replica, node in enumerate(node_ranks):
            nnodes = len(node_ranks)
            pp_per_node = max(layout.pp // nnodes, 1)
            nnodes_per_pp_rank = max(nnodes // layout.pp, 1)
            tp_per_node = layout.tp // nnodes_per_pp_rank
            tp_start = tp_per_node * (node_rank_in_replica % nnodes_per_pp_rank)
            pp_start = pp_per_node * (node_rank_in_replica // nnodes_per_pp_rank)
            for pp in range(pp_start, pp_start + pp_per_node):
                for tp in range(tp_start, tp_start + tp_per_node):
                    global_rank = dp * layout.replica_size + pp * layout.tp + tp
                    nodes[node].append(
                        Rank(global_rank, node, len(nodes[node]), tp, pp, dp,
                             _sglang_ep_rank(layout, tp, dp))
                    )
    return nodes
