"""What watching the nodes costs them, and whether it disturbs what the benchmark measures.

Part `cost` (ssh, real sshd on 127.0.0.x as in the tests, a `sleep` as each node's engine): the CPU
that watching takes on the nodes, per node per minute, for
  - shells:  the former way, a remote shell per check: the process check and the telemetry
             heartbeat each start `sh` over ssh every interval (what `bench` did before the monitor);
  - monitor: one node_monitor per node, started once over one ssh channel, streaming;
less an idle baseline (the same start/stop, no watching). Node-side CPU is the sshd tree's (every
remote shell and the monitor run under it): collected when the sshds exit. Measured twice: with
the test nodes' light ~/.bashrc, and with one that costs what a `pyenv init` costs (a python start).

Part `vllm` (a real vLLM, CPU build, TP=2 over two ssh "nodes", the engine venv of
.ci/setup-engines): the same benchmark, interleaved, with the monitor (`bench CONFIG`), with
nothing watching (`bench --url`), and with the former per-check shells beside a `--url` bench:
output throughput and median TPOT per mode. `--pyenv-bashrc` gives the nodes' ~/.bashrc the cost of
a `pyenv init` (a python start), as on the tour's nodes, where the former shells halved the
throughput: the monitor must agree with `none` there too.

    python benchmarks/monitor_cost.py [--part cost vllm] [--nodes 2] [--seconds 30] [--rounds 4]
                                      [--pyenv-bashrc]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magpie_trace.backends.ssh import SshBackend  # noqa: E402
from magpie_trace.bench.telemetry import NodeSampler  # noqa: E402
from magpie_trace.monitor import Monitors  # noqa: E402
from magpie_trace.nodewatch import ProcessCheck  # noqa: E402
from tests.fixtures.sshd import SshdPool  # noqa: E402

HEAVY_BASHRC = "python3 -c '' \n"  # about what `eval "$(pyenv init -)"` costs a shell


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Shells:
    """The former watching: per node, a remote process check and a telemetry heartbeat per
    interval, each a new remote shell."""

    def __init__(self, backend: SshBackend, nodes: dict, handles: dict, interval: float) -> None:
        self.check = ProcessCheck(backend, nodes, handles, "the benchmark")
        self.samplers = [NodeSampler(backend, node, interval) for node in nodes.values()]
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.check()

    def __enter__(self) -> "Shells":
        for sampler in self.samplers:
            sampler.start()
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        for sampler in self.samplers:
            sampler.stop()


def node_cpu(mode: str, nodes: int, seconds: float, interval: float, heavy: bool) -> tuple[float, float]:
    """(node-side CPU s, local CPU s) of one mode, with fresh sshds (their CPU is ours once they
    exit)."""
    with tempfile.TemporaryDirectory() as tmp:
        pool = SshdPool(Path(tmp))
        if heavy:
            (pool.home / ".bashrc").write_text((pool.home / ".bashrc").read_text() + HEAVY_BASHRC)
        scheduler = pool.scheduler(nodes, f"{tmp}/nodes")
        backend = SshBackend(scheduler)
        by_name = {node.name: node for node in scheduler.nodes}
        handles = {node.name: backend.start(node, ["sleep", "600"], {}, f"{tmp}/nodes/{node.name}/e.log")
                   for node in scheduler.nodes}
        began = children_cpu()
        if mode == "shells":
            with Shells(backend, by_name, handles, interval):
                time.sleep(seconds)
        elif mode == "monitor":
            with Monitors(backend, by_name, handles, sys.executable, "vllm", interval) as monitors:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:  # the watchdog's look at memory
                    assert monitors.check() is None, monitors.check()
                    time.sleep(0.25)
        else:
            time.sleep(seconds)
        for name, handle in handles.items():
            backend.stop(by_name[name], handle, grace_s=2)
        backend.close()
        local = children_cpu() - began
        pool.close()
        return children_cpu() - began - local, local


def part_cost(nodes: int, seconds: float, interval: float) -> None:
    print(f"== watching {nodes} ssh node(s) for {seconds:g} s, interval {interval:g} s "
          "(CPU s per node per minute, less the idle baseline)")
    for heavy in (False, True):
        figures = {mode: node_cpu(mode, nodes, seconds, interval, heavy) for mode in ("idle", "shells", "monitor")}
        idle_node, idle_local = figures["idle"]
        scale = 60.0 / seconds / nodes
        label = "pyenv-like ~/.bashrc" if heavy else "light ~/.bashrc"
        for mode in ("shells", "monitor"):
            node_s, local_s = figures[mode]
            print(f"{label:<22} {mode:<8} node {(node_s - idle_node) * scale:7.2f} CPU-s/min "
                  f"({(node_s - idle_node) * scale / 60 * 100:5.1f}% of a core)   "
                  f"here {(local_s - idle_local) * scale:6.2f} CPU-s/min")


def part_vllm(rounds: int, interval: float, heavy: bool) -> None:
    from magpie_trace.bench import run_benchmark
    from magpie_trace.config import BenchmarkConfig
    from magpie_trace.launch import launch, stop
    from magpie_trace.plan import make_plan
    from magpie_trace.rundir import new_run_dir
    from tests.engine.test_launch_real_vllm import vllm_config
    from tests.fixtures.engine_env import TINY_MODEL_SCRIPT, cache_root, engine_venv, offline_env

    import hashlib

    model = cache_root() / f"tiny-llama-{hashlib.sha256(TINY_MODEL_SCRIPT.read_bytes()).hexdigest()[:12]}"
    vllm = engine_venv() / "bin" / "vllm"
    if not (model / "config.json").is_file() or not vllm.exists():
        sys.exit(f"no engine venv or tiny model ({vllm}, {model}): run .ci/setup-engines and the engine tests once")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sshd").mkdir()
        pool = SshdPool(Path(tmp) / "sshd")
        if heavy:
            (pool.home / ".bashrc").write_text((pool.home / ".bashrc").read_text() + HEAVY_BASHRC)
        try:
            config = vllm_config(pool.scheduler(2, f"{tmp}/nodes"), Path(tmp), model, [str(vllm)], offline_env())
            config.benchmark = BenchmarkConfig(input_len=64, output_len=32, num_prompts=48, concurrency=[4],
                                               warmup_requests=2, telemetry_interval_s=interval)
            plan = make_plan(config)
            run_dir = new_run_dir(config.output.dir, plan.run_id)
            backend = SshBackend(config.scheduler)
            bashrc = "pyenv-like" if heavy else "light"
            print(f"== real vLLM TP=2 over 2 ssh nodes, {bashrc} ~/.bashrc: launching (minutes on 2 cores)")
            state = launch(plan, run_dir, backend, preflight=False)
            nodes = {n.name: plan.node_config(n.index) for n in plan.nodes}
            modes: dict[str, Callable[[], dict]] = {
                "monitor": lambda: run_benchmark(config, plan, Path(tmp) / "b", backend=backend,
                                                 handles=state.handles).points[0],
                "none": lambda: run_benchmark(config, None, Path(tmp) / "b", url=plan.head_url).points[0],
                "shells": lambda: shells_bench(),
            }

            def shells_bench() -> dict:
                with Shells(backend, nodes, state.handles, interval):
                    return run_benchmark(config, None, Path(tmp) / "b", url=plan.head_url).points[0]

            results: dict[str, list[dict]] = {mode: [] for mode in modes}
            try:
                modes["none"]()  # a warming pass, not counted
                for i in range(rounds):
                    order = list(modes) if i % 2 == 0 else list(reversed(modes))
                    for mode in order:
                        results[mode].append(modes[mode]())
            finally:
                stop(plan, run_dir, backend, state, grace_s=5)
                backend.close()
        finally:
            pool.close()
    base = statistics.mean(p["output_throughput"] for p in results["none"])
    print(f"{rounds} interleaved rounds, 48 requests at concurrency 4, 32 output tokens each")
    for mode, points in results.items():
        tput = [p["output_throughput"] for p in points]
        tpot = [p["median_tpot_ms"] for p in points]
        print(f"{mode:<8} output {statistics.mean(tput):7.1f} tok/s (min {min(tput):6.1f}, max {max(tput):6.1f}; "
              f"{statistics.mean(tput) / base:5.2f}x of none)   median TPOT {statistics.mean(tpot):7.1f} ms "
              f"(min {min(tpot):6.1f}, max {max(tpot):6.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["cost", "vllm"], choices=["cost", "vllm"])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pyenv-bashrc", action="store_true",
                        help="vllm part: the nodes' ~/.bashrc costs a python start, as a pyenv init does")
    args = parser.parse_args()
    if "cost" in args.part:
        part_cost(args.nodes, args.seconds, args.interval)
    if "vllm" in args.part:
        part_vllm(args.rounds, args.interval, args.pyenv_bashrc)


if __name__ == "__main__":
    main()
