"""vLLM: `vllm serve` per node (mp executor) or one driver (Ray executor).

Flags are those of vLLM 0.32 (`vllm/engine/arg_utils.py`, `vllm/entrypoints/launchers/cli_args.py`):
non-head nodes of a TP/PP group run `--headless`; data parallel uses the `--data-parallel-*` flags
when a replica fits on a node, and `--nnodes/--node-rank/--master-addr` when it spans nodes.
"""

from __future__ import annotations

import orjson

from magpie_trace.config import ProfileConfig
from magpie_trace.engines.base import Engine, NodeContext


def profiler_config_json(profile: ProfileConfig, trace_dir: str) -> str:
    """The `--profiler-config` JSON; only non-default options, so old and new vLLM agree."""
    cfg: dict[str, object] = {
        "profiler": "torch",
        "torch_profiler_dir": trace_dir,
        "torch_profiler_with_stack": profile.with_stack,
    }
    if profile.record_shapes:
        cfg["torch_profiler_record_shapes"] = True
    if profile.with_memory:
        cfg["torch_profiler_with_memory"] = True
    if profile.with_flops:
        cfg["torch_profiler_with_flops"] = True
    if profile.activities:
        cfg["torch_profiler_activities"] = list(profile.activities)
    if profile.delay_iterations:
        cfg["delay_iterations"] = profile.delay_iterations
    if profile.max_iterations:
        cfg["max_iterations"] = profile.max_iterations
    return orjson.dumps(cfg, option=orjson.OPT_SORT_KEYS).decode()


class VllmEngine(Engine):
    name = "vllm"
    default_port = 8000
    default_rendezvous_port = 29501
    default_dp_rpc_port = 29550
    health_path = "/health"

    def default_command(self) -> list[str]:
        return ["vllm"]

    def node_args(self, ctx: NodeContext) -> list[str] | None:
        server = ctx.config.server
        layout = ctx.layout
        if server.executor == "ray" and not ctx.is_head:
            return None  # vLLM's Ray executor places every worker from the single driver
        args = [
            "serve",
            server.model,
            "--tensor-parallel-size",
            str(layout.tp),
            "--pipeline-parallel-size",
            str(layout.pp),
        ]
        if server.executor == "ray":
            args += ["--distributed-executor-backend", "ray"]
            if layout.dp > 1:
                args += ["--data-parallel-size", str(layout.dp), "--data-parallel-backend", "ray"]
        elif layout.nnodes > 1 and layout.replicas_per_node == 0:
            # A replica spans nodes: torch.distributed world over nnodes, DP inferred per node.
            args += [
                "--nnodes", str(layout.nnodes),
                "--node-rank", str(ctx.index),
                "--master-addr", ctx.head.address,
                "--master-port", str(ctx.rendezvous_port),
            ]
            if layout.dp > 1:
                args += ["--data-parallel-size", str(layout.dp)]
        elif layout.dp > 1:
            args += ["--data-parallel-size", str(layout.dp)]
            if layout.nnodes > 1:
                rpc_port = server.dp_rpc_port or self.default_dp_rpc_port
                args += [
                    "--data-parallel-size-local", str(layout.replicas_per_node),
                    "--data-parallel-address", ctx.head.address,
                    "--data-parallel-rpc-port", str(rpc_port),
                ]
                if not ctx.is_head:
                    first_dp = min(rank.dp for rank in ctx.ranks)
                    args += ["--data-parallel-start-rank", str(first_dp)]
        if layout.ep > 1:
            args.append("--enable-expert-parallel")
        if ctx.is_head:
            args += ["--host", server.host, "--port", str(ctx.port)]
        elif server.executor != "ray" and layout.nnodes > 1:
            args.append("--headless")
        if ctx.trace_dir is not None:
            args += ["--profiler-config", profiler_config_json(ctx.config.profile, ctx.trace_dir)]
        return args + list(server.extra_args)

    def node_env(self, ctx: NodeContext) -> dict[str, str]:
        return {"VLLM_HOST_IP": ctx.node.address}
