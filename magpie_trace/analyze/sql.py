"""duckdb over a merge's folder: the events and the merge's tables as views, the analyses as the
readable .sql files next to this module, run in order, each result a table.

Views a query can use: `events`, `steps`, `segments`, `ranks` (events/), `collectives`, `nodes` (the
merge's tables) and every analysis table already written under analysis/ (`breakdown`, ...).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import duckdb

from magpie_trace.errors import MagpieError
from magpie_trace.fsutil import temp_path_for

# Analyses in the order they run; each may read the ones before it.
TABLES = ("breakdown", "breakdown_nodes", "breakdown_steps", "collective_families", "wait_timeline", "stragglers")
_EMPTY_COLLECTIVES = """SELECT * FROM (VALUES (NULL::BIGINT, NULL::VARCHAR, NULL::VARCHAR, NULL::BIGINT,
    NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::BIGINT, NULL::DOUBLE, NULL::DOUBLE,
    NULL::DOUBLE, NULL::DOUBLE, NULL::DOUBLE, NULL::DOUBLE, NULL::VARCHAR, NULL::BIGINT, NULL::BOOLEAN))
    t(collective, process_group, family, "index", name, node, file, label, global_rank, start_us, end_us,
      duration_us, wait_us, arrival_skew_us, end_skew_us, last_arrival_node, last_arrival_rank, is_last_arrival)
    WHERE false"""


def analysis_sql(name: str) -> str:
    return files("magpie_trace.analyze").joinpath("sql", f"{name}.sql").read_text()


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def connect(merged_dir: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory duckdb with the folder's tables as views (nothing is loaded until queried)."""
    merged_dir = Path(merged_dir)
    events = merged_dir / "events"
    if not (events / "meta.json").is_file():
        raise MagpieError(f"{merged_dir}: no events table (run `magpie-trace analyze {merged_dir}` first)")
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({_literal(events / 'rank[0-9]*.parquet')})")
    con.execute(f"CREATE VIEW steps AS SELECT * FROM read_parquet({_literal(events / 'steps.parquet')})")
    con.execute(f"CREATE VIEW ranks AS SELECT * FROM read_parquet({_literal(events / 'ranks.parquet')})")
    con.execute(f"CREATE VIEW segments AS SELECT * FROM read_parquet({_literal(events / 'segments.parquet')})")
    for name in ("collectives", "nodes"):
        path = merged_dir / f"{name}.parquet"
        if path.is_file():
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_literal(path)})")
        elif name == "collectives":
            con.execute(f"CREATE VIEW collectives AS {_EMPTY_COLLECTIVES}")
    for name in TABLES:
        path = merged_dir / "analysis" / f"{name}.parquet"
        if path.is_file():
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_literal(path)})")
    return con


def run_analyses(con: duckdb.DuckDBPyConnection, out_dir: Path) -> dict[str, list[Path]]:
    """Run every analysis into a table and write each as Parquet and CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for name in TABLES:
        text = analysis_sql(name)
        try:
            con.execute(f"DROP VIEW IF EXISTS {name}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {text.rstrip().rstrip(';')}")
        except duckdb.Error as exc:
            raise MagpieError(f"analysis {name}.sql failed: {exc}") from None
        written[name] = export(con, f"SELECT * FROM {name}", out_dir / name)
    return written


def export(con: duckdb.DuckDBPyConnection, query: str, stem: Path, formats: tuple[str, ...] = ("parquet", "csv")
           ) -> list[Path]:
    """The query's result as `<stem>.parquet` / `<stem>.csv`, each written atomically."""
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        tmp = temp_path_for(path)
        option = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
        try:
            con.execute(f"COPY ({query}) TO {_literal(tmp)} ({option})")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths
