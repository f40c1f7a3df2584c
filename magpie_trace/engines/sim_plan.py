"""The built-in simulator's command line (the server itself is magpie_trace.engines.sim).

It is laid out like vLLM's mp executor: the head serves HTTP and the rendezvous; the other nodes are
headless. Fixed latencies, per-node clock offsets and failure injection come from server.sim.
"""

from __future__ import annotations

import re
import sys

from magpie_trace.config import Config
from magpie_trace.engines.base import Engine, NodeContext
from magpie_trace.engines.vllm import VllmStyleProfiling


def _number(value: float) -> str:
    return f"{value:g}"


class SimEngine(VllmStyleProfiling, Engine):
    """Profiles like vLLM: same endpoints, same GPU-worker and API-server trace names."""

    name = "sim"
    rank_title = re.compile(r"engines\.sim\.ranks .*?\"global_rank\": ?(\d+)")

    def rank_process(self, cmdline: str) -> str | None:
        rank = super().rank_process(cmdline)
        return None if rank is None else f"rank {rank}"
    default_port = 8000
    default_rendezvous_port = 29501
    health_path = "/health"

    def default_command(self) -> list[str]:
        return [sys.executable, "-m", "magpie_trace.engines.sim"]

    def probe_clock_args(self, config: Config, index: int) -> list[str]:
        """The node's simulated clock, for the clock probe: offset ns and drift ppm (as --clock-*)."""
        sim = config.server.sim
        return [str(round(sim.clock_offset_ms.get(index, 0.0) * 1_000_000)), repr(float(sim.clock_drift_ppm.get(index, 0.0)))]

    def node_args(self, ctx: NodeContext) -> list[str]:
        server = ctx.config.server
        sim = server.sim
        layout = ctx.layout
        args = [
            "serve",
            "--model", server.model,
            *(["--served-model-name", server.served_model_name] if server.served_model_name else []),
            "--node-rank", str(ctx.index),
            "--nnodes", str(layout.nnodes),
            "--ranks", ",".join(str(rank.global_rank) for rank in ctx.ranks),
            "--tp", str(layout.tp),
            "--pp", str(layout.pp),
            "--dp", str(layout.dp),
            "--ep", str(layout.ep),
            "--rendezvous", f"{ctx.head.address}:{ctx.rendezvous_port}",
        ]
        if ctx.is_head:
            args += ["--host", ctx.group.host, "--port", str(ctx.port)]
        else:
            args.append("--headless")
        args += [
            "--ttft-ms", _number(sim.ttft_ms),
            "--itl-ms", _number(sim.itl_ms),
            "--startup-s", _number(sim.startup_s),
            "--layers", str(sim.layers),
        ]
        if ctx.group.is_pd:
            args += ["--pd-role", ctx.group.role]
            if ctx.group.role == "prefill" and ctx.is_head:
                args += ["--kv-port", str(ctx.bootstrap_port), "--kv-address", ctx.node.address,
                         "--transfer-ms", _number(sim.transfer_ms)]
        if ctx.node_index in sim.clock_offset_ms:
            args += ["--clock-offset-ms", _number(sim.clock_offset_ms[ctx.node_index])]
        if ctx.node_index in sim.clock_drift_ppm:
            args += ["--clock-drift-ppm", _number(sim.clock_drift_ppm[ctx.node_index])]
        if ctx.node_index in sim.die_after_s:
            args += ["--die-after-s", _number(sim.die_after_s[ctx.node_index])]
        if sim.hang_after_s is not None and ctx.is_head:
            args += ["--hang-after-s", _number(sim.hang_after_s)]
        if ctx.trace_dir is not None:
            args += ["--profile-dir", ctx.trace_dir]
        return args + list(ctx.group.extra_args)
