"""SGLang: the same `sglang.launch_server` command on every node, only `--node-rank` differs.

Flags are those of SGLang 0.5.23 (`sglang/srt/server_args.py`): `--pp-size` is spelled out because
`--pp` is an ambiguous prefix there; `--host 0.0.0.0` because the default binds loopback only.
Profiling is armed with SGLANG_TORCH_PROFILER_DIR, read by every scheduler on every node.
"""

from __future__ import annotations

import re

from magpie_trace.config import ProfileConfig
from magpie_trace.engines.base import Engine, HttpCall, NodeContext, TraceName

# `{prefix-}{profile_id}-TP-{t}[-DP-{d}][-PP-{p}][-EP-{e}][-{STAGE}].trace.json.gz`, the DP, PP
# and EP parts only when that size is above 1 (scheduler_components/profiler_manager.py).
_RANK_TRACE = re.compile(
    r"(?P<head>.+?)-TP-(?P<tp>\d+)(?:-DP-(?P<dp>\d+))?(?:-PP-(?P<pp>\d+))?(?:-EP-(?P<ep>\d+))?"
    r"(?:-(?P<stage>[A-Za-z]+))?\.trace\.json\.gz\Z"
)
# torch.profiler activity names (as vLLM and our config spell them) -> SGLang's.
_ACTIVITIES = {"CPU": "CPU", "CUDA": "GPU", "GPU": "GPU", "XPU": "XPU", "MEM": "MEM"}


class SglangEngine(Engine):
    name = "sglang"
    rank_title = re.compile(r"^(sglang::scheduler\S*)")  # its scheduler processes' titles
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
        if server.served_model_name:
            args += ["--served-model-name", server.served_model_name]
        args += ["--host", ctx.group.host, "--port", str(ctx.port)]
        group = ctx.group
        if group.is_pd:
            args += ["--disaggregation-mode", group.role]
            if group.role == "prefill":
                args += ["--disaggregation-bootstrap-port", str(ctx.bootstrap_port)]
            if group.transfer_backend:
                args += ["--disaggregation-transfer-backend", group.transfer_backend]
            if group.ib_device:
                args += ["--disaggregation-ib-device", group.ib_device]
        return args + list(group.extra_args)

    def node_env(self, ctx: NodeContext) -> dict[str, str]:
        env = {"SGLANG_HOST_IP": ctx.node.address}
        if ctx.trace_dir is not None:
            profile = ctx.config.profile
            env["SGLANG_TORCH_PROFILER_DIR"] = ctx.trace_dir
            env["SGLANG_PROFILE_WITH_STACK"] = "true" if profile.with_stack else "false"
            env["SGLANG_PROFILE_RECORD_SHAPES"] = "true" if profile.record_shapes else "false"
        return env

    # ---- profiling ---------------------------------------------------------------------------
    # One POST to the head reaches every scheduler (TP broadcast over Gloo, PP point to point);
    # each writes into its own node's SGLANG_TORCH_PROFILER_DIR (set at launch), so the request
    # sends no output_dir. SGLang writes no API-server trace.

    def start_profile_call(self, profile: ProfileConfig, profile_id: str) -> HttpCall:
        body: dict[str, object] = {
            "profile_id": profile_id,
            "with_stack": profile.with_stack,
            "record_shapes": profile.record_shapes,
        }
        if profile.activities:
            body["activities"] = sorted({_ACTIVITIES.get(a.upper(), a) for a in profile.activities})
        if profile.start_step is not None:
            body["start_step"] = profile.start_step
        if profile.num_steps is not None:
            body["num_steps"] = profile.num_steps
        return HttpCall("POST", "/start_profile", body)

    def stop_profile_call(self) -> HttpCall:
        return HttpCall("POST", "/stop_profile")

    def has_step_window(self, profile: ProfileConfig) -> bool:
        return profile.num_steps is not None

    def stop_needed(self, profile: ProfileConfig) -> bool:
        # After num_steps the schedulers stop on their own and /stop_profile answers 500.
        return profile.num_steps is None

    def trace_patterns(self, profile_id: str) -> list[str]:
        return [f"{profile_id}-TP-*.trace.json.gz"]

    def parse_trace_name(self, name: str) -> TraceName | None:
        match = _RANK_TRACE.match(name)
        if not match:
            return None
        optional = {key: None if match[key] is None else int(match[key]) for key in ("dp", "pp", "ep")}
        return TraceName("rank", match["head"], tp=int(match["tp"]), stage=match["stage"], **optional)
