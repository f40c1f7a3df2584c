"""A whole benchmark: warm up, run every load point under the watchdog, write the results.

Everything that can fail on a node fails the run loudly: the result file is still written (with
`valid: false`, the reasons and the partial numbers), then RunAborted is raised (exit code 3).
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import aiohttp

from magpie_trace.backends.base import Backend, ProcessHandle
from magpie_trace.bench.arrivals import LoadPoint, sweep_points
from magpie_trace.bench.attribution import attribution, engine_nodes, per_node
from magpie_trace.bench.client import StreamClient
from magpie_trace.bench.endpoints import per_endpoint
from magpie_trace.bench.load import PointRun, run_point
from magpie_trace.bench.metrics import RequestRecord, aggregate
from magpie_trace.bench.plots import write_plots
from magpie_trace.bench.progressbar import report_progress
from magpie_trace.bench.prometheus import (
    fetch_text,
    group_totals,
    metrics_targets,
    scrape_all,
    server_deltas,
)
from magpie_trace.bench.results import (
    SCHEMA,
    masked,
    point_header,
    utc_now,
    versions,
    write_outputs,
)
from magpie_trace.bench.telemetry import NodeSampler
from magpie_trace.bench.watchdog import (
    BenchInterrupted,
    BenchInvalid,
    RunAborted,
    Trip,
    Watchdog,
)
from magpie_trace.bench.workload import build_workload, load_tokenizer
from magpie_trace.config import Config
from magpie_trace.errors import MagpieError
from magpie_trace.plan import Plan

Say = Callable[[str], None]
INTERRUPTED = "interrupted before the load finished"
WARMUP_MAX_TOKENS = 16


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
) -> BenchResult:
    """Run the configured sweep against plan.head_url (or url); write results under out_dir.

    backend + handles (from launch state) enable the process and telemetry checks of the
    watchdog; without them only the no-progress check runs. The result files are always written;
    then RunAborted (exit 3) is raised when a node was lost, BenchInvalid (exit 3) when requests
    failed or were cut short, MagpieError when warmup fails (nothing measured).
    on_point_start(point) is called as each measured load point begins (after warmup).
    """
    return asyncio.run(
        run_benchmark_async(config, plan, out_dir, backend, handles, url, points, say, on_point_start)
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
) -> BenchResult:
    say = say or (lambda _msg: None)
    bench = config.benchmark
    out = Path(out_dir)
    base_url = url or (plan.head_url if plan else "")
    if not base_url:
        raise MagpieError("bench: no endpoint (give a plan or a URL)")
    # The router, else every API server (requests spread over them): one URL for one server.
    endpoints = [url] if url else plan.endpoints if plan else [base_url]
    points = points or sweep_points(bench)
    tokenizer, tokenizer_note = load_tokenizer(bench.tokenizer)
    prompts = build_workload(bench, bench.warmup_requests + bench.num_prompts, tokenizer)
    warmup, measured = prompts[: bench.warmup_requests], prompts[bench.warmup_requests :]
    kind, kind_note = attribution(plan)
    head = plan.head.name if plan else base_url
    nodes = {plan.nodes[i].name: plan.node_config(i) for i in range(len(plan.nodes))} if plan else {}
    watched = plan.watched_nodes() if plan else {}  # a lost router stops the run too

    samplers: dict[str, NodeSampler] = {}
    if backend is not None and plan is not None:
        samplers = {
            name: NodeSampler(backend, node, bench.telemetry_interval_s) for name, node in nodes.items()
        }
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in samplers.values()))
    watchdog = Watchdog(
        head=head,
        stall_timeout_s=bench.stall_timeout_s,
        backend=backend,
        nodes=watched,
        handles=dict(handles or {}),
        samplers=samplers,
        silence_s=max(10.0, 3 * bench.telemetry_interval_s),
    )
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "valid": True,
        "invalid_reasons": [],
        "warnings": [tokenizer_note] if tokenizer_note else [],
        "abort": None,
        "run_id": plan.run_id if plan else None,
        "started_utc": utc_now(),
        "ended_utc": None,
        "target": {
            "base_url": base_url,
            "endpoint": bench.endpoint,
            "model": config.server.model,
            "engine": config.server.engine if plan else None,
            "engine_version": None,
        },
        "versions": versions(),
        "config": masked(config.to_dict()),
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
            "ignore_eos": bench.ignore_eos,
            "num_prompts": bench.num_prompts,
            "warmup_requests": bench.warmup_requests,
            "seed": bench.seed,
            "tokenizer": bench.tokenizer if tokenizer is not None else None,
        },
        "points": [],
        "per_node": {},
        "artifacts": {},
    }
    records: list[RequestRecord] = []
    targets = metrics_targets(plan, base_url)
    deadline = time.monotonic() + bench.max_duration_s
    max_concurrency = max(p.concurrency for p in points)
    gc.collect()
    gc.freeze()  # as vLLM does: no full collections of the (large, static) heap mid-run
    try:
        async with StreamClient(
            endpoints, config.server.model, bench.endpoint, max_concurrency,
            bench.request_timeout_s, bench.ignore_eos, tokenizer, bench.spread,
        ) as client:
            watchdog.progress = client.progress
            session = client.session
            result["target"]["engine_version"] = await engine_version(session, base_url)
            if warmup:
                say(f"warmup: {len(warmup)} request(s) to {client.url}")
                short = [replace(p, output_tokens=min(p.output_tokens, WARMUP_MAX_TOKENS)) for p in warmup]
                run = PointRun(LoadPoint(len(short)), [], 0)
                await _watched(watchdog, run_point(client, short, run.point, bench.burstiness, bench.seed, run), deadline)
                bad = [r for r in run.records if r.status != "ok"]
                if bad and watchdog.trip is None:
                    raise MagpieError(
                        f"bench: warmup: {len(bad)} of {len(run.records)} request(s) to {client.url} "
                        f"failed: {bad[0].error}"
                    )
            for point in points:
                if watchdog.trip is not None:
                    break
                say(f"{point.label}: {len(measured)} request(s), concurrency {point.concurrency}"
                    + ("" if point.rate is None else f", {point.rate:g} req/s"))
                if on_point_start is not None:
                    on_point_start(point)  # e.g. `run` opens its profile window during the load
                await client.open_connections(point.concurrency)
                before = await scrape_all(session, targets)
                run = PointRun(point, [], 0)
                bar_task = asyncio.create_task(report_progress(say, point.label, len(measured), client.progress))
                try:
                    await _watched(watchdog, run_point(client, measured, point, bench.burstiness, bench.seed, run), deadline)
                finally:
                    bar_task.cancel()
                    await asyncio.gather(bar_task, return_exceptions=True)
                records.extend(run.records)
                after = await scrape_all(session, targets) if watchdog.trip is None else {}
                summary = {
                    **point_header(point, config.server.model, bench.endpoint, len(measured), bench.burstiness),
                    **aggregate(run.records, run.duration_s, bench.percentiles, bench.goodput or None),
                    "started_unix": run.started_unix,
                    "ended_unix": run.ended_unix,
                    "server": server_deltas(before, after) if after else {},
                    **({"per_endpoint": per_endpoint(run.records, client.endpoints.urls,
                                                     run.duration_s, bench.percentiles,
                                                     bench.goodput or None)}
                       if len(endpoints) > 1 else {}),
                    "telemetry": {n: s.summary(run.started_unix, run.ended_unix) for n, s in samplers.items()},
                    "partial": watchdog.trip is not None,
                }
                if plan is not None and plan.has_groups:
                    summary["server_groups"] = group_totals(plan, summary["server"])
                _reconcile(summary, result["warnings"])
                result["points"].append(summary)
    except asyncio.CancelledError:
        # Interrupted between load points (Ctrl-C, SIGTERM): the points measured are still written.
        if watchdog.trip is None:
            watchdog.trip = Trip("benchmark", INTERRUPTED)
    finally:
        gc.unfreeze()
        for sampler in samplers.values():
            sampler.stop()
    trip = watchdog.trip
    if trip is not None and plan is not None:
        trip = Trip(plan.label(trip.node), trip.reason)  # names its group too
    if trip is not None:
        result["valid"] = False
        result["invalid_reasons"].append(f"{trip.node}: {trip.reason}")
        result["abort"] = {"node": trip.node, "reason": trip.reason}
    for point in result["points"]:
        if point["failed"] or point["incomplete"]:
            result["valid"] = False
            result["invalid_reasons"].append(
                f"{point['label']}: {point['failed']} failed and {point['incomplete']} incomplete request(s)"
            )
    result["ended_utc"] = utc_now()
    result["per_node"] = per_node(plan, samplers, watchdog.trip, kind)
    telemetry = {name: s.samples for name, s in samplers.items()}
    plots, notes = write_plots(out, result["points"], telemetry)
    result["warnings"].extend(notes)
    result["artifacts"] = {
        "requests": "requests.jsonl",
        "telemetry": "telemetry.jsonl",
        "sweep_csv": "sweep.csv",
        "points": [f"points/{p['label']}.json" for p in result["points"]],
        "plots": plots,
    }
    path = write_outputs(out, result, records, telemetry)
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


def _reconcile(summary: dict[str, Any], warnings: list[str]) -> None:
    """Server-counted generation tokens vs the client's sum (a lost or doubled count shows here)."""
    total = 0.0
    seen = False
    for node in summary["server"].values():
        tokens = node.get("total", {}).get("generation_tokens") if isinstance(node, dict) else None
        if tokens is not None:
            total += tokens
            seen = True
    if not seen or not summary["total_output_tokens"]:
        return
    error = (total - summary["total_output_tokens"]) / summary["total_output_tokens"] * 100
    summary["server_generation_tokens"] = total
    summary["reconciliation_error_pct"] = error
    if abs(error) > 2:
        warnings.append(
            f"{summary['label']}: server counted {total:.0f} generation tokens, client "
            f"{summary['total_output_tokens']} ({error:+.1f}%)"
        )
