"""What per-node numbers mean for a given topology, and each node's view of the run.

With TP/PP spanning nodes every request uses every node, so a per-node request number does not
exist; the result says so instead of inventing one.
"""

from __future__ import annotations

from typing import Any

from magpie_trace.awake import AWAKE
from magpie_trace.bench.telemetry import NodeSampler
from magpie_trace.bench.watchdog import Trip
from magpie_trace.plan import Plan


def attribution(plan: Plan | None) -> tuple[str, str]:
    """How request metrics relate to nodes, and a sentence saying so."""
    if plan is None:
        return "endpoint_only", "benchmarked an endpoint without a plan: no per-node view"
    layout = plan.layout
    if layout.nnodes == 1:
        return "single_node", "one node serves every request"
    if layout.dp > 1 and layout.replicas_per_node > 0:
        return "engine_label", "data-parallel engines per node: per-engine deltas from the head's /metrics"
    return (
        "telemetry_only",
        "a model replica spans nodes (TP/PP), so every request uses every node: per-node request "
        "metrics are undefined; per node there is hardware telemetry and liveness only",
    )


def engine_nodes(plan: Plan | None) -> dict[str, str]:
    """DP rank (the `engine` label) -> the node that runs it."""
    if plan is None:
        return {}
    return {str(rank.dp): node.name for node in plan.nodes for rank in node.ranks}


def per_node(
    plan: Plan | None, samplers: dict[str, NodeSampler], trip: Trip | None, kind: str
) -> dict[str, Any]:
    """Per node: whether request numbers exist for it, whether it was lost, its telemetry."""
    meaning = {"single_node": "defined", "engine_label": "per engine (see points[].server)"}
    out: dict[str, Any] = {}
    for node in plan.nodes if plan else []:
        sampler = samplers.get(node.name)
        entry: dict[str, Any] = {
            "role": node.role,
            **({"group": node.group, "group_role": node.group_role} if node.group else {}),
            "request_metrics": meaning.get(kind, "undefined"),
            "lost": trip is not None and trip.lost and trip.node == node.name,
        }
        if sampler is not None:
            entry["telemetry"] = sampler.summary()
            entry["liveness"] = {
                "telemetry_failures": sampler.failures,
                "seconds_since_last_answer": round(AWAKE.now() - sampler.last_ok, 3),
            }
        else:
            entry["telemetry"] = {"source": "none", "note": "no backend given: telemetry not sampled"}
        out[node.name] = entry
    return out
