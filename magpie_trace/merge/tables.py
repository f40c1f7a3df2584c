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
from magpie_trace.merge.anchors import Matched
from magpie_trace.merge.discover import TraceFile

COLLECTIVE_COLUMNS = {
    "collective": pl.Int64, "process_group": pl.Utf8, "family": pl.Utf8, "index": pl.Int64, "name": pl.Utf8,
    "node": pl.Utf8, "file": pl.Utf8, "label": pl.Utf8, "global_rank": pl.Int64, "start_us": pl.Float64,
    "end_us": pl.Float64, "duration_us": pl.Float64, "wait_us": pl.Float64, "arrival_skew_us": pl.Float64,
    "end_skew_us": pl.Float64, "last_arrival_node": pl.Utf8, "last_arrival_rank": pl.Int64,
    "is_last_arrival": pl.Boolean,
}


def collectives_frame(matched: Matched, files: list[TraceFile], fits: dict[str, ClockFit],
                      base_ns: int) -> pl.DataFrame:
    start, end = matched.start.copy(), matched.end.copy()
    for f in np.unique(matched.file).tolist():
        sel = matched.file == f
        fit = fits[files[f].node_name]
        start[sel] = fit.correct(start[sel])
        end[sel] = fit.correct(end[sel])
    per_collective = pl.DataFrame({
        "collective": np.arange(len(matched.streams), dtype=np.int64),
        "process_group": [s[0] for s in matched.streams], "family": [s[1] for s in matched.streams],
        "index": matched.indices,
    }, schema_overrides={"index": pl.Int64, "process_group": pl.Utf8, "family": pl.Utf8})
    per_file = pl.DataFrame({
        "file_index": np.arange(len(files), dtype=np.int64), "node": [tf.node_name for tf in files],
        "file": [tf.path.name for tf in files], "label": [tf.label for tf in files],
        "global_rank": [tf.global_rank for tf in files],
    }, schema_overrides={"global_rank": pl.Int64})
    frame = pl.DataFrame({
        "collective": matched.collective, "file_index": matched.file,
        "name": pl.Series(matched.names, dtype=pl.Utf8),
        "start_us": (start - base_ns) / 1e3, "end_us": (end - base_ns) / 1e3,
    }).join(per_collective, on="collective", how="left").join(per_file, on="file_index", how="left")
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
