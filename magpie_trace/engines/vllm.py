"""vLLM: `vllm serve` per node (mp executor) or one driver (Ray executor).

Flags are those of vLLM 0.32 (`vllm/engine/arg_utils.py`, `vllm/entrypoints/launchers/cli_args.py`):
non-head nodes of a TP/PP group run `--headless`; data parallel uses the `--data-parallel-*` flags
when a replica fits on a node, and `--nnodes/--node-rank/--master-addr` when it spans nodes.
"""

from __future__ import annotations

import re

import orjson

from magpie_trace.config import ProfileConfig
from magpie_trace.engines.base import Engine, HttpCall, NodeContext, TraceName

# vLLM's profile_prefix: 1-128 of [A-Za-z0-9._-], the first alphanumeric; never an underscore, so
# the first `_` of a file name ends the prefix.
_PREFIX = r"(?:(?P<prefix>[A-Za-z0-9][A-Za-z0-9.\-]{0,127})_)?"
_TAIL = r"\.(?P<ns>\d+)\.pt\.trace\.json\.gz"
# GPU worker (`get_worker_rank_suffix`), CPU worker (its fallback), API server (AsyncLLM).
_GPU_WORKER = re.compile(
    _PREFIX + r"dp(?P<dp>\d+)_pp(?P<pp>\d+)_tp(?P<tp>\d+)_dcp\d+_ep(?P<ep>\d+)_rank(?P<rank>\d+)"
    + _TAIL + r"\Z"
)
_CPU_WORKER = re.compile(_PREFIX + r"rank(?P<rank>\d+)" + _TAIL + r"\Z")
_API_SERVER = re.compile(_PREFIX + r"(?P<host>.+)_(?P<pid>\d+)\.async_llm" + _TAIL + r"\Z")
# Flags with which every node runs its own API server, each fronting only its local engines.
_PER_NODE_API_FLAGS = ("--data-parallel-hybrid-lb", "--data-parallel-external-lb")
# A PD group's role in --kv-transfer-config (vLLM deprecates kv_both for NIXL prefill/decode).
_KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


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


class VllmStyleProfiling:
    """vLLM's profiler endpoints and trace names (the simulator shares them).

    One POST /start_profile through the head arms every rank of its engine; /stop_profile
    returns once every worker has written its file (vLLM's collective_rpc waits for all).
    """

    def start_profile_call(self, profile: ProfileConfig, profile_id: str) -> HttpCall:
        body: dict[str, object] = {"profile_prefix": profile_id}
        if profile.delay_iterations:
            body["delay_iterations"] = profile.delay_iterations
        if profile.max_iterations:
            body["max_iterations"] = profile.max_iterations
        return HttpCall("POST", "/start_profile", body)

    def stop_profile_call(self) -> HttpCall:
        return HttpCall("POST", "/stop_profile")

    def has_step_window(self, profile: ProfileConfig) -> bool:
        return profile.max_iterations > 0

    def trace_patterns(self, profile_id: str) -> list[str]:
        return [f"{profile_id}_*.pt.trace.json.gz"]

    def parse_trace_name(self, name: str) -> TraceName | None:
        match = _GPU_WORKER.match(name)
        if match:
            return TraceName(
                "rank", match["prefix"], tp=int(match["tp"]), pp=int(match["pp"]),
                dp=int(match["dp"]), ep=int(match["ep"]), rank_in_dp=int(match["rank"]),
            )
        match = _CPU_WORKER.match(name)
        if match:
            return TraceName("rank", match["prefix"], rank_in_dp=int(match["rank"]))
        match = _API_SERVER.match(name)
        if match:
            return TraceName("api_server", match["prefix"], host=match["host"], pid=_int(match["pid"]))
        return None


class VllmEngine(VllmStyleProfiling, Engine):
    name = "vllm"
    # Worker processes set their title (setproctitle): VLLM::Worker[_DP<d>][_PP<p>]_TP<t>...
    rank_title = re.compile(r"^(VLLM::Worker\S*)")
    default_port = 8000
    default_rendezvous_port = 29501
    default_dp_rpc_port = 29550
    health_path = "/health"
    default_bootstrap_port = 5600  # vLLM's VLLM_NIXL_SIDE_CHANNEL_PORT default
    default_kv_connector = "NixlConnector"

    def default_command(self) -> list[str]:
        return ["vllm"]

    def node_args(self, ctx: NodeContext) -> list[str] | None:
        server = ctx.config.server
        group = ctx.group
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
                rpc_port = group.dp_rpc_port or self.default_dp_rpc_port
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
        if server.served_model_name:
            args += ["--served-model-name", server.served_model_name]
        if ctx.is_head:
            args += ["--host", ctx.group.host, "--port", str(ctx.port)]
        elif server.executor != "ray" and layout.nnodes > 1:
            args.append("--headless")
        if ctx.trace_dir is not None:
            args += ["--profiler-config", profiler_config_json(ctx.config.profile, ctx.trace_dir)]
        if group.is_pd:
            # Every node of the group builds its own config, so every node gets the connector.
            kv_config = {"kv_connector": group.kv_connector or self.default_kv_connector,
                         "kv_role": _KV_ROLES[group.role]}
            args += ["--kv-transfer-config", orjson.dumps(kv_config).decode()]
        return args + list(group.extra_args)

    def node_env(self, ctx: NodeContext) -> dict[str, str]:
        env = {"VLLM_HOST_IP": ctx.node.address}
        if ctx.group.is_pd and ctx.bootstrap_port is not None:
            # NIXL's handshake listener: the decode reaches the prefill's ranks there.
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = ctx.node.address
            env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(ctx.bootstrap_port)
        return env

    def serves_http(self, ctx: NodeContext) -> bool:
        """Hybrid and external DP load balancing run an API server on every node, each fronting
        only its local engines (so each is a benchmark endpoint and gets its own /start_profile)."""
        per_node = any(flag in ctx.group.extra_args for flag in _PER_NODE_API_FLAGS)
        return ctx.is_head or (per_node and ctx.config.server.executor != "ray")

    def router_bootstrap_port(self, port: int | None) -> int | None:
        """NIXL needs none (the prefill's kv_transfer_params say where its KV is); vllm-router's
        Mooncake mode asks each prefill's bootstrap server."""
        return None
