"""How fast can our client send while still measuring TTFT right? And `vllm bench serve` beside it.

Starts the sim engine (a separate process, via launch on the local backend) with a fixed TTFT and
ITL, then for each request rate sends evenly spaced requests with magpie-trace's client and with
`vllm bench serve` (from the engine venv, when present) against the same server. A rate counts as
sustained when the achieved request rate is within 5% of the target and the median TTFT is within
1 ms of the configured TTFT. Prints one table row per rate and the highest sustained rate of each.
Send lag (ours only) is the client's own backlog: request issued -> body written to the socket.
Then the other paths a benchmark takes: building prompts through the server's /tokenize (prompts
per second), and replaying a trace (how far each request's send is from its timestamp).

    python benchmarks/client_capacity.py [--rates 50,100,200,400] [--seconds 4] [--no-vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magpie_trace.backends import make_backend  # noqa: E402
from magpie_trace.bench.arrivals import LoadPoint  # noqa: E402
from magpie_trace.bench.client import StreamClient  # noqa: E402
from magpie_trace.bench.load import PointRun, run_point  # noqa: E402
from magpie_trace.bench.metrics import aggregate  # noqa: E402
from magpie_trace.bench.workload import Conversation, ServerTokens, build_workload  # noqa: E402
from magpie_trace.config import BenchmarkConfig, SimConfig  # noqa: E402
from magpie_trace.launch import launch, stop  # noqa: E402
from magpie_trace.plan import make_plan  # noqa: E402
from magpie_trace.rundir import new_run_dir  # noqa: E402
from tests.launch.simcluster import local_scheduler, sim_config  # noqa: E402

TTFT_MS, ITL_MS, INPUT_LEN, OUTPUT_LEN = 20.0, 10.0, 16, 4


async def ours(url: str, rate: float, count: int) -> dict:
    bench = BenchmarkConfig(input_len=INPUT_LEN, output_len=OUTPUT_LEN)
    conversations = (await build_workload(bench, count)).conversations
    async with StreamClient(url, "sim-model", concurrency=1024) as client:
        await client.open_connections(min(64, count))
        run = PointRun(LoadPoint(1024, rate))
        await run_point(client, conversations, run.point, math.inf, 0, run)
    return aggregate(run.records, run.duration_s, [50, 99])


async def tokenize_rate(url: str, count: int, input_len: int) -> float:
    """Prompts per second fitted to exact lengths through the server's /tokenize."""
    bench = BenchmarkConfig(input_len=input_len, output_len=OUTPUT_LEN)
    async with StreamClient(url, "sim-model") as client:
        started = time.perf_counter()
        await build_workload(bench, count, ServerTokens(client.session, url, "sim-model"))
        return count / (time.perf_counter() - started)


async def replay(url: str, rate: float, count: int) -> list[float]:
    """ms between each request's body write and its trace time, for a trace at `rate` req/s."""
    bench = BenchmarkConfig(input_len=INPUT_LEN, output_len=OUTPUT_LEN)
    plain = (await build_workload(bench, count)).conversations
    timed = [Conversation(c.turns, at_s=i / rate) for i, c in enumerate(plain)]
    async with StreamClient(url, "sim-model", concurrency=None) as client:
        await client.open_connections(min(64, count))
        run = PointRun(LoadPoint(None, replay=True))
        await run_point(client, timed, run.point, 1.0, 0, run)
    start = run.start_ns
    return sorted(abs(((r.wire_ns or 0) - start) / 1e6 - 1000 * r.index / rate) for r in run.records)


def vllm(url: str, rate: float, count: int, python: Path, tokenizer: Path, out: Path) -> dict:
    argv = [
        str(python), str(REPO / "tests/engine/vllm_cli.py"), "bench", "serve", "--backend", "openai",
        "--base-url", url, "--model", "sim-model", "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", str(INPUT_LEN),
        "--random-output-len", str(OUTPUT_LEN), "--num-prompts", str(count),
        "--request-rate", str(rate), "--burstiness", "inf", "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(out), "--result-filename", f"r{rate:g}.json",
        "--disable-tqdm",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {proc.stderr[-2000:]}")
    return json.loads((out / f"r{rate:g}.json").read_text())


def replay_stats(lates: list[float]) -> str:
    p = lambda q: lates[min(len(lates) - 1, int(q * len(lates)))]  # noqa: E731
    return f"p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {lates[-1]:.2f} ms"


def sustained(m: dict, rate: float) -> bool:
    return m["request_throughput"] >= 0.95 * rate and abs(m["median_ttft_ms"] - TTFT_MS) < 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,200,400")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--no-vllm", action="store_true")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    venv = Path(os.environ.get("MAGPIE_ENGINE_VENV") or Path.home() / ".cache/magpie-trace/engine-venv")
    python = venv / "bin" / "python"
    tokenizers = sorted((Path.home() / ".cache/magpie-trace").glob("tiny-llama-*/tokenizer.json"))
    use_vllm = not args.no_vllm and python.exists() and bool(tokenizers)
    if not use_vllm and not args.no_vllm:
        print("vllm bench serve: engine venv or tiny model missing; measuring our client only")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = sim_config(local_scheduler(tmp, 1), tmp, sim=SimConfig(ttft_ms=TTFT_MS, itl_ms=ITL_MS, startup_s=0.2))
        plan = make_plan(config)
        run_dir = new_run_dir(config.output.dir, plan.run_id)
        backend = make_backend(config.scheduler)
        state = launch(plan, run_dir, backend, preflight=False)
        best = {"magpie-trace": 0.0, "vllm bench serve": 0.0}
        try:
            print(f"sim: TTFT {TTFT_MS:g} ms, ITL {ITL_MS:g} ms, {INPUT_LEN} in / {OUTPUT_LEN} out tokens; "
                  f"{args.seconds:g} s of evenly spaced requests per rate; cpus={os.cpu_count()}")
            print("| target req/s | tool | achieved req/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | send lag p99 (ms) | sustained |")
            print("|---|---|---|---|---|---|---|---|")
            for rate in rates:
                count = max(10, int(rate * args.seconds))
                tools = ["magpie-trace"] + (["vllm bench serve"] if use_vllm else [])
                for name in tools:
                    if name == "magpie-trace":
                        m = asyncio.run(ours(plan.head_url, rate, count))
                    else:
                        m = vllm(plan.head_url, rate, count, python, tokenizers[0].parent, tmp)
                    ok = sustained(m, rate)
                    if ok:
                        best[name] = max(best[name], rate)
                    lag = m.get("p99_send_lag_ms")
                    lag_text = "-" if lag is None else f"{lag:.2f}"
                    print(f"| {rate:g} | {name} | {m['request_throughput']:.1f} | {m['median_ttft_ms']:.2f} | "
                          f"{m['p99_ttft_ms']:.2f} | {m['median_tpot_ms']:.2f} | {lag_text} | "
                          f"{'yes' if ok else 'no'} |", flush=True)
                    time.sleep(0.5)
            print("\n| path | load | result |")
            print("|---|---|---|")
            for input_len in (128, 1024):
                per_s = asyncio.run(tokenize_rate(plan.head_url, 500, input_len))
                print(f"| prompts fitted via /tokenize | 500 x {input_len} tokens | {per_s:.0f} prompts/s |", flush=True)
            for rate in (50.0, 200.0, 800.0):
                lates = replay_stats(asyncio.run(replay(plan.head_url, rate, int(rate * args.seconds))))
                print(f"| trace replay, send vs timestamp | {rate:g} req/s, {int(rate * args.seconds)} requests | "
                      f"{lates} |", flush=True)
        finally:
            stop(plan, run_dir, backend, state, grace_s=3)
    for name, rate in best.items():
        if name == "magpie-trace" or use_vllm:
            print(f"highest sustained rate, {name}: {rate:g} req/s")


if __name__ == "__main__":
    main()
