"""`python -m magpie_trace.engines.sim serve ...`: run one node of the simulator engine.

Bad arguments give one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from magpie_trace.engines.sim import SIM_VERSION
from magpie_trace.engines.sim.disagg import ROLES
from magpie_trace.engines.sim.node import NodeConfig, run
from magpie_trace.topology import Layout


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: sim: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m magpie_trace.engines.sim",
                     description="magpie-trace's simulated vLLM-like engine (one node per process)")
    parser.add_argument("--version", action="version", version=f"magpie-trace-sim {SIM_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="run one node")
    serve.add_argument("--model", required=True, help="the model (its served name by default)")
    serve.add_argument("--served-model-name", nargs="+", metavar="NAME",
                       help="the name(s) requests use and /v1/models lists, as in vLLM")
    serve.add_argument("--node-rank", type=int, required=True)
    serve.add_argument("--nnodes", type=int, required=True)
    serve.add_argument("--ranks", required=True,
                       help="comma-separated GLOBAL ranks hosted by this node, in local order")
    for name in ("tp", "pp", "dp", "ep"):
        serve.add_argument(f"--{name}", type=int, default=1)
    serve.add_argument("--rendezvous", help="HEAD_ADDRESS:PORT (the head listens there)")
    serve.add_argument("--headless", action="store_true", help="a non-head node: no HTTP")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--ttft-ms", type=float, default=20.0)
    serve.add_argument("--itl-ms", type=float, default=5.0)
    serve.add_argument("--startup-s", type=float, default=0.5)
    serve.add_argument("--clock-offset-ms", type=float, default=0.0,
                       help="this node's clock = real time + this (trace timestamps and names)")
    serve.add_argument("--clock-drift-ppm", type=float, default=0.0,
                       help="this node's clock also runs this fast (counted from the last Kineto base time)")
    serve.add_argument("--die-after-s", type=float, help="exit with code 1 after this long")
    serve.add_argument("--hang-after-s", type=float,
                       help="the head stops producing tokens after this long, every process still running")
    serve.add_argument("--profile-dir", type=Path,
                       help="where ranks write traces; without it /start_profile is 404")
    serve.add_argument("--layers", type=int, default=4, help="all-reduces per engine step")
    serve.add_argument("--pd-role", choices=ROLES,
                       help="serve behind a PD router as its prefill or decode server")
    serve.add_argument("--kv-port", type=int,
                       help="prefill: the KV side-channel (bootstrap) port decode servers pull from")
    serve.add_argument("--kv-address",
                       help="prefill: the address decode servers reach the KV port at (default --host)")
    serve.add_argument("--transfer-ms", type=float, default=0.0,
                       help="prefill: how long one KV transfer to a decode server takes")
    return parser


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> NodeConfig:
    for name in ("nnodes", "tp", "pp", "dp", "ep", "layers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.node_rank < args.nnodes:
        parser.error(f"--node-rank {args.node_rank} is outside 0..{args.nnodes - 1}")
    if args.headless != (args.node_rank != 0):
        parser.error("node 0 is the head and must not be --headless; every other node must be")
    try:
        ranks = [int(rank) for rank in args.ranks.split(",")]
    except ValueError:
        parser.error(f"--ranks {args.ranks!r} is not a comma-separated list of integers")
    layout = Layout(tp=args.tp, pp=args.pp, dp=args.dp, ep=args.ep, nnodes=args.nnodes, ranks_per_node=len(ranks))
    if len(set(ranks)) != len(ranks) or not all(0 <= r < layout.world_size for r in ranks):
        parser.error(f"--ranks {args.ranks} must be distinct ranks in 0..{layout.world_size - 1} "
                     f"(TP{args.tp} x PP{args.pp} x DP{args.dp})")
    host, port = "127.0.0.1", 0
    if args.rendezvous is not None:
        host, _, port_text = args.rendezvous.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            parser.error(f"--rendezvous {args.rendezvous!r} is not HOST:PORT")
        port = int(port_text)
    elif args.nnodes > 1:
        parser.error("--rendezvous HOST:PORT is required with --nnodes > 1")
    if args.ttft_ms < 0 or args.itl_ms <= 0 or args.startup_s < 0:
        parser.error("--ttft-ms and --startup-s must be >= 0 and --itl-ms > 0")
    if args.transfer_ms < 0:
        parser.error("--transfer-ms must be >= 0")
    if (args.kv_port is not None) != (args.pd_role == "prefill" and not args.headless):
        parser.error("--kv-port is required on a prefill head (--pd-role prefill) and only there")
    if args.kv_port is not None and not 0 < args.kv_port < 65536:
        parser.error(f"--kv-port {args.kv_port} is not a TCP port")
    for flag, value in (("--die-after-s", args.die_after_s), ("--hang-after-s", args.hang_after_s)):
        if value is not None and not value >= 0:
            parser.error(f"{flag} must be >= 0")
    if args.profile_dir is not None:
        try:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"--profile-dir {args.profile_dir}: {error.strerror}")
        if not os.access(args.profile_dir, os.W_OK):
            parser.error(f"--profile-dir {args.profile_dir} is not writable")
    return NodeConfig(
        model=args.model, served_names=tuple(args.served_model_name or [args.model]), node_rank=args.node_rank, nnodes=args.nnodes, ranks=ranks,
        layout=layout, rendezvous_host=host, rendezvous_port=port, headless=args.headless,
        host=args.host, port=args.port, ttft_s=args.ttft_ms / 1000, itl_s=args.itl_ms / 1000,
        startup_s=args.startup_s, offset_ns=round(args.clock_offset_ms * 1_000_000), drift_ppm=args.clock_drift_ppm,
        die_after_s=args.die_after_s, profile_dir=args.profile_dir, layers=args.layers,
        pd_role=args.pd_role, kv_port=args.kv_port, kv_address=args.kv_address or "",
        transfer_s=args.transfer_ms / 1000, hang_after_s=args.hang_after_s,
    )


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    code = run(_config(args, parser))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # without waiting on handlers of hung requests


if __name__ == "__main__":
    main()
