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
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from magpie_trace.errors import MagpieError, TraceError
from magpie_trace.fsutil import atomic_write_bytes, temp_path_for
from magpie_trace.merge import gzipjoin, tables
from magpie_trace.merge.align import ClockFit, NodeTimes, residuals, solve
from magpie_trace.merge.anchors import Matched, match
from magpie_trace.merge.discover import TraceFile, discover, manifest_offsets
from magpie_trace.merge.handoff import place_groups, read_handoffs
from magpie_trace.merge.load import SCRATCH, Scanned, scan, size_hint
from magpie_trace.merge.rewrite import RewriteJob, RewriteResult, Transform, rewrite

OUTPUTS = ("aligned", "merged", "tables", "alignment")
TRIMONTH_NS = 7_889_238 * 10**9  # Kineto floors baseTimeNanoseconds to this period
ALIGNMENT_SCHEMA = "magpie-trace/alignment/1"
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class MergeOptions:
    """What to write and how.

    window_ms: (start, end) in ms from the start of the reference rank's profiling window, on the
    aligned timeline; every rank is cut at the same instants. steps: (first, last) indices of the
    reference rank's step annotations (ProfilerStep#N / vLLM execute_* / SGLang step[...]), inclusive.
    """

    outputs: tuple[str, ...] = OUTPUTS
    jobs: int = 1
    window_ms: tuple[float, float] | None = None
    steps: tuple[int, int] | None = None
    reference_node: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.outputs) - set(OUTPUTS)
        if unknown:
            raise MagpieError(f"unknown output(s) {sorted(unknown)}; choose from {', '.join(OUTPUTS)}")
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


def _solve_groups(files: list[TraceFile], scanned: list[Scanned], ranks: list[int], times: NodeTimes,
                  reference: str, t0: int, manifest: dict[str, Any] | None,
                  ) -> tuple[dict[str, ClockFit], list[str]]:
    """Node fits to the reference node. Groups of a deployment share no collective: each is fitted
    on its own collectives, then placed by the KV handoffs between groups (handoff.py), read from
    one rank file per node; a group no handoff reaches, by the launch's clock measurement."""
    groups: dict[str | None, list[str]] = {}
    for i in ranks:
        members = groups.setdefault(files[i].group, [])
        if files[i].node_name not in members:
            members.append(files[i].node_name)
    if len(groups) < 2:
        fits, _pairs, missing = solve(times, reference, t0)
        return fits, missing
    group_fits: dict[str, dict[str, ClockFit]] = {}
    missing: list[str] = []
    for group, members in groups.items():
        head = reference if reference in members else members[0]
        fits, _pairs, lost = solve(times, head, t0)
        group_fits[str(group)] = {node: fits[node] for node in members if node in fits}
        missing += [node for node in lost if node in members]
    first = {}
    for i in ranks:
        first.setdefault(files[i].node_name, i)
    handoffs = {node: read_handoffs(files[i].path, scanned[i].base_ns) for node, i in first.items()}
    reference_group = str(next(g for g, members in groups.items() if reference in members))
    offsets, rtts = manifest_offsets(manifest), manifest_offsets(manifest, "clock_rtts_ns")
    measured = {}
    for i in ranks:
        key = str(files[i].node)
        if key in offsets and key in rtts:
            measured[files[i].node_name] = (float(offsets[key]), rtts[key] / 2)
    fits, unplaced = place_groups(group_fits, handoffs, reference_group, measured)
    if unplaced:
        lonely = next(i for i in ranks if str(files[i].group) == unplaced[0])
        raise TraceError(f"{files[lonely].path}: its group {unplaced[0]} shares no KV handoff with "
                         f"group {reference_group} and has no launch clock measurement (collect's "
                         "manifest.json): it cannot be aligned")
    return fits, missing


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
    """Per node: the fit, plus residuals against the reference after correction."""
    out: dict[str, dict[str, Any]] = {}
    for node, fit in fits.items():
        out[node] = {
            "offset_ns": round(fit.offset_ns, 1), "drift_ppm": round(fit.drift_ppm, 4), "t0_ns": fit.t0_ns,
            "method": fit.method, "n_anchors": fit.n_anchors, "uncertainty_us": round(fit.uncertainty_ns / 1e3, 3),
            "reference": fit.reference, "warnings": fit.warnings,
        }
        if node in times.nodes:
            found = residuals(times, fit, reference)
            if found:
                out[node]["residuals"] = found
    return out


def merge(input_dir: Path, output_dir: Path, options: MergeOptions | None = None) -> MergeResult:
    """Merge every trace in `input_dir` into `output_dir` (see the module docstring)."""
    opts = options or MergeOptions()
    started = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise MagpieError(f"{output_dir}: the output folder must not be the input folder")
    files, manifest = discover(input_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".magpie-merge-", dir=output_dir))
    try:
        return _merge(files, manifest, output_dir, work, opts, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _merge(files: list[TraceFile], manifest: dict[str, Any] | None, output_dir: Path, work: Path,
           opts: MergeOptions, started: float) -> MergeResult:
    try:
        if opts.jobs == 1:  # one buffer for all: growing it file by file costs fresh pages each time
            SCRATCH.at_least(max(size_hint(tf.path) for tf in files) + 1)
        scanned = _run(scan, files, opts.jobs)
    finally:
        SCRATCH.release()  # pass 2 and the caller's process get the memory back, also after bad input
    files = [sc.file for sc in scanned]  # workers return their own (updated) copies
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
    reference = opts.reference_node or files[ranks[0]].node_name
    if reference not in nodes:
        raise MagpieError(f"reference node {reference!r} is not one of {nodes}")
    node_of = {i: files[i].node_name for i in ranks}
    priors = manifest_offsets(manifest)
    anchors = {i: scanned[i].anchors for i in ranks}
    group_of = {i: (files[i].group, files[i].dp_rank, files[i].pp_rank) for i in ranks}
    prior = {i: float(priors.get(str(files[i].node), priors.get(files[i].node_name, 0))) for i in ranks}
    matched = Matched.of(match(anchors, group_of, prior))
    ref_file = next(i for i in ranks if files[i].node_name == reference)
    ref_anchor_starts = [a.start for a in scanned[ref_file].anchors]
    t0 = min(ref_anchor_starts) if ref_anchor_starts else (scanned[ref_file].span or (0, 0))[0]
    times = NodeTimes.build(matched, node_of, nodes, t0)
    fits, missing = _solve_groups(files, scanned, ranks, times, reference, t0, manifest)
    if missing:
        lonely = next(i for i in ranks if files[i].node_name == missing[0])
        raise TraceError(f"{files[lonely].path}: shares no collective with {files[ref_file].path.name} "
                         f"(node {missing[0]} cannot be aligned)")
    for node in {tf.node_name for tf in files} - set(fits):
        fits[node] = ClockFit(node, 0.0, 0.0, t0, "none", 0, 0.0,
                              warnings=[f"{node}: no collectives; left on its own clock"])
        warnings.append(f"{node}: no rank trace shares its clock; left unaligned")
    for fit in fits.values():
        warnings.extend(fit.warnings)
    bases = [sc.base_ns for sc in scanned if sc.base_ns is not None]
    if bases:
        base_out = min(bases)
    else:
        first = min((sc.span[0] for sc in scanned if sc.span), default=t0)
        base_out = (first // TRIMONTH_NS) * TRIMONTH_NS
    window = _window(scanned, scanned[ref_file], fits[reference], base_out, opts)
    node_reports = _node_reports(fits, times, reference)

    aligned_dir = output_dir / "aligned"
    if "aligned" in opts.outputs:
        aligned_dir.mkdir(exist_ok=True)
    jobs = []
    for k, i in enumerate(order):
        sc, tf, fit = scanned[i], files[i], fits[files[i].node_name]
        meta = {"source": tf.path.name, "node": tf.node_name, "label": tf.label, "group": tf.group,
                "global_rank": tf.global_rank,
                "clock_offset_ns": round(fit.offset_ns, 1), "clock_drift_ppm": fit.drift_ppm, "t0_ns": fit.t0_ns,
                "method": fit.method, "reference_node": reference}
        jobs.append(RewriteJob(
            index=k, n_files=len(order), label=tf.label, source=tf.path, events=sc.events, top=sc.top,
            values=sc.values,
            has_base=sc.base_ns is not None,
            transform=Transform(sc.base_ns or 0, base_out, fit.offset_ns, fit.drift_ppm, fit.t0_ns),
            meta_cuts=sc.meta_cuts, process_names=sc.process_names,
            aligned_path=aligned_dir / tf.output_name() if "aligned" in opts.outputs else None,
            merged_part=work / f"{i}.part" if "merged" in opts.outputs else None,
            window=window, alignment_meta=meta,
        ))
    results: list[RewriteResult] = []
    if "aligned" in opts.outputs or "merged" in opts.outputs:
        results = _run(rewrite, jobs, opts.jobs)
    outputs: dict[str, Any] = {}
    if "aligned" in opts.outputs:
        outputs["aligned"] = [str(j.aligned_path) for j in jobs]
    if "merged" in opts.outputs:
        merged_path = output_dir / "merged.trace.json.gz"
        summary = {"reference_node": reference, "base_time_ns": base_out,
                   "nodes": {n: {k: r[k] for k in ("offset_ns", "drift_ppm", "method", "n_anchors")}
                             for n, r in node_reports.items()}}
        head = b'{"traceEvents": ['
        tail = (b'], "displayTimeUnit": "ms", "baseTimeNanoseconds": ' + str(base_out).encode()
                + b', "magpie_trace": ' + orjson.dumps(summary) + b"}")
        parts: list[tuple[Path | bytes, int, int]] = [gzipjoin.deflate(head)]
        for n, res in enumerate(r.merged for r in results):
            if res is not None:
                if n:
                    parts.append(gzipjoin.deflate(b","))
                parts.append(res)
        parts.append(gzipjoin.deflate(tail))
        tmp = temp_path_for(merged_path)
        gzipjoin.join(parts, tmp)
        os.replace(tmp, merged_path)
        outputs["merged"] = str(merged_path)
    if "tables" in opts.outputs:
        frame = tables.collectives_frame(matched, files, fits, base_out)
        outputs["tables"] = [str(p) for p in tables.write(frame, output_dir, "collectives")]
        outputs["tables"] += [str(p) for p in tables.write(tables.nodes_frame(frame), output_dir, "nodes")]
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
    result = MergeResult(
        output_dir=output_dir, files=file_reports, nodes=node_reports, reference_node=reference,
        base_time_ns=base_out, collectives=len(matched.streams), window_ns=window, outputs=outputs,
        warnings=list(dict.fromkeys(warnings)), input_bytes=sum(sc.size for sc in scanned),
        seconds=round(time.perf_counter() - started, 3),
    )
    if "alignment" in opts.outputs:
        path = output_dir / "alignment.json"
        doc = {"schema": ALIGNMENT_SCHEMA, **result.to_dict()}
        atomic_write_bytes(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        result.outputs["alignment"] = str(path)
    return result


__all__ = ["OUTPUTS", "MergeOptions", "MergeResult", "merge"]
