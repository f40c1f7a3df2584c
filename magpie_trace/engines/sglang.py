"""SGLang: the same `sglang.launch_server` command on every node, only `--node-rank` differs.

Flags are those of SGLang 0.5.23 (`sglang/srt/server_args.py`): `--pp-size` is spelled out because
`--pp` is an ambiguous prefix there; `--host 0.0.0.0` because the default binds loopback only.
Profiling is armed with SGLANG_TORCH_PROFILER_DIR, read by every scheduler on every node.
"""

from __future__ import annotations

from magpie_trace.engines.base import Engine, NodeContext


class SglangEngine(Engine):
    name = "sglang"
    default_port = 30000
    default_rendezvous_port = 20000
    # Worker nodes answer /health with a constant 200; only the head's /health_generate generates.
    health_path = "/health_generate"

    def default_command(self) -> list[str]:
        return ["python3", "-m", "sglang.launch_server"]

    def node_args(self, ctx: NodeContext) -> list[str]:
        server = ctx.config.server
        layout = ctx.layout
        args = ["--model-path", server.model, "--tp-size", str(layout.tp)]
        if layout.pp > 1:
            args += ["--pp-size", str(layout.pp)]
        if layout.dp > 1:
            args += ["--dp-size", str(layout.dp)]
        if layout.ep > 1:
            args += ["--ep-size", str(layout.ep)]
        if layout.nnodes > 1:
            args += [
                "--nnodes", str(layout.nnodes),
                "--node-rank", str(ctx.index),
                "--dist-init-addr", f"{ctx.head.address}:{ctx.rendezvous_port}",
            ]
        args += ["--host", server.host, "--port", str(ctx.port)]
        return args + list(server.extra_args)

    def node_env(self, ctx: NodeContext) -> dict[str, str]:
        env = {"SGLANG_HOST_IP": ctx.node.address}
        if ctx.trace_dir is not None:
            profile = ctx.config.profile
            env["SGLANG_TORCH_PROFILER_DIR"] = ctx.trace_dir
            env["SGLANG_PROFILE_WITH_STACK"] = "true" if profile.with_stack else "false"
            env["SGLANG_PROFILE_RECORD_SHAPES"] = "true" if profile.record_shapes else "false"
        return env
