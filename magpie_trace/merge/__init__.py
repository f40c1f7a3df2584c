"""`magpie-trace merge`: align the nodes' clocks and write TraceLens-ready per-rank traces, one Perfetto
trace, collective tables and alignment.json.

    from magpie_trace.merge import MergeOptions, merge
    result = merge(Path("traces"), Path("merged"), MergeOptions(jobs=2))

Two passes, one file at a time per worker: pass 1 (`load`) validates each trace and extracts the
collectives; `anchors` + `align` fit each node's clock; pass 2 (`rewrite`, with the compiled
`bytescan`) streams every file again into the outputs. Inputs are only read.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import polars as pl

from magpie_trace.errors import MagpieError, TraceError
from magpie_trace.merge import gzipjoin, perfetto, tables
from magpie_trace.merge.align import (
    ClockFit,
    NodeTimes,
    PairRows,
    ProbePoint,
    fit_pair,
    probe_rows,
    residuals,
    solve,
    two_clocks,
)
from magpie_trace.merge.anchors import Matched
from magpie_trace.merge.discover import TraceFile, discover, manifest_probes
from magpie_trace.merge.handoff import launch_measurements, place_groups, read_handoffs
from magpie_trace.merge.matching import MatchResult, Place, Prior, match
from magpie_trace.merge.load import SCRATCH, Scanned, scan, size_hint
from magpie_trace.merge.rewrite import RewriteJob, RewriteResult, Transform, rewrite

OUTPUTS = ("aligned", "merged", "tables", "alignment", "events")
# events (the analysis' events table, ids in the aligned traces' args, flows in the merged trace) is
# asked for: it costs about as much as the merge itself; `run` asks, so its analyze stage is SQL only.
DEFAULT_OUTPUTS = ("aligned", "merged", "tables", "alignment")
TRIMONTH_NS = 7_889_238 * 10**9  # Kineto floors baseTimeNanoseconds to this period
ALIGNMENT_SCHEMA = "magpie-trace/alignment/1"
TRACELENS_REPORT = "TraceLens_generate_multi_rank_collective_report_pytorch"
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class MergeOptions:
    """What to write and how.

    window_ms: (start, end) in ms from the start of the reference rank's profiling window, on the
    aligned timeline; every rank is cut at the same instants. steps: (first, last) indices of the
    reference rank's step annotations (ProfilerStep#N / vLLM execute_* / SGLang step[...]), inclusive.
    """

    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    jobs: int = 1
    window_ms: tuple[float, float] | None = None
    steps: tuple[int, int] | None = None
    reference_node: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.outputs) - set(OUTPUTS)
        if unknown:
            raise MagpieError(f"unknown output(s) {sorted(unknown)}; choose from {', '.join(OUTPUTS)}")
        if "events" in self.outputs and not {"aligned", "tables"} <= set(self.outputs):
            raise MagpieError("the events output is built from the aligned traces and the tables: ask for those too")
        if self.jobs < 1:
            raise MagpieError("jobs must be at least 1")
        if self.window_ms is not None and self.steps is not None:
            raise MagpieError("give either a time window or a step range, not both")
        if self.window_ms is not None and not self.window_ms[0] < self.window_ms[1]:
            raise MagpieError(f"window start must be before its end: {self.window_ms}")
        if self.steps is not None and not 0 <= self.steps[0] <= self.steps[1]:
            raise MagpieError(f"step range must be first<=last, both >= 0: {self.steps}")


@dataclass
class MergeResult:
    output_dir: Path
    files: list[dict[str, Any]]
    nodes: dict[str, dict[str, Any]]
    reference_node: str
    base_time_ns: int
    collectives: int
    window_ns: tuple[int, int] | None
    outputs: dict[str, Any]
    warnings: list[str]
    input_bytes: int
    seconds: float
    tracelens_command: str | None = None  # TraceLens's multi-rank collective report over aligned/

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_dir"] = str(self.output_dir)
        return out


def _run(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> list[R]:
    """fn over items, in `jobs` worker processes (inline when 1, which keeps memory to one file)."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(max_workers=min(jobs, len(items))) as pool:
        return list(pool.map(fn, items))


def _resolve_ranks(scanned: list[Scanned]) -> None:
    """Fill global ranks from distributedInfo and refuse two files that claim one rank (of one
    group: each group of a deployment numbers its own ranks)."""
    owners: dict[tuple[str | None, int], Path] = {}
    for sc in scanned:
        tf = sc.file
        dist_rank = (sc.distributed_info or {}).get("rank")
        if tf.kind == "other" and isinstance(dist_rank, int):
            tf.kind = "rank"
        if tf.kind != "rank":
            continue
        if tf.global_rank is None:
            if isinstance(dist_rank, int):
                tf.global_rank = dist_rank
            elif tf.tp_rank is not None and not tf.dp_rank and not tf.pp_rank:
                tf.global_rank = tf.tp_rank
        elif isinstance(dist_rank, int) and dist_rank != tf.global_rank:
            tf.notes.append(f"distributedInfo.rank {dist_rank} differs from {tf.global_rank} (name/manifest wins)")
        if tf.global_rank is None:
            raise TraceError(f"{tf.path}: cannot tell its rank (no manifest entry, rank in the name or distributedInfo)")
        key = (tf.group, tf.global_rank)
        if key in owners:
            raise TraceError(f"{owners[key]} and {tf.path} both claim rank {tf.global_rank}")
        owners[key] = tf.path


def _match_groups(files: list[TraceFile], ranks: list[int], anchors: dict[int, list[Any]],
                  places: dict[int, Place], priors: dict[tuple[int, int], Prior]) -> MatchResult:
    """Groups of a deployment share no collective, and their process groups and sequence numbers
    repeat from one group to the next: each group's files are matched among themselves."""
    by_group: dict[str | None, list[int]] = {}
    for i in ranks:
        by_group.setdefault(files[i].group, []).append(i)
    if len(by_group) < 2:
        return match(anchors, places, priors)
    out = MatchResult([])
    for members in by_group.values():
        mine = set(members)
        found = match({i: anchors[i] for i in members}, {i: places[i] for i in members},
                      {key: prior for key, prior in priors.items() if set(key) <= mine})
        out.collectives += found.collectives
        out.refused += found.refused
    return out


def _solve_groups(files: list[TraceFile], scanned: list[Scanned], ranks: list[int], times: NodeTimes,
                  reference: str, t0: int, probes: dict[str, list[ProbePoint]], all_nodes: list[str],
                  manifest: dict[str, Any] | None, horizon: tuple[float, float],
                  ) -> tuple[dict[str, ClockFit], list[str]]:
    """Node fits to the reference node, and warnings. Groups of a deployment share no collective:
    each is fitted on its own anchors against its own first node, then placed as a whole by the KV
    handoffs between groups (handoff.py, read from one rank file per node), else by the clock probe
    (or, without one, the launch's preflight clock measurement)."""
    groups: dict[str | None, list[str]] = {}
    for i in ranks:
        members = groups.setdefault(files[i].group, [])
        if files[i].node_name not in members:
            members.append(files[i].node_name)
    if len(groups) < 2:
        return solve(times, reference, t0, probes, all_nodes, horizon)
    group_fits: dict[str, dict[str, ClockFit]] = {}
    notes: list[str] = []
    for group, members in groups.items():
        head = reference if reference in members else members[0]
        fits, found = solve(times, head, t0, probes, members, horizon)
        group_fits[str(group)] = fits
        notes += found
    first: dict[str, int] = {}
    for i in ranks:
        first.setdefault(files[i].node_name, i)
    handoffs = {node: read_handoffs(files[i].path, scanned[i].base_ns) for node, i in first.items()}
    empty = np.zeros((0, 2))

    launch = launch_measurements(manifest, files)

    def probed(n: str, m: str) -> tuple[float, float] | None:
        """theta_m - theta_n from the clock probe, else from the launch's preflight measurement."""
        rows = probe_rows(probes, n, m, t0, reference)
        if rows is not None:
            fit = fit_pair(PairRows(empty, empty, empty, 0, []), rows, f"{n}<->{m}")
            if fit.method != "refused":
                return fit.a, fit.uncertainty_ns
        if n in launch and m in launch:
            return launch[m][0] - launch[n][0], launch[m][1] + launch[n][1]
        return None

    reference_group = str(next(g for g, members in groups.items() if reference in members))
    fits, unplaced = place_groups(group_fits, handoffs, reference_group, probed)
    for group, why in unplaced.items():
        for node in group_fits[group]:
            fits[node] = ClockFit.left_alone(node, t0, why)
    for node in all_nodes:
        if node not in fits:
            why = "no rank trace of its group on it"
            fits[node] = ClockFit.left_alone(node, t0, why)
    return fits, notes


def _window(scanned: list[Scanned], ref: Scanned, fit: ClockFit, base: int, opts: MergeOptions) -> tuple[int, int] | None:
    """The cut, as output-relative ns, from a ms window or a step range on the reference rank."""
    def out(c: int) -> int:
        return int(fit.correct(np.array([c]))[0]) - base

    if opts.window_ms is not None:
        if ref.span is None and not ref.anchors:
            raise MagpieError(f"{ref.file.path}: no profiler span or collectives to measure the window from")
        origin = ref.span[0] if ref.span else min(a.start for a in ref.anchors)
        lo, hi = opts.window_ms
        return out(origin) + int(lo * 1e6), out(origin) + int(hi * 1e6)
    if opts.steps is not None:
        first, last = opts.steps
        if last >= len(ref.steps):
            raise MagpieError(f"{ref.file.path}: has {len(ref.steps)} step annotations; steps {first}..{last} asked")
        return out(ref.steps[first].start), out(ref.steps[last].end)
    return None


def _node_reports(fits: dict[str, ClockFit], times: NodeTimes, reference: str) -> dict[str, dict[str, Any]]:
    """Per node: the fit, what placed it, its interval, plus residuals against the reference."""
    out: dict[str, dict[str, Any]] = {}
    for node, fit in fits.items():
        lo, hi = fit.interval_ns
        out[node] = {
            "offset_ns": round(fit.offset_ns, 1), "drift_ppm": round(fit.drift_ppm, 4), "t0_ns": fit.t0_ns,
            "method": fit.method, "aligned": fit.aligned, "placed_by": fit.placed_by, "n_anchors": fit.n_anchors,
            "uncertainty_us": round(fit.uncertainty_ns / 1e3, 3) if np.isfinite(fit.uncertainty_ns) else None,
            "interval_us": [round(lo / 1e3, 3), round(hi / 1e3, 3)] if np.isfinite(lo) and np.isfinite(hi) else None,
            "reference": fit.reference, "warnings": fit.warnings,
        }
        if fit.unaligned:
            out[node]["unaligned"] = fit.unaligned
        if node in times.nodes and fit.aligned:
            found = residuals(times, fit, reference)
            if found:
                out[node]["residuals"] = found
    return out


def _priors(files: list[TraceFile], ranks: list[int], probes: dict[str, list[ProbePoint]]) -> dict[tuple[int, int], Prior]:
    """Per pair of rank files on two probed nodes: the interval the probe puts theta(g) - theta(f) in."""
    out: dict[tuple[int, int], Prior] = {}
    for f in ranks:
        for g in ranks:
            pf, pg = probes.get(files[f].node_name), probes.get(files[g].node_name)
            if f == g or not pf or not pg or files[f].node_name == files[g].node_name:
                continue
            lows = [b.offset_ns - a.offset_ns - a.uncertainty_ns - b.uncertainty_ns for a, b in zip(pf, pg)]
            highs = [b.offset_ns - a.offset_ns + a.uncertainty_ns + b.uncertainty_ns for a, b in zip(pf, pg)]
            out[(f, g)] = Prior(min(lows), max(highs))
    return out


def merge(input_dir: Path, output_dir: Path, options: MergeOptions | None = None) -> MergeResult:
    """Merge every trace in `input_dir` into `output_dir` (see the module docstring).

    Everything is written into a hidden folder inside `output_dir` first and moved into place only
    when all of it is complete (alignment.json last), so a failure (bad input, a full disk) leaves
    the folder as it was, with no temp file."""
    opts = options or MergeOptions()
    started = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise MagpieError(f"{output_dir}: the output folder must not be the input folder")
    files, manifest = discover(input_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".magpie-merge-", dir=output_dir))
    except OSError as exc:
        raise MagpieError(f"{output_dir}: cannot write the merge there ({exc.strerror})") from None
    try:
        result = _merge(files, manifest, output_dir, work, opts, started)
        _publish(work, output_dir, result)
        return result
    except OSError as exc:
        where = exc.filename or output_dir
        raise MagpieError(f"{where}: {exc.strerror or exc}; nothing was written to {output_dir}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, output_dir: Path, result: MergeResult) -> None:
    """Move the finished outputs from `work` into `output_dir`: the previous alignment.json goes
    first and the new one comes last, so a folder with an alignment.json is always complete."""
    (output_dir / "alignment.json").unlink(missing_ok=True)
    for name in ("aligned", "unaligned", "events"):
        if (output_dir / name).exists():
            (output_dir / name).rename(work / f"old-{name}")
    staged = sorted(p for p in work.iterdir() if not p.name.startswith(("old-", ".")) and p.suffix != ".part")
    for path in staged:
        if path.name != "alignment.json":
            os.replace(path, output_dir / path.name)
    if (work / "alignment.json").exists():
        os.replace(work / "alignment.json", output_dir / "alignment.json")

    result.outputs = {key: _relocate(value, work, output_dir) for key, value in result.outputs.items()}


def _merge(files: list[TraceFile], manifest: dict[str, Any] | None, output_dir: Path, work: Path,
           opts: MergeOptions, started: float) -> MergeResult:
    try:
        if opts.jobs == 1:  # one buffer for all: growing it file by file costs fresh pages each time
            SCRATCH.at_least(max(size_hint(tf.path) for tf in files) + 1)
        scanned = _run(scan, files, opts.jobs)
    finally:
        SCRATCH.release()  # pass 2 and the caller's process get the memory back, also after bad input
    files = [sc.file for sc in scanned]  # workers return their own (updated) copies
    for sc in scanned:
        if sc.file.own_label is not None and sc.host:  # raw engine files: one clock per host
            sc.file.node_name = sc.host
    _resolve_ranks(scanned)
    warnings: list[str] = [f"{tf.path.name}: {note}" for tf in files for note in tf.notes]
    # Ranks first, by global rank; a deployment of groups (each numbering its own ranks) in node
    # order, so the reference is the first node's clock, as for one server.
    order = sorted(range(len(files)), key=lambda i: (
        files[i].kind != "rank", (files[i].node or 0) if files[i].group else 0, files[i].global_rank or 0, i))
    ranks = [i for i in order if files[i].kind == "rank"]
    if not ranks:
        raise TraceError(f"{files[0].path.parent}: no rank traces (only API-server or unknown traces)")
    nodes = list(dict.fromkeys(files[i].node_name for i in ranks))
    all_nodes = list(dict.fromkeys(files[i].node_name for i in order))
    reference = opts.reference_node or files[ranks[0]].node_name
    if reference not in nodes:
        raise MagpieError(f"reference node {reference!r} is not one of {nodes}")
    probes = manifest_probes(manifest, files)
    places = {i: Place(files[i].node_name, files[i].dp_rank or 0, files[i].pp_rank or 0,
                       files[i].tp_rank, files[i].global_rank) for i in ranks}
    matching = _match_groups(files, ranks, {i: scanned[i].anchors for i in ranks}, places,
                             _priors(files, ranks, probes))
    warnings += [f"not matched: {reason}" for reason in matching.refused]
    matched = Matched.of(matching.collectives)

    def origin(node: str) -> tuple[int, int]:
        """(the node's first rank file, t0: the first anchor's start on it, else its profiler span's or
        first step's, else the first clock probe's: a time of the capture, so offsets at t0 read sensibly)."""
        first = next(i for i in ranks if files[i].node_name == node)
        sc = scanned[first]
        if sc.anchors:
            return first, min(a.start for a in sc.anchors)
        if sc.span or sc.steps:
            return first, sc.span[0] if sc.span else sc.steps[0].start
        return first, min((p.t_ns for points in probes.values() for p in points), default=0)

    ref_file, t0 = origin(reference)
    times = NodeTimes.build(matched, {i: files[i].node_name for i in ranks}, nodes, t0)
    conflict = two_clocks(times)
    if reference in conflict and not opts.reference_node and set(nodes) - set(conflict):
        # Files of two clocks under the first node's name: it can be no one's reference.
        reference = next(n for n in nodes if n not in conflict)
        ref_file, t0 = origin(reference)
        times = NodeTimes.build(matched, {i: files[i].node_name for i in ranks}, nodes, t0)
    on_ref = [scanned[i] for i in ranks if files[i].node_name == reference]  # one clock: the reference's
    extent = [t for sc in on_ref for t in ([*sc.span] if sc.span else [])] + [
        t for sc in on_ref for a in [*sc.anchors[:1], *sc.anchors[-1:], *sc.steps[:1], *sc.steps[-1:]]
        for t in (a.start, a.end)]
    horizon = ((min(extent) - t0) / 1e9, (max(extent) - t0) / 1e9) if extent else (0.0, 0.0)
    fits, notes = _solve_groups(files, scanned, ranks, times, reference, t0, probes, all_nodes, manifest,
                                horizon)
    warnings += notes
    durations = matched.end - matched.start
    typical = float(np.median(durations)) if len(durations) else None
    for node, fit in fits.items():
        if fit.aligned and not fit.reference and typical and fit.uncertainty_ns > typical:
            fit.warnings.append(f"{node}: placed to +-{fit.uncertainty_ns / 1e3:.1f} us, more than the median "
                                f"collective ({typical / 1e3:.1f} us): do not read cross-node gaps shorter than that")
        warnings.extend(fit.warnings)
    bases = [sc.base_ns for sc in scanned if sc.base_ns is not None]
    if bases:
        base_out = min(bases)
    else:
        first = min((sc.span[0] for sc in scanned if sc.span), default=t0)
        base_out = (first // TRIMONTH_NS) * TRIMONTH_NS
    window = _window(scanned, scanned[ref_file], fits[reference], base_out, opts)
    node_reports = _node_reports(fits, times, reference)

    jobs = []
    for k, i in enumerate(order):
        sc, tf, fit = scanned[i], files[i], fits[files[i].node_name]
        meta = {"source": tf.path.name, "node": tf.node_name, "label": tf.label, "group": tf.group,
                "global_rank": tf.global_rank,
                "clock_offset_ns": round(fit.offset_ns, 1), "clock_drift_ppm": fit.drift_ppm, "t0_ns": fit.t0_ns,
                "method": fit.method, "reference_node": reference}
        folder = work / ("aligned" if fit.aligned else "unaligned")
        jobs.append(RewriteJob(
            index=k, n_files=len(order), label=tf.label, source=tf.path, events=sc.events, top=sc.top,
            values=sc.values,
            has_base=sc.base_ns is not None,
            transform=Transform(sc.base_ns or 0, base_out, fit.offset_ns, fit.drift_ppm, fit.t0_ns),
            meta_cuts=sc.meta_cuts, process_names=sc.process_names,
            aligned_path=folder / tf.output_name() if "aligned" in opts.outputs else None,
            merged_part=work / f"{i}.part" if "merged" in opts.outputs and fit.aligned else None,
            window=window, alignment_meta=meta,
        ))
        if "aligned" in opts.outputs:
            folder.mkdir(exist_ok=True)
    results: list[RewriteResult] = []
    if "aligned" in opts.outputs or "merged" in opts.outputs:
        results = _run(rewrite, jobs, opts.jobs)
    if window is not None and results and not any(r.events_timed for r in results):
        raise MagpieError(f"the window {window[0] / 1e6:.3f}..{window[1] / 1e6:.3f} ms after the common base "
                          "holds no event of any trace (it lies wholly outside them)")
    outputs: dict[str, Any] = {}
    if "aligned" in opts.outputs:
        for job in jobs:
            outputs.setdefault(job.aligned_path.parent.name, []).append(str(job.aligned_path))  # type: ignore[union-attr]
    if "tables" in opts.outputs:
        frame = tables.collectives_frame(matched, files, fits, base_out)
        outputs["tables"] = [str(p) for p in tables.write(frame, work, "collectives")]
        outputs["tables"] += [str(p) for p in tables.write(tables.nodes_frame(frame), work, "nodes")]
    if "events" in opts.outputs:
        from magpie_trace.analyze.store import build_events  # analyze reads merge's modules: imported late

        files_doc = [{"file": files[i].path.name, "kind": files[i].kind, "label": files[i].label,
                      "node": files[i].node_name, "global_rank": files[i].global_rank,
                      "aligned": jobs[k].aligned_path.name} for k, i in enumerate(order)]  # type: ignore[union-attr]
        info = build_events(work, {"files": files_doc, "nodes": node_reports, "reference_node": reference,
                                   "base_time_ns": base_out}, jobs=opts.jobs, annotate=True)
        outputs["events"] = str(info.folder)
    if "merged" in opts.outputs:
        merged_path = work / "merged.trace.json.gz"
        summary = {"reference_node": reference, "base_time_ns": base_out,
                   "nodes": {n: {k: r[k] for k in ("offset_ns", "drift_ppm", "method", "n_anchors", "aligned")}
                             for n, r in node_reports.items()}}
        head = b'{"traceEvents": ['
        tail = (b'], "displayTimeUnit": "ms", "baseTimeNanoseconds": ' + str(base_out).encode()
                + b', "magpie_trace": ' + orjson.dumps(summary) + b"}")
        parts: list[tuple[Path | bytes, int, int]] = [gzipjoin.deflate(head)]
        first_part = True
        for res in (r.merged for r in results):
            if res is not None:
                if not first_part:
                    parts.append(gzipjoin.deflate(b","))
                first_part = False
                parts.append(res)
        extras = _perfetto_extras(jobs, scanned, order, results, node_reports, work if "events" in opts.outputs else None)
        if extras:
            parts.append(gzipjoin.deflate((b"" if first_part else b",") + b",".join(extras)))
        parts.append(gzipjoin.deflate(tail))
        gzipjoin.join(parts, merged_path)
        outputs["merged"] = str(merged_path)
    file_reports = []
    for k, i in enumerate(order):
        tf, sc = files[i], scanned[i]
        file_reports.append({
            "file": tf.path.name, "kind": tf.kind, "label": tf.label, "node": tf.node_name,
            "group": tf.group, "global_rank": tf.global_rank, "anchors": len(sc.anchors),
            "anchor_kind": ("gpu" if any(a.gpu for a in sc.anchors) else "cpu") if sc.anchors else None,
            "format": "relative" if sc.base_ns is not None else "absolute", "uncompressed_bytes": sc.size,
            "aligned": jobs[k].aligned_path.name if jobs[k].aligned_path else None,
            "events_kept": results[k].events_kept if results else None,
        })
    aligned_ranks = [files[i] for i in ranks if fits[files[i].node_name].aligned]
    tracelens = None
    if "aligned" in opts.outputs and aligned_ranks:
        # Groups of a deployment number their own ranks and share no collective: a report each.
        commands = []
        for group in dict.fromkeys(tf.group for tf in aligned_ranks):
            mine = [tf for tf in aligned_ranks if tf.group == group]
            per_node = Counter(tf.node_name for tf in mine)
            pattern = f"*-{group}-rank*.trace.json.gz" if group else "*rank*.trace.json.gz"
            commands.append(shlex.join([
                TRACELENS_REPORT, "--trace_glob", str(output_dir / "aligned" / pattern),
                "--world_size", str(len(mine)), "--gpus_per_node", str(max(per_node.values())),
            ]))
        tracelens = " && ".join(commands)
    result = MergeResult(
        output_dir=output_dir, files=file_reports, nodes=node_reports, reference_node=reference,
        base_time_ns=base_out, collectives=len(matched.streams), window_ns=window, outputs=outputs,
        warnings=list(dict.fromkeys(warnings)), input_bytes=sum(sc.size for sc in scanned),
        seconds=round(time.perf_counter() - started, 3), tracelens_command=tracelens,
    )
    if "alignment" in opts.outputs:
        path = work / "alignment.json"
        result.outputs["alignment"] = str(path)
        doc = {"schema": ALIGNMENT_SCHEMA, **result.to_dict()}
        doc["outputs"] = {key: _relocate(value, work, output_dir) for key, value in result.outputs.items()}
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return result


def _perfetto_extras(jobs: list[RewriteJob], scanned: list[Scanned], order: list[int], results: list[RewriteResult],
                     node_reports: dict[str, dict[str, Any]], events_dir: Path | None) -> list[bytes]:
    """The merged file's process names, sort indexes and clock labels, and (from the events table,
    when it was built) the flows linking each matched collective across ranks (perfetto.py)."""
    rank_of = {k: scanned[i].file.global_rank for k, i in enumerate(order)}
    gpu_pids: list[set[str]] = [set() for _ in order]
    members: list[tuple[int, int, str, str, int, int]] = []
    if events_dir is not None and (events_dir / "events").is_dir():
        k_of = {rank: k for k, rank in rank_of.items() if rank is not None}
        table = pl.scan_parquet(events_dir / "events" / "rank[0-9]*.parquet").select(
            "rank", "pid", "tid", "device", "start_ns", "end_ns", "collective")
        for rank, pid in table.filter(pl.col("device") == "gpu").select("rank", "pid").unique().collect().iter_rows():
            gpu_pids[k_of[rank]].add(pid)
        linked = table.filter(pl.col("collective").is_not_null()).sort("collective", "rank").collect()
        for cid, rank, pid, tid, start, end in linked.select(
                "collective", "rank", "pid", "tid", "start_ns", "end_ns").iter_rows():
            members.append((cid, k_of[rank], pid, tid, start, end))
    pids = [r.pids for r in results]
    clocks = [perfetto.clock_label(node_reports.get(scanned[i].file.node_name, {})) for i in order]
    return (perfetto.process_events([j.label for j in jobs], [scanned[i].process_names for i in order], pids, gpu_pids,
                                    clocks)
            + perfetto.collective_flows(members, pids))


def _relocate(value: Any, work: Path, output_dir: Path) -> Any:
    """A path inside the staging folder, as it will be once published."""
    if isinstance(value, list):
        return [_relocate(v, work, output_dir) for v in value]
    if isinstance(value, str) and value.startswith(str(work)):
        return str(output_dir / Path(value).relative_to(work))
    return value


__all__ = ["DEFAULT_OUTPUTS", "OUTPUTS", "MergeOptions", "MergeResult", "merge"]
