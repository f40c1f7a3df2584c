"""Tables of matched collectives on the aligned timeline, and a per-node summary, as Parquet + CSV.

`collectives`: one row per (collective, rank): aligned start/end, duration, wait (how long this rank
waited for the last one to arrive), the collective's arrival and end skew, and which node/rank
arrived last. `nodes`: per node, communication time, waiting time and how often it was the straggler.
Times are microseconds relative to the outputs' common baseTimeNanoseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from magpie_trace.fsutil import temp_path_for
from magpie_trace.merge.align import ClockFit
from magpie_trace.merge.anchors import Collective
from magpie_trace.merge.discover import TraceFile

COLLECTIVE_COLUMNS = {
    "collective": pl.Int64, "process_group": pl.Utf8, "family": pl.Utf8, "index": pl.Int64, "name": pl.Utf8,
    "node": pl.Utf8, "file": pl.Utf8, "label": pl.Utf8, "global_rank": pl.Int64, "start_us": pl.Float64,
    "end_us": pl.Float64, "duration_us": pl.Float64, "wait_us": pl.Float64, "arrival_skew_us": pl.Float64,
    "end_skew_us": pl.Float64, "last_arrival_node": pl.Utf8, "last_arrival_rank": pl.Int64,
    "is_last_arrival": pl.Boolean,
}


def collectives_frame(collectives: list[Collective], files: list[TraceFile], fits: dict[str, ClockFit],
                      base_ns: int) -> pl.DataFrame:
    cid, fidx, index, start, end, names = [], [], [], [], [], []
    for k, c in enumerate(collectives):
        for f, a in c.members.items():
            cid.append(k)
            fidx.append(f)
            index.append(c.index)
            start.append(a.start)
            end.append(a.end)
            names.append(a.name)
    fidx_a = np.array(fidx, dtype=np.int64)
    start_a = np.array(start, dtype=np.int64)
    end_a = np.array(end, dtype=np.int64)
    for f, tf in enumerate(files):
        sel = fidx_a == f
        if sel.any():
            fit = fits[tf.node_name]
            start_a[sel] = fit.correct(start_a[sel])
            end_a[sel] = fit.correct(end_a[sel])
    streams = [collectives[k].stream for k in cid]
    frame = pl.DataFrame({
        "collective": cid, "process_group": [s[0] for s in streams], "family": [s[1] for s in streams],
        "index": index, "name": names, "node": [files[f].node_name for f in fidx],
        "file": [files[f].path.name for f in fidx], "label": [files[f].label for f in fidx],
        "global_rank": [files[f].global_rank for f in fidx],
        "start_us": (start_a - base_ns) / 1e3, "end_us": (end_a - base_ns) / 1e3,
    }, schema_overrides={"global_rank": pl.Int64, "collective": pl.Int64, "index": pl.Int64})
    by = pl.col("collective")
    frame = frame.with_columns(
        (pl.col("end_us") - pl.col("start_us")).alias("duration_us"),
        (pl.col("start_us").max().over(by) - pl.col("start_us")).alias("wait_us"),
        (pl.col("start_us").max().over(by) - pl.col("start_us").min().over(by)).alias("arrival_skew_us"),
        (pl.col("end_us").max().over(by) - pl.col("end_us").min().over(by)).alias("end_skew_us"),
        pl.col("node").sort_by("start_us").last().over(by).alias("last_arrival_node"),
        pl.col("global_rank").sort_by("start_us").last().over(by).alias("last_arrival_rank"),
    ).with_columns((pl.col("global_rank") == pl.col("last_arrival_rank")).alias("is_last_arrival"))
    return frame.select(list(COLLECTIVE_COLUMNS)).sort(["collective", "global_rank"])


def nodes_frame(table: pl.DataFrame) -> pl.DataFrame:
    per_node = table.group_by("node").agg(
        pl.col("global_rank").n_unique().alias("ranks"),
        pl.col("collective").n_unique().alias("collectives"),
        (pl.col("duration_us").sum() / pl.col("global_rank").n_unique()).alias("comm_time_per_rank_us"),
        (pl.col("wait_us").sum() / pl.col("global_rank").n_unique()).alias("wait_time_per_rank_us"),
        pl.col("wait_us").median().alias("median_wait_us"),
    )
    stragglers = (
        table.filter(pl.col("is_last_arrival")).group_by("node").agg(pl.len().alias("times_last_to_arrive"))
    )
    return (
        per_node.join(stragglers, on="node", how="left")
        .with_columns(pl.col("times_last_to_arrive").fill_null(0).cast(pl.Int64))
        .sort("node")
    )


def write(table: pl.DataFrame, out_dir: Path, stem: str) -> list[Path]:
    """`<stem>.parquet` and `<stem>.csv`, each written atomically."""
    paths = []
    for suffix, writer in ((".parquet", table.write_parquet), (".csv", table.write_csv)):
        path = out_dir / f"{stem}{suffix}"
        tmp = temp_path_for(path)
        writer(tmp)
        tmp.replace(path)
        paths.append(path)
    return paths
