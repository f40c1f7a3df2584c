"""The events folder of a merge: `MERGED/events/` with one Parquet file per rank, the ranks' step
windows and what the merge knows about each rank.

    events/rank<G>.parquet   one row per duration event (schema: events.SCHEMA, docs/analyze.md)
    events/steps.parquet     one row per (rank, step): the step annotation's name and span
    events/segments.parquet  each rank's timeline cut into compute/comm/memcpy/idle segments (timeline.py)
    events/ranks.parquet     one row per rank: node, label, files, clock offset/drift/uncertainty
    events/meta.json         magpie-trace/events/1: base time, the inputs it was built from

It is built from the merge's outputs only (alignment.json, aligned/, collectives.parquet), so it can
be (re)built at any time; it is rebuilt when those inputs changed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from magpie_trace.analyze.events import (
    SEGMENT_SCHEMA,
    STEP_SCHEMA,
    RankSource,
    build,
    release_buffers,
)
from magpie_trace.errors import MagpieError
from magpie_trace.fsutil import atomic_write_bytes

EVENTS_SCHEMA = "magpie-trace/events/1"
RANK_SCHEMA: dict[str, Any] = {
    "rank": pl.Int32, "node": pl.Utf8, "label": pl.Utf8, "file": pl.Utf8, "source": pl.Utf8,
    "reference_node": pl.Utf8, "aligned": pl.Boolean, "offset_us": pl.Float64, "drift_ppm": pl.Float64,
    "uncertainty_us": pl.Float64,
    "method": pl.Utf8, "domain": pl.Utf8, "events": pl.Int64, "steps": pl.Int64,
}


@dataclass
class EventsInfo:
    folder: Path
    ranks: int
    events: int
    built: bool  # False: the folder was already up to date
    seconds: float


def load_alignment(merged_dir: Path) -> dict[str, Any]:
    path = merged_dir / "alignment.json"
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise MagpieError(f"{merged_dir}: no alignment.json (is this a `magpie-trace merge` output folder?)") from None
    except orjson.JSONDecodeError as exc:
        raise MagpieError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("magpie-trace/alignment/"):
        raise MagpieError(f"{path}: not a magpie-trace alignment file (schema {doc.get('schema')!r})")
    return doc


def _trace_path(merged_dir: Path, name: str) -> Path:
    """A rank's rewritten trace: in aligned/, or in unaligned/ when the merge could not place its node."""
    if Path(name).name != name:
        raise MagpieError(f"{merged_dir / 'alignment.json'}: {name!r} is not a file name")
    for folder in ("aligned", "unaligned"):
        if (merged_dir / folder / name).is_file():
            return merged_dir / folder / name
    raise MagpieError(f"{merged_dir / 'aligned' / name}: rank trace named in alignment.json is missing")


def _rank_files(merged_dir: Path, alignment: dict[str, Any]) -> list[dict[str, Any]]:
    files = [f for f in alignment.get("files", []) if f.get("kind") == "rank" and f.get("aligned")]
    if not files:
        raise MagpieError(f"{merged_dir}: the merge wrote no aligned rank traces (merge with --outputs including "
                          f"aligned)")
    for f in files:
        _trace_path(merged_dir, str(f["aligned"]))
    return files


def _inputs(merged_dir: Path, files: list[dict[str, Any]]) -> list[list[Any]]:
    """What the folder is built from, to tell whether it is stale (name, size, mtime)."""
    paths = [merged_dir / "collectives.parquet", *(_trace_path(merged_dir, str(f["aligned"])) for f in files)]
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append([p.name, st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            out.append([p.name, None, None])
    return out


def is_current(merged_dir: Path) -> bool:
    try:
        meta = orjson.loads((merged_dir / "events" / "meta.json").read_bytes())
        files = _rank_files(merged_dir, load_alignment(merged_dir))
    except (OSError, orjson.JSONDecodeError, MagpieError):
        return False
    return bool(meta.get("schema") == EVENTS_SCHEMA and meta.get("inputs") == _inputs(merged_dir, files))


def _build_one(job: tuple[RankSource, Path]) -> tuple[int, int, str, pl.DataFrame, pl.DataFrame]:
    source, out = job
    tables = build(source)
    tables.events.write_parquet(out, compression="lz4")  # 1.6x faster to write than zstd, 2x the size
    return source.rank, tables.events.height, tables.domain, tables.steps, tables.segments


def write_events(merged_dir: Path, jobs: int = 1, force: bool = False) -> EventsInfo:
    """Build `merged_dir/events/` (see the module docstring) unless it is up to date."""
    merged_dir = Path(merged_dir)
    alignment = load_alignment(merged_dir)
    folder = merged_dir / "events"
    if not force and is_current(merged_dir):
        meta = orjson.loads((folder / "meta.json").read_bytes())
        return EventsInfo(folder, meta["ranks"], meta["events"], False, 0.0)
    return build_events(merged_dir, alignment, jobs)


def build_events(merged_dir: Path, alignment: dict[str, Any], jobs: int = 1, annotate: bool = False) -> EventsInfo:
    """Build `merged_dir/events/` from the merge's files and its alignment (as alignment.json has it:
    `files`, `nodes`, `reference_node`, `base_time_ns`). Written into a temporary folder and swapped
    in, so a reader never sees half of it. `annotate` (the merge, before it publishes): also put each
    matched collective's id into its args in the rank traces."""
    import time

    started = time.perf_counter()
    files = _rank_files(merged_dir, alignment)
    folder = merged_dir / "events"
    collectives = None
    table = merged_dir / "collectives.parquet"
    if table.is_file():
        collectives = pl.read_parquet(table, columns=["collective", "process_group", "name", "global_rank", "start_us"])
    scratch = Path(tempfile.mkdtemp(prefix=".events-", dir=merged_dir))  # private; its content follows the umask
    work = scratch / "events"
    work.mkdir()
    try:
        batch = []
        for f in files:
            rank = int(f["global_rank"])
            mine = collectives.filter(pl.col("global_rank") == rank) if collectives is not None else None
            batch.append((RankSource(_trace_path(merged_dir, str(f["aligned"])), str(f["node"]), rank,
                                     str(f["label"]), mine, annotate), work / f"rank{rank}.parquet"))
        if jobs > 1 and len(batch) > 1:
            # spawn, not fork: a forked child of a process that has run polars' thread pool can deadlock
            with ProcessPoolExecutor(max_workers=min(jobs, len(batch)), mp_context=get_context("spawn")) as pool:
                built = list(pool.map(_build_one, batch))
        else:
            built = [_build_one(job) for job in batch]
            release_buffers()
        counts = {rank: n for rank, n, *_ in built}
        domains = {rank: domain for rank, _, domain, *_ in built}
        steps = pl.concat([b[3] for b in built]) if built else pl.DataFrame(schema=STEP_SCHEMA)
        steps.write_parquet(work / "steps.parquet")
        segments = pl.concat([b[4] for b in built]) if built else pl.DataFrame(schema=SEGMENT_SCHEMA)
        # uncompressed: 3x the size of zstd, but 3.5x cheaper to write and to read for each breakdown
        segments.write_parquet(work / "segments.parquet", compression="uncompressed")
        _ranks_frame(files, alignment, counts, domains, steps).write_parquet(work / "ranks.parquet")
        meta = {"schema": EVENTS_SCHEMA, "base_time_ns": alignment.get("base_time_ns"),
                "reference_node": alignment.get("reference_node"), "ranks": len(built),
                "events": sum(counts.values()), "inputs": _inputs(merged_dir, files)}
        atomic_write_bytes(work / "meta.json", orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        _swap(work, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return EventsInfo(folder, len(built), sum(counts.values()), True, round(time.perf_counter() - started, 3))


def _ranks_frame(files: list[dict[str, Any]], alignment: dict[str, Any], counts: dict[int, int],
                 domains: dict[int, str], steps: pl.DataFrame) -> pl.DataFrame:
    nodes = alignment.get("nodes", {})
    per_rank_steps = dict(steps.group_by("rank").len().iter_rows()) if steps.height else {}
    rows = []
    for f in files:
        node = nodes.get(f["node"], {})
        rank = int(f["global_rank"])
        rows.append({
            "rank": rank, "node": f["node"], "label": f["label"], "file": f["aligned"], "source": f["file"],
            "reference_node": alignment.get("reference_node"), "aligned": node.get("aligned", True),
            "offset_us": node["offset_ns"] / 1e3 if node.get("offset_ns") is not None else None,
            "drift_ppm": node.get("drift_ppm"), "uncertainty_us": node.get("uncertainty_us"),
            "method": node.get("method"), "domain": domains.get(rank), "events": counts.get(rank, 0), "steps": per_rank_steps.get(rank, 0),
        })
    return pl.DataFrame(rows, schema=RANK_SCHEMA).sort("rank")


def _swap(new: Path, folder: Path) -> None:
    """Put `new` where `folder` is: the old folder is moved aside first and removed after."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(new, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
