"""A whole benchmark: warm up, run every load point under the watchdog, write the results.

Everything that can fail on a node fails the run loudly: the result file is still written (with
`valid: false`, the reasons and the partial numbers), then RunAborted is raised (exit code 3).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp

from magpie_trace.backends.base import Backend, ProcessHandle
from magpie_trace.bench.arrivals import LoadPoint, Ramp, sweep_points
from magpie_trace.bench.attribution import attribution, engine_nodes, per_node
from magpie_trace.bench.client import StreamClient
from magpie_trace.bench.endpoints import per_endpoint
from magpie_trace.bench.load import PointRun, cycled, first_turns, run_point
from magpie_trace.bench.metrics import RequestRecord, aggregate
from magpie_trace.bench.models import resolve_model
from magpie_trace.bench.plots import write_plots
from magpie_trace.bench.progressbar import report_progress
from magpie_trace.bench.prometheus import (
    fetch_text,
    group_totals,
    metrics_targets,
    scrape_all,
    server_deltas,
    spec_decode,
)
from magpie_trace.bench.results import (
    SCHEMA,
    new_attempt,
    point_header,
    utc_now,
    versions,
    write_outputs,
    write_point,
)
from magpie_trace.bench.telemetry import NodeSampler
from magpie_trace.bench.watchdog import (
    BenchInterrupted,
    BenchInvalid,
    RunAborted,
    Trip,
    Watchdog,
)
from magpie_trace.bench.workload import (
    TRACE_DATASETS,
    LocalTokens,
    ServerTokens,
    Tokens,
    build_workload,
    load_tokenizer,
)
from magpie_trace.config import Config
from magpie_trace.errors import MagpieError
from magpie_trace.monitor import Monitors, monitors_for
from magpie_trace.plan import Plan
from magpie_trace.secrets import Secrets

Say = Callable[[str], None]
INTERRUPTED = "interrupted before the load finished"
T = TypeVar("T")
WARMUP_MAX_TOKENS = 16
PROFILE_POINT_MAX_REQUESTS = 100_000  # the profiled point ends when the capture does; this bounds it
PROMPT_DIFF_WARN_PCT = 2.0


@dataclass
class BenchResult:
    valid: bool
    result_path: Path
    out_dir: Path
    points: list[dict[str, Any]]
    invalid_reasons: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


async def engine_version(session: aiohttp.ClientSession, base_url: str) -> str | None:
    try:
        import orjson

        return str(orjson.loads(await fetch_text(session, base_url.rstrip("/") + "/version")).get("version"))
    except Exception:  # noqa: BLE001 - the version is informative only
        return None


def run_benchmark(
    config: Config,
    plan: Plan | None,
    out_dir: str | Path,
    backend: Backend | None = None,
    handles: dict[str, ProcessHandle] | None = None,
    url: str | None = None,
    points: list[LoadPoint] | None = None,
    say: Say | None = None,
    on_point_start: Callable[[LoadPoint], None] | None = None,
    profile_point: LoadPoint | None = None,
    profile_done: Callable[[], bool] | None = None,
    monitors: Monitors | None = None,
) -> BenchResult:
    """Run the configured sweep against plan.head_url (or url); write results in a new attempt
    folder under out_dir (out_dir/attempt-NNN: nothing earlier is overwritten).

    backend + handles (from launch state) enable the process and telemetry checks of the
    watchdog; without them only the no-progress check runs. The result files are always written;
    then RunAborted (exit 3) is raised when a node was lost, BenchInvalid (exit 3) when requests
    failed or were cut short, MagpieError when warmup fails (nothing measured).
    on_point_start(point) is called as each load point begins (after warmup).
    profile_point: a point run before the sweep, marked `profiled`, that keeps sending until
    profile_done() is true (or its duration_s ends): `run` profiles there, so the measured
    points carry no profiler overhead.
    monitors: the nodes' monitors when the caller runs them already (`run` does, for the whole
    run); else they are started here, one stream per node for liveness and telemetry.
    """
    return asyncio.run(
        run_benchmark_async(
            config, plan, out_dir, backend, handles, url, points, say, on_point_start,
            profile_point, profile_done, monitors,
        )
    )


async def run_benchmark_async(
    config: Config,
    plan: Plan | None,
    out_dir: str | Path,
    backend: Backend | None = None,
    handles: dict[str, ProcessHandle] | None = None,
    url: str | None = None,
    points: list[LoadPoint] | None = None,
    say: Say | None = None,
    on_point_start: Callable[[LoadPoint], None] | None = None,
    profile_point: LoadPoint | None = None,
    profile_done: Callable[[], bool] | None = None,
    monitors: Monitors | None = None,
) -> BenchResult:
    say = say or (lambda _msg: None)
    bench = config.benchmark
    base_url = url or (plan.head_url if plan else "")
    if not base_url:
        raise MagpieError("bench: no endpoint (give a plan or a URL)")
    # The router, else every API server (requests spread over them): one URL for one server.
    endpoints = [url] if url else plan.endpoints if plan else [base_url]
    points = list(points or sweep_points(bench))
    if profile_point is not None:
        points.insert(0, replace(profile_point, profiled=True))
    out = new_attempt(out_dir)
    tokenizer, tokenizer_note = load_tokenizer(bench.tokenizer)
    kind, kind_note = attribution(plan)
    head = plan.head.name if plan else base_url
    nodes = {plan.nodes[i].name: plan.node_config(i) for i in range(len(plan.nodes))} if plan else {}
    watched = plan.watched_nodes() if plan else {}  # a lost router stops the run too

    samplers: dict[str, NodeSampler] = {}
    owned: Monitors | None = None
    if backend is not None and plan is not None:
        samplers = {
            name: NodeSampler(backend, node, bench.telemetry_interval_s) for name, node in nodes.items()
        }
        if monitors is None:
            owned = monitors = monitors_for(plan, backend, dict(handles or {}), bench.telemetry_interval_s)
            await asyncio.to_thread(monitors.start)
        for name, monitor in monitors.by_node.items():
            monitor.on_sample = _feeder(samplers[name])
        await asyncio.to_thread(monitors.wait_first_samples)
    watchdog = Watchdog(
        head=head,
        stall_timeout_s=bench.stall_timeout_s,
        backend=backend,
        nodes=watched,
        handles=dict(handles or {}),
        samplers=samplers,
        silence_s=max(10.0, 3 * bench.telemetry_interval_s),
        streams=monitors.check if monitors is not None else None,
        fresh_s=2 * bench.telemetry_interval_s + 0.5,
    )
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "valid": True,
        "invalid_reasons": [],
        "warnings": [tokenizer_note] if tokenizer_note else [],
        "abort": None,
        "run_id": plan.run_id if plan else None,
        "attempt": out.name,
        "started_utc": utc_now(),
        "ended_utc": None,
        "target": {
            "base_url": base_url,
            "endpoint": bench.endpoint,
            "model": None,
            "model_id": None,
            "engine": config.server.engine if plan else None,
            "engine_version": None,
        },
        "versions": versions(),
        "config": Secrets.of(config).config(config.to_dict()),
        "topology": {
            "layout": plan.layout.to_dict() if plan else None,
            "nodes": [
                {"name": n.name, "role": n.role, "host": n.host, "serves_http": n.serves_http,
                 **({"group": n.group, "group_role": n.group_role} if n.group else {})}
                for n in (plan.nodes if plan else [])
            ],
            "endpoints": endpoints,
            "spread": bench.spread if len(endpoints) > 1 else None,
            "router": plan.router.to_dict() if plan and plan.router else None,
            "attribution": kind,
            "attribution_note": kind_note,
            "engine_nodes": engine_nodes(plan) if kind == "engine_label" else {},
        },
        "workload": {
            "dataset": bench.dataset,
            "dataset_path": bench.dataset_path,
            "input_len": bench.input_len,
            "output_len": bench.output_len,
            "range_ratio": bench.range_ratio,
            "prefix_len": bench.prefix_len,
            "num_prefixes": bench.num_prefixes,
            "turns": bench.turns,
            "sharegpt_output_len": bench.sharegpt_output_len,
            "ignore_eos": bench.ignore_eos,
            "num_prompts": bench.num_prompts,
            "warmup_requests": bench.warmup_requests,
            "seed": bench.seed,
            "tokenizer": bench.tokenizer if tokenizer is not None else None,
            "prompt_lengths_from": None,
        },
        "points": [],
        "per_node": {},
        "artifacts": {"points": [], "plots": []},
    }
    records: list[RequestRecord] = []
    targets = metrics_targets(plan, base_url)
    deadline = time.monotonic() + bench.max_duration_s
    caps = [p.concurrency for p in points]
    max_concurrency = None if None in caps else max(c for c in caps if c is not None)
    gc.collect()
    gc.freeze()  # as vLLM does: no full collections of the (large, static) heap mid-run
    try:
        async with StreamClient(
            endpoints, "", bench.endpoint, max_concurrency,
            bench.request_timeout_s, bench.ignore_eos, tokenizer, bench.spread,
        ) as client:
            watchdog.progress = client.progress
            session = client.session
            result["target"]["engine_version"] = await engine_version(session, base_url)
            client.model, model_id = await resolve_model(
                session, base_url, bench.model or config.server.served_model_name
            )
            result["target"]["model"], result["target"]["model_id"] = client.model, model_id
            tokens = await _token_source(tokenizer, bench.server_tokenizer, session, base_url, client.model, say, result)
            result["workload"]["prompt_lengths_from"] = tokens.source if tokens is not None else "words"
            trace = bench.dataset in TRACE_DATASETS
            count = bench.num_prompts if trace else bench.warmup_requests + bench.num_prompts
            say(f"workload: {count} {bench.dataset} conversation(s), lengths from "
                f"{result['workload']['prompt_lengths_from']}")
            workload = await build_workload(bench, count, tokens)
            result["warnings"].extend(workload.notes)
            conversations = workload.conversations
            warmup = first_turns(conversations[: bench.warmup_requests], WARMUP_MAX_TOKENS)
            measured = conversations if trace else conversations[bench.warmup_requests :]
            if warmup:
                say(f"warmup: {len(warmup)} request(s) to {client.url}")
                run = PointRun(LoadPoint(len(warmup)))
                await _watched(watchdog, run_point(client, warmup, run.point, bench.burstiness, bench.seed, run), deadline)
                bad = [r for r in run.records if r.status != "ok"]
                if bad and watchdog.trip is None:
                    raise MagpieError(
                        f"bench: warmup: {len(bad)} of {len(run.records)} request(s) to {client.url} "
                        f"failed: {bad[0].error}"
                    )
            for point in points:
                if watchdog.trip is not None:
                    break
                supply = cycled(measured, PROFILE_POINT_MAX_REQUESTS) if point.profiled else measured
                until = profile_done if point.profiled else None
                say(f"{point.label}: " + ("until the profile is captured" if point.profiled else
                                          f"{len(supply)} conversation(s)")
                    + ("" if point.concurrency is None else f", concurrency {point.concurrency}")
                    + ("" if point.rate is None else f", {point.rate:g} req/s"))
                if on_point_start is not None:
                    on_point_start(point)  # e.g. `run` opens its profile window during the load
                await client.open_connections(min(point.concurrency or len(supply), len(supply), 256))
                before = await scrape_all(session, targets)
                client.progress.touch()  # a stall is counted from the point's start, not from the last point
                run = PointRun(point)
                requests = sum(len(c.turns) for c in (measured if point.profiled else supply))
                bar_task = asyncio.create_task(report_progress(say, point.label, requests, client.progress))
                try:
                    await _watched(
                        watchdog, run_point(client, supply, point, bench.burstiness, bench.seed, run, until), deadline,
                    )
                finally:
                    cut_short = watchdog.trip is not None
                    bar_task.cancel()  # its last line may meet a closed output: an interrupt
                    await _to_the_end(watchdog, asyncio.gather(bar_task, return_exceptions=True))
                records.extend(run.records)
                after = await _to_the_end(watchdog, scrape_all(session, targets)) if not cut_short else {}
                summary = _point_summary(point, run, bench, model_id, client.model)
                head_page = next(iter(targets), None)
                summary.update(spec_decode(before.get(head_page), after.get(head_page)) if after else {})
                summary.update({
                    "server": server_deltas(before, after) if after else {},
                    **({"per_endpoint": per_endpoint(run.records, client.endpoints.urls,
                                                     run.duration_s, bench.percentiles,
                                                     bench.goodput or None)}
                       if len(endpoints) > 1 else {}),
                    "telemetry": {n: s.summary(run.started_unix, run.ended_unix) for n, s in samplers.items()},
                    "partial": cut_short,
                })
                if plan is not None and plan.has_groups:
                    summary["server_groups"] = group_totals(plan, summary["server"])
                _server_checks(summary, result["warnings"])
                result["points"].append(summary)
                result["artifacts"]["points"] += write_point(out, summary, run.records, result["workload"], bench.sglang_result)
    except asyncio.CancelledError:
        # Interrupted outside a load point (Ctrl-C, SIGTERM; while the prompts are built, or
        # between points): what was measured is still written.
        if watchdog.trip is None:
            watchdog.trip = Trip("benchmark", INTERRUPTED)
    except BaseException:
        if not any(out.iterdir()):
            out.rmdir()  # failed before anything was measured (a bad model name, a bad file)
        raise
    finally:
        gc.unfreeze()
        if monitors is not None:
            for monitor in monitors.by_node.values():
                monitor.on_sample = None
        if owned is not None:
            owned.stop()
    trip = watchdog.trip
    if trip is not None and plan is not None:
        trip = replace(trip, node=plan.label(trip.node))  # names its group too; keeps which process
    if trip is not None:
        result["valid"] = False
        result["invalid_reasons"].append(f"{trip.node}: {trip.reason}")
        result["abort"] = {"node": trip.node, "reason": trip.reason}
    for point in result["points"]:
        if point["failed"] or point["not_sent"]:
            result["valid"] = False
            result["invalid_reasons"].append(
                f"{point['point']}: {point['failed']} failed request(s) ({point['incomplete']} cut short "
                f"mid-stream), {point['not_sent']} not sent"
            )
    result["ended_utc"] = utc_now()
    result["per_node"] = per_node(plan, samplers, watchdog.trip, kind)
    telemetry = {name: s.samples for name, s in samplers.items()}
    gpus = plan.layout.world_size if plan else None
    plots, notes = write_plots(out, result["points"], records, telemetry, gpus)
    result["warnings"].extend(notes)
    result["artifacts"].update({
        "requests": "requests.jsonl",
        "telemetry": "telemetry.jsonl",
        "sweep_csv": "sweep.csv",
        "points": sorted(set(result["artifacts"]["points"])),
        "plots": plots,
    })
    path = write_outputs(out, result, telemetry)
    if trip is not None and trip.process is not None:
        await asyncio.to_thread(watchdog.stop_lost_node)  # its whole tree: nothing serves half
    if trip is not None and trip.reason == INTERRUPTED:
        raise BenchInterrupted(str(path))
    if trip is not None:
        raise RunAborted(trip.node, trip.reason, str(path))
    if not result["valid"]:
        raise BenchInvalid(result["invalid_reasons"], str(path))
    return BenchResult(
        valid=result["valid"], result_path=path, out_dir=out, points=result["points"],
        invalid_reasons=result["invalid_reasons"], data=result,
    )


async def _token_source(
    tokenizer: Any, use_server: bool, session: aiohttp.ClientSession, base_url: str, model: str,
    say: Say, result: dict[str, Any],
) -> Tokens | None:
    """The local tokenizer if one loaded, else the server's /tokenize if it answers, else None."""
    if tokenizer is not None:
        return LocalTokens(tokenizer)
    if not use_server:
        return None
    server = ServerTokens(session, base_url, model)
    why = await server.available()
    if why is None:
        return server
    result["warnings"].append(f"the server's /tokenize is not usable ({why}): prompt lengths are approximate")
    say("no tokenizer: prompt lengths are approximate")
    return None


def _point_summary(
    point: LoadPoint, run: PointRun, bench: Any, model_id: str, model: str
) -> dict[str, Any]:
    schedule = "ramp" if point.ramp else "replay" if point.replay else "rate" if point.rate else "burst"
    header = point_header(point, bench, model_id, len(run.records) + run.not_sent)
    if point.ramp is not None:
        header["rps_change_events"] = rps_change_events(point.ramp, run)
    return {
        **header,
        **aggregate(
            run.records, run.duration_s, bench.percentiles, bench.goodput or None, not_sent=run.not_sent,
            queued=point.concurrency is not None, paced=schedule != "burst",
        ),
        "point": point.label,
        "profiled": point.profiled,
        "schedule": schedule,
        "served_model_name": model,
        "stopped_by": run.stopped_by,
        "started_unix": run.started_unix,
        "ended_unix": run.ended_unix,
    }


async def _to_the_end(watchdog: Watchdog, work: Awaitable[T]) -> T:
    """work, awaited to its end even when an interrupt (Ctrl-C, SIGTERM, a closed output) comes
    meanwhile: a load point that has run is summarised and written, not lost between its last
    request and its summary. The interrupt is recorded; the sweep stops after this point."""
    task = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            if watchdog.trip is None:
                watchdog.trip = Trip("benchmark", INTERRUPTED)


async def _watched(watchdog: Watchdog, work: Any, deadline: float) -> None:
    """Run work under the watchdog; stop it at the deadline. Returns normally when cut short."""
    task = asyncio.ensure_future(work)
    guard = asyncio.create_task(watchdog.watch(task))
    failed_before = watchdog.failed()
    try:
        remaining = deadline - time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=max(remaining, 0.0))
        if not done:
            watchdog.trip = Trip("benchmark", "benchmark.max_duration_s reached before the load finished")
            task.cancel()
        await asyncio.gather(task, return_exceptions=watchdog.trip is not None)
        await watchdog.after_failures(failed_before)
    except asyncio.CancelledError:
        # Ctrl-C (asyncio.run cancels the main task): stop the load and keep what was measured.
        if watchdog.trip is None:
            watchdog.trip = Trip("benchmark", INTERRUPTED)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        guard.cancel()
        await asyncio.gather(guard, return_exceptions=True)


def _feeder(sampler: NodeSampler) -> Callable[[Any, dict[str, Any]], None]:
    return lambda _monitor, sample: sampler.feed(sample)


def rps_change_events(ramp: Ramp, run: PointRun) -> list[dict[str, Any]]:
    """vLLM's record of a ramp: each whole req/s the rate reaches, with the (local) time the
    first request at that rate was due."""
    first = sorted((r for r in run.records if r.turn == 0), key=lambda r: r.scheduled_ns)
    rates = ramp.rates(len(first))

    def when(ns: int) -> str:
        return dt.datetime.fromtimestamp(run.started_unix + (ns - run.start_ns) / 1e9).isoformat()

    last = int(ramp.start_rps)
    events = [{"rps": last, "timestamp": when(run.start_ns)}]
    for record, rate in zip(first, rates):
        if int(rate) > last:
            events += [{"rps": v, "timestamp": when(record.scheduled_ns)} for v in range(last + 1, int(rate) + 1)]
            last = int(rate)
    return events


def _server_checks(summary: dict[str, Any], warnings: list[str]) -> None:
    """The servers' counts against the client's: generation tokens (a lost or doubled count shows
    here), prompt tokens against the requested lengths, and prefix-cache hits (shared prompt
    tokens the server actually reused)."""
    label = summary["point"]
    diff = summary.get("prompt_tokens_diff_pct")
    if diff is not None and abs(diff) > PROMPT_DIFF_WARN_PCT:
        warnings.append(
            f"{label}: the server counted {diff:+.1f}% prompt tokens against the "
            f"{summary['prompt_tokens_requested']} requested (first turns; a chat template adds tokens)"
        )
    totals: dict[str, float] = {}
    for node in summary["server"].values():
        for key, value in (node.get("total", {}) if isinstance(node, dict) else {}).items():
            totals[key] = totals.get(key, 0.0) + value
    if "prefix_cache_hits" in totals:
        summary["server_prefix_cache_hits"] = totals["prefix_cache_hits"]
    total = totals.get("generation_tokens")
    if total is None or not summary["total_output_tokens"]:
        return
    error = (total - summary["total_output_tokens"]) / summary["total_output_tokens"] * 100
    summary["server_generation_tokens"] = total
    summary["reconciliation_error_pct"] = error
    if abs(error) > 2:
        warnings.append(
            f"{label}: server counted {total:.0f} generation tokens, client "
            f"{summary['total_output_tokens']} ({error:+.1f}%)"
        )
