"""How every ending of `magpie-trace run` is checked: the CLI in a process of its own, then its
exit code, its one error line, run.json, the report, and nothing of the run left on any node
(by the run's own process records in state.json)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml

from magpie_trace.config import Config, SimConfig
from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir
from tests.launch.simcluster import sim_config
from tests.procs import leftover_processes, wait_for

REPO = Path(__file__).resolve().parents[2]


def long_run_config(scheduler: Any, tmp_path: Path, **sim: Any) -> Config:
    """A sim run whose benchmark lasts long enough to be interrupted (16 s at c2, then c4)."""
    config = sim_config(
        scheduler, tmp_path, ranks_per_node=2,
        sim=SimConfig(startup_s=0.2, ttft_ms=10, itl_ms=5, **sim),
    )
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 16, 200, 16
    bench.concurrency, bench.warmup_requests = [2, 4], 1
    config.profile.enabled = False
    return config


def write_config(config: Config, tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def start_cli(args: list[str], stdout: int | IO[Any] = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "magpie_trace.cli", *args], cwd=REPO,
        stdout=stdout, stderr=subprocess.PIPE, text=True,
    )


def read_until(proc: subprocess.Popen[str], prefix: str, timeout_s: float = 120) -> list[str]:
    """stderr lines up to and including the first that starts with prefix."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stderr:  # bounded by the process's life and the deadline
        seen.append(line)
        if line.startswith(prefix) or time.monotonic() > deadline:
            break
    assert seen and seen[-1].startswith(prefix), "".join(seen)
    return seen


def ended(proc: subprocess.Popen[str], seen: list[str], timeout_s: float = 120) -> tuple[str, list[str]]:
    """Once the CLI has ended (killed after timeout_s): its whole stderr, the lines read before
    included, and its error lines."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + err
    return err, error_lines(err)


def only_run_dir(config: Config) -> RunDir:
    runs = [p for p in Path(config.output.dir).iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, runs
    return RunDir(runs[0])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def check_torn_down(run_dir: RunDir) -> None:
    """run.json and the report written; every process group of the run gone."""
    assert (run_dir.root / "run.json").is_file()
    assert run_dir.report_md.is_file() and run_dir.report_html.is_file()
    state = load_state(run_dir)
    assert state.handles and state.stopped_at is not None
    pgids = [h.pgid for h in state.handles.values()]
    assert wait_for(lambda: not leftover_processes(pgids), 15), leftover_processes(pgids)


def run_json(run_dir: RunDir) -> dict[str, Any]:
    return json.loads((run_dir.root / "run.json").read_text())


def stages(run_dir: RunDir) -> dict[str, str]:
    return {s["name"]: s["status"] for s in run_json(run_dir)["stages"]}


def stop_leftovers(config: Config) -> None:
    """Stop whatever a run under config.output.dir left running (a test that failed midway)."""
    from magpie_trace.launch import plan_for_run, stop

    for root in Path(config.output.dir).glob("2*"):
        run_dir = RunDir(root)
        if run_dir.state.exists():
            try:
                stop(plan_for_run(run_dir), run_dir, grace_s=2)
            except Exception:  # noqa: BLE001 - best effort after a failure already reported
                pass
