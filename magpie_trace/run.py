"""`magpie-trace run`: the whole job, each stage's output on disk, teardown guaranteed.

plan -> launch -> bench (with a profile capture during a steady part of the load) -> stop ->
collect -> merge -> analyze -> report. The server is always torn down, on failure and on Ctrl-C too. Every
stage reads only the files of the stages before it, so `run(config, from_stage=...)` resumes a run
and each stage also exists as its own command.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from magpie_trace import interrupts
from magpie_trace.backends import make_backend
from magpie_trace.backends.base import Backend
from magpie_trace.config import Config
from magpie_trace.errors import MagpieError
from magpie_trace.fsutil import atomic_write_bytes
from magpie_trace.launch import LaunchState, launch, operator_stop, stop
from magpie_trace.monitor import monitors_for
from magpie_trace.nodewatch import NodeGuard, Trip, process_guard
from magpie_trace.plan import Plan, make_plan
from magpie_trace.progress import stage, stage_ended
from magpie_trace.rundir import RunDir, find_run_dir, new_run_dir
from magpie_trace.secrets import Secrets

RUN_SCHEMA = "magpie-trace/run/1"
STAGES = ("launch", "bench", "collect", "merge", "analyze", "report")
Progress = Callable[[str], None]


@dataclass
class StageRecord:
    name: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    attempt: int | None = None  # the attempt that ran it (a resume keeps the earlier ones')


@dataclass
class RunResult:
    """What a run produced; written to <run>/run.json with a versioned schema."""

    run_id: str
    run_dir: Path
    url: str
    ok: bool = True
    error: str | None = None
    stages: list[StageRecord] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    bench_valid: bool | None = None
    tracelens_command: str | None = None
    teardown: dict[str, Any] | None = None  # ok, lost (nodes counted as stopped), error
    attempt: int = 1  # a resume (--from) is a new attempt on the same run folder
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every attempt, this one last

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = RUN_SCHEMA
        data["run_dir"] = str(self.run_dir)
        return data


def run(
    config: Config,
    from_stage: str | None = None,
    run_ref: str | None = None,
    backend: Backend | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run every stage from `from_stage` (default: all) and return what was produced.

    `run_ref` names an existing run folder to resume (default for a resume: the latest). Raises the
    first stage failure as MagpieError after teardown and after writing run.json and the report.
    """
    say = progress or (lambda _msg: None)
    if from_stage is not None and from_stage not in STAGES:
        raise MagpieError(f"--from {from_stage}: unknown stage (one of {', '.join(STAGES)})")
    first = STAGES.index(from_stage) if from_stage else 0
    backend = backend or make_backend(config.scheduler)
    hold = contextlib.ExitStack()
    try:
        backend.acquire_nodes(say, config.source)
        if first == 0 and run_ref is None:
            plan = make_plan(config)
            run_dir = new_run_dir(config.output.dir, plan.run_id)
        else:
            run_dir = find_run_dir(config.output.dir, run_ref)
            plan = make_plan(config, run_id=run_dir.run_id)
        hold.enter_context(run_dir.lock("run"))  # no other command writes in it meanwhile
    except BaseException:
        backend.close()  # gives back an allocation it asked for
        raise
    with hold:
        return _run_stages(plan, run_dir, first, from_stage, backend, say)


def _run_stages(
    plan: Plan, run_dir: RunDir, first: int, from_stage: str | None, backend: Backend, say: Progress
) -> RunResult:
    """The stages from STAGES[first], in a run folder this process holds."""
    config = plan.config
    started = time.time()
    result = RunResult(run_id=plan.run_id, run_dir=run_dir.root, url=plan.head_url)
    earlier = _earlier_attempts(run_dir)
    result.attempt = len(earlier) + 1
    started_utc = _utc_now()
    wanted = set(STAGES[first:])
    if not config.profile.enabled:
        wanted -= {"collect", "merge", "analyze"}
    if not config.output.merge:
        wanted -= {"merge", "analyze"}
    if not config.benchmark.enabled and not config.profile.enabled:
        wanted -= {"bench"}
    state: LaunchState | None = None
    failure: BaseException | None = None
    try:
        if "bench" in wanted or "launch" in wanted:
            state = _stage(result, "launch", say, lambda: launch(plan, run_dir, backend, progress=say))
        if "bench" in wanted:
            _stage(result, "bench", say, lambda: _bench_and_capture(plan, backend, run_dir, state, result, say))
    except BaseException as exc:  # noqa: BLE001 - re-raised below after teardown
        failure = exc
    finally:
        if state is not None:
            with interrupts.shielded():
                say("tearing down every node")
                teardown_error = _teardown(plan, run_dir, backend, state, result)
            failure = failure or teardown_error  # the first error is the one reported
    failure = failure or interrupts.pending()  # a signal that came during the teardown
    if failure is not None and not isinstance(failure, KeyboardInterrupt):
        during = next((s.name for s in reversed(result.stages) if s.status == "failed"), "the run")
        failure = operator_stop(run_dir, started, during) or failure
    try:
        if failure is None and "collect" in wanted:
            _stage(result, "collect", say, lambda: _collect(plan, backend, run_dir, result, say))
        if failure is None and "merge" in wanted:
            _stage(result, "merge", say, lambda: _merge(plan, run_dir, result, say))
        if failure is None and "analyze" in wanted:
            _stage(result, "analyze", say, lambda: _analyze(run_dir, result))
    except BaseException as exc:  # noqa: BLE001
        failure = exc
    finally:
        with interrupts.shielded():
            backend.close()
    with interrupts.shielded():
        ran = list(result.stages)  # this attempt's stages; result.stages becomes the whole run's
        record = _attempt_record(result, ran, from_stage, started_utc, failure)
        secrets = Secrets.of(config)
        _write_run_json(run_dir, result, earlier, ran, record, failure, secrets)  # the report reads it
        if "report" in wanted or failure is not None:
            result.stages = ran
            try:
                _stage(result, "report", say, lambda: _report(run_dir, result))
            except Exception as exc:  # noqa: BLE001 - recorded like any stage failure
                failure = failure or exc
            ran = list(result.stages)
            record = _attempt_record(result, ran, from_stage, started_utc, failure)
            _write_run_json(run_dir, result, earlier, ran, record, failure, secrets)
    if failure is None and not result.ok:
        say(f"warning: this attempt went well, but the run is not ok: {result.error}")
    failure = failure or interrupts.pending()
    if failure is not None:
        if isinstance(failure, (MagpieError, KeyboardInterrupt)):
            raise failure
        raise MagpieError(f"run failed: {type(failure).__name__}: {failure}") from failure
    return result


def _teardown(
    plan: Plan, run_dir: RunDir, backend: Backend, state: LaunchState, result: RunResult
) -> MagpieError | None:
    """Stop every node; a lost node counts as stopped. Recorded in run.json's `teardown`."""
    error: MagpieError | None = None
    try:
        stop(plan, run_dir, backend, state)
    except MagpieError as exc:
        error = exc
    result.teardown = {"ok": error is None, "lost": sorted(state.lost),
                       "error": None if error is None else str(error)}
    return error


def _earlier_attempts(run_dir: RunDir) -> list[dict[str, Any]]:
    """The attempts run.json recorded before this one (a run.json from before attempts were
    recorded counts as attempt 1)."""
    try:
        data = orjson.loads((run_dir.root / "run.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return []
    if not isinstance(data, dict):
        return []
    if data.get("attempts"):
        return list(data["attempts"])
    return [{"attempt": 1, "from": None, "ok": data.get("ok"), "error": data.get("error"),
             "stages": [s for s in data.get("stages", []) if s.get("status") != "skipped"],
             "outputs": data.get("outputs", {}), "bench_valid": data.get("bench_valid")}]


def _attempt_record(
    result: RunResult, ran: list[StageRecord], from_stage: str | None, started_utc: str,
    failure: BaseException | None,
) -> dict[str, Any]:
    return {
        "attempt": result.attempt, "from": from_stage, "started_utc": started_utc,
        "ended_utc": _utc_now(), "ok": failure is None,
        "error": None if failure is None else _describe(failure),
        "stages": [asdict(s) | {"attempt": result.attempt} for s in ran],
        "outputs": dict(result.outputs), "bench_valid": result.bench_valid,
    }


def _write_run_json(
    run_dir: RunDir, result: RunResult, earlier: list[dict[str, Any]], ran: list[StageRecord],
    record: dict[str, Any], failure: BaseException | None, secrets: Secrets,
) -> None:
    """run.json: this attempt after the earlier ones. Each stage's status is that of the latest
    attempt that ran it, so a resume that skips a failed stage leaves the run failed (and says
    in which attempt); outputs and bench validity carry over from attempts that measured them."""
    latest: dict[str, StageRecord] = {}
    for attempt in earlier:
        for stage_row in attempt.get("stages", []):
            latest[stage_row["name"]] = StageRecord(
                stage_row["name"], stage_row["status"], stage_row.get("seconds", 0.0),
                stage_row.get("detail", ""), stage_row.get("attempt") or attempt.get("attempt"),
            )
        result.outputs = {**attempt.get("outputs", {}), **result.outputs}
    for done in ran:
        latest[done.name] = StageRecord(done.name, done.status, done.seconds, done.detail,
                                        result.attempt)
    result.stages = [latest.get(name) or StageRecord(name, "skipped") for name in STAGES]
    if result.bench_valid is None and "bench" not in {s.name for s in ran}:
        result.bench_valid = next((a.get("bench_valid") for a in reversed(earlier)
                                   if a.get("bench_valid") is not None), None)
    failed = [s for s in result.stages if s.status == "failed"]
    result.ok = failure is None and not failed
    if failure is not None:
        result.error = _describe(failure)
    elif failed:
        first = failed[0]
        result.error = f"{first.name} failed in attempt {first.attempt}: {first.detail}"
    else:
        result.error = None
    result.attempts = [*earlier, record]
    mask = secrets.text  # an error may quote a node's log, and a log an env value
    result.error = result.error and mask(result.error)
    record["error"] = record["error"] and mask(record["error"])
    for kept in result.stages:
        kept.detail = mask(kept.detail)
    for entry in record["stages"]:
        entry["detail"] = mask(entry["detail"])
    atomic_write_bytes(run_dir.root / "run.json", orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _describe(failure: BaseException) -> str:
    if isinstance(failure, KeyboardInterrupt):
        return interrupts.describe()
    return str(failure) or type(failure).__name__


def _stage(result: RunResult, name: str, say: Progress, fn: Callable[[], Any]) -> Any:
    stage(say, name)
    started = time.monotonic()
    try:
        value = fn()
    except BaseException as exc:
        result.stages.append(StageRecord(name, "failed", time.monotonic() - started, _describe(exc)))
        stage_ended(say, name, time.monotonic() - started, failed=True)
        raise
    result.stages.append(StageRecord(name, "ok", time.monotonic() - started))
    stage_ended(say, name, time.monotonic() - started)
    return value


def _bench_and_capture(
    plan: Plan, backend: Backend, run_dir: RunDir, state: LaunchState | None, result: RunResult, say: Progress
) -> None:
    """The benchmark in this thread; the profile window opened during the load in another."""
    from magpie_trace.bench import (
        BenchInterrupted,
        BenchInvalid,
        RunAborted,
        profile_point,
        run_benchmark,
    )
    from magpie_trace.profile import capture

    config = plan.config
    captured: list[BaseException] = []
    load_started = threading.Event()
    bench_done = threading.Event()
    profile_done = threading.Event()
    # One stream per node for the whole stage: liveness for the bench and the capture, telemetry.
    monitors = monitors_for(plan, backend, state.handles if state else {},
                            config.benchmark.telemetry_interval_s)
    guard = process_guard(plan, backend, state.handles, "the profile capture", monitors.check) if state else NodeGuard()

    def capture_window() -> None:
        """Open the window start_after_s into the profiled load point, which runs before the
        measured ones and lasts until the capture is done (so they carry no profiler overhead)."""
        try:
            if config.benchmark.enabled:
                while not load_started.wait(0.2):
                    if bench_done.is_set():
                        return  # the benchmark ended (or failed) before any load: nothing to profile
            guard.wait(config.profile.start_after_s)
            capture(plan, backend, run_dir, progress=say, guard=guard)
        except BaseException as exc:  # noqa: BLE001 - raised by the main thread
            captured.append(exc)
        finally:
            profile_done.set()

    thread = None
    with monitors, guard:
        if config.profile.enabled:
            thread = threading.Thread(target=capture_window, name="profile-capture", daemon=True)
            thread.start()
        try:
            if config.benchmark.enabled:
                try:
                    bench = run_benchmark(
                        config, plan, run_dir.bench, backend=backend,
                        handles=state.handles if state else None, say=say,
                        on_point_start=lambda _point: load_started.set(),
                        profile_point=profile_point(config) if config.profile.enabled else None,
                        profile_done=profile_done.is_set, monitors=monitors,
                    )
                except (BenchInterrupted, BenchInvalid, RunAborted) as exc:
                    # Partial results were written and marked invalid; the run stops with this error.
                    result.bench_valid = False
                    if exc.result_path:
                        result.outputs["bench"] = str(exc.result_path)
                    raise
                result.bench_valid = bench.valid
                result.outputs["bench"] = str(bench.result_path)
        except BaseException as exc:
            # The capture waits no longer: the node is lost, or the run is ending anyway.
            lost = isinstance(exc, RunAborted)
            guard.trip(Trip(exc.node, exc.reason) if lost else Trip("run", "the run is ending"))
            raise
        finally:
            bench_done.set()
            if thread is not None:
                thread.join(config.profile.timeout_s + config.profile.duration_s + config.profile.start_after_s)
    if captured:
        raise captured[0]


def _collect(plan: Plan, backend: Backend, run_dir: RunDir, result: RunResult, say: Progress) -> None:
    from magpie_trace.collect import collect

    collected = collect(plan, backend, run_dir, progress=say)
    result.outputs["traces"] = str(run_dir.traces)
    result.tracelens_command = getattr(collected, "tracelens_command", None)


def _merge(plan: Plan, run_dir: RunDir, result: RunResult, say: Progress) -> None:
    from magpie_trace.merge import MergeOptions, merge
    from magpie_trace.merge.bytescan import compile_notice

    if notice := compile_notice():
        say(notice)
    merged = merge(run_dir.traces, run_dir.merged, MergeOptions())
    result.outputs["merged"] = str(merged.output_dir)
    if isinstance(merged.outputs.get("merged"), str):
        result.outputs["perfetto"] = merged.outputs["merged"]
    if merged.tracelens_command:
        result.tracelens_command = merged.tracelens_command


def _analyze(run_dir: RunDir, result: RunResult) -> None:
    from magpie_trace.analyze import analyze

    analyzed = analyze(run_dir.merged)
    result.outputs["analysis"] = str(run_dir.merged / "analysis")
    result.outputs["events"] = analyzed.events["folder"]


def _report(run_dir: RunDir, result: RunResult) -> None:
    from magpie_trace.report import write_report

    md, html = write_report(run_dir)
    result.outputs["report.md"] = str(md)
    result.outputs["report.html"] = str(html)
