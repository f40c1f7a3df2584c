"""`magpie-trace analyze` / `query`: where communication is exposed, on which node, and why, as SQL
over the aligned events of a merge.

    from magpie_trace.analyze import AnalyzeOptions, analyze, query
    result = analyze(Path("merged"))            # events table, analysis tables, plots, analysis.json
    columns, rows = query(Path("merged"), "SELECT node, avg(exposed_comm_us) FROM breakdown GROUP BY 1")

One facade over a merge's folder; the events table (`store`, built with the compiled `eventscan` and
`timeline`) is the interchange; each question is one readable SQL file in `sql/` (`sql.TABLES`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

from magpie_trace.analyze import plots
from magpie_trace.analyze.sql import TABLES, connect, export, run_analyses
from magpie_trace.analyze.store import write_events
from magpie_trace.errors import MagpieError
from magpie_trace.fsutil import atomic_write_bytes

ANALYSIS_SCHEMA = "magpie-trace/analysis/1"


@dataclass
class AnalyzeOptions:
    jobs: int = 1  # worker processes building the events table (one rank file each)
    rebuild: bool = False  # rebuild the events table even when it is up to date
    plots: bool = True

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise MagpieError("jobs must be at least 1")


@dataclass
class AnalyzeResult:
    merged_dir: Path
    events: dict[str, Any]
    tables: dict[str, list[str]]
    plots: list[str]
    nodes: list[dict[str, Any]]  # breakdown_nodes rows
    stragglers: list[dict[str, Any]]  # per node: steps as the straggler, longest streak
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["merged_dir"] = str(self.merged_dir)
        return out


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def analyze(merged_dir: Path, options: AnalyzeOptions | None = None) -> AnalyzeResult:
    """Build (or reuse) the events table of `merged_dir` and write analysis/: every table of
    `sql.TABLES` as Parquet and CSV, the plots and analysis.json."""
    opts = options or AnalyzeOptions()
    started = time.perf_counter()
    merged_dir = Path(merged_dir)
    info = write_events(merged_dir, jobs=opts.jobs, force=opts.rebuild)
    out_dir = merged_dir / "analysis"
    con = connect(merged_dir)
    written = run_analyses(con, out_dir)
    nodes = _rows(con, "SELECT * FROM breakdown_nodes ORDER BY node")
    stragglers = _rows(con, """
        SELECT straggler_node AS node, count(*) AS steps_as_straggler, max(streak) AS longest_streak,
               sum(waited_for_us) AS waited_for_us
        FROM stragglers GROUP BY 1 ORDER BY steps_as_straggler DESC, node""")
    warnings = []
    if not _rows(con, "SELECT 1 FROM steps LIMIT 1"):
        warnings.append("no step annotations in the traces: per-step tables are empty")
    if not _rows(con, "SELECT 1 FROM collectives WHERE collective IS NOT NULL LIMIT 1"):
        warnings.append("no matched collectives: no collective or wait tables")
    plot_paths = _plots(con, out_dir / "plots") if opts.plots else []
    result = AnalyzeResult(
        merged_dir=merged_dir,
        events={"folder": str(info.folder), "ranks": info.ranks, "events": info.events, "built": info.built,
                "seconds": info.seconds},
        tables={name: [str(p) for p in paths] for name, paths in written.items()},
        plots=[str(p) for p in plot_paths], nodes=nodes, stragglers=stragglers, warnings=warnings,
        seconds=round(time.perf_counter() - started, 3),
    )
    atomic_write_bytes(out_dir / "analysis.json", orjson.dumps({"schema": ANALYSIS_SCHEMA, **result.to_dict()},
                                                               option=orjson.OPT_INDENT_2))
    return result


def _plots(con: duckdb.DuckDBPyConnection, plot_dir: Path) -> list[Path]:
    plot_dir.mkdir(parents=True, exist_ok=True)
    out = []
    nodes = _rows(con, "SELECT * FROM breakdown_nodes ORDER BY node")
    if nodes:
        out.append(plots.node_breakdown(nodes, plot_dir / "node_breakdown.png"))
    per_step = _rows(con, """SELECT node, step, avg(exposed_comm_us) AS exposed_comm_us
                             FROM breakdown_steps GROUP BY node, step ORDER BY step""")
    if per_step:
        out.append(plots.exposed_per_step(per_step, plot_dir / "exposed_comm_per_step.png"))
    waits = _rows(con, "SELECT step, node, waited_for_us FROM wait_timeline WHERE step IS NOT NULL")
    if waits:
        out.append(plots.wait_timeline(waits, plot_dir / "wait_timeline.png"))
    return out


def query(merged_dir: Path, sql: str, output: Path | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run `sql` against the merge's events and tables (`sql.connect` lists the views). With
    `output` (`.csv` or `.parquet`) the result is written there instead of returned."""
    con = connect(Path(merged_dir))
    text = sql.strip().rstrip(";")
    try:
        if output is not None:
            fmt = output.suffix.lstrip(".").lower()
            if fmt not in ("csv", "parquet"):
                raise MagpieError(f"{output}: write .csv or .parquet")
            export(con, text, output.with_suffix(""), (fmt,))
            return [], []
        cur = con.execute(text)
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    except duckdb.Error as exc:
        raise MagpieError(f"query failed: {str(exc).splitlines()[0]}") from None


__all__ = ["TABLES", "AnalyzeOptions", "AnalyzeResult", "analyze", "query"]
