"""Throughput of `magpie-trace analyze` next to the merge it reads, on the merge benchmark's input.

Input: the merge benchmark's 8 rank files (benchmarks/merge_throughput.py `build`: the real vLLM TP2
pair repeated to >= 200 MB uncompressed per rank, 4 nodes with shifted clocks). Each step runs in a
fresh subprocess; CPU seconds (user+sys, workers included), wall seconds and peak RSS come from the
kernel (getrusage):

  1. merge without its events output (aligned, merged, tables, alignment);
  2. analyze on that merge: the events table (compiled scan of every aligned file, one Parquet per
     rank) plus every SQL analysis, the plots and analysis.json;
  3. the SQL analyses and plots alone, on the events table just written;
  4. merge with every output (its default: the events table too, ids in the aligned traces' args,
     flows in the merged trace), after which analyze needs only step 3.

Events per second is the events-table rows over the analyze step's CPU and wall time.

    python benchmarks/analyze_throughput.py [--ranks 8] [--mb 200] [--jobs 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge_throughput  # noqa: E402  (the merge benchmark's input builder and measuring)


def _child(kind: str, in_dir: str, out_dir: str, jobs: int) -> None:
    from magpie_trace.analyze import AnalyzeOptions, analyze
    from magpie_trace.merge import MergeOptions, merge

    if kind == "merge":
        merge(Path(in_dir), Path(out_dir), MergeOptions(jobs=jobs, outputs=("aligned", "merged", "tables", "alignment")))
    elif kind == "merge-all":
        merge(Path(in_dir), Path(out_dir), MergeOptions(jobs=jobs))
    else:
        analyze(Path(out_dir), AnalyzeOptions(jobs=jobs, rebuild=kind == "analyze"))


def measure(kind: str, in_dir: Path, out_dir: Path, jobs: int) -> dict:
    return merge_throughput.measure(kind, in_dir, out_dir, jobs, script=__file__)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--mb", type=int, default=200, help="uncompressed MB per rank file (at least)")
    ap.add_argument("--jobs", type=int, default=1, help="--jobs for merge and analyze")
    ap.add_argument("--keep", type=Path, help="build the input here (reused when it exists) and keep it")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="analyze-bench-"))
    in_dir = args.keep or work / "in"
    try:
        if not (in_dir / "manifest.json").exists():
            in_dir.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            merge_throughput.build(in_dir, args.ranks, args.mb)
            print(f"built input in {time.perf_counter() - t:.0f}s")
        merge_throughput.warm_up(work)  # numba caches of the merge's scanner
        measure("analyze", work / "warm-in", work / "warm-out", 1)  # and of the events scanner
        out = work / "out"
        rows = [("merge", measure("merge", in_dir, out, args.jobs)),
                ("analyze (events + SQL)", measure("analyze", in_dir, out, args.jobs)),
                ("SQL + plots only", measure("sql", in_dir, out, args.jobs)),
                ("merge with events", measure("merge-all", in_dir, work / "out-all", args.jobs))]
        meta = orjson.loads((out / "events" / "meta.json").read_bytes())
        align = orjson.loads((out / "alignment.json").read_bytes())
        mb = align["input_bytes"] / 1e6
        largest = max(f["uncompressed_bytes"] for f in align["files"]) / 1e6
        events = meta["events"]
        print(f"input: {len(align['files'])} files, {mb:.0f} MB uncompressed (largest {largest:.0f} MB); "
              f"{events:,} events in the table")
        print(f"{'':24} {'wall s':>8} {'cpu s':>8} {'MB/s/core':>10} {'Mevents/s/core':>15} {'peak MB':>8}")
        for name, r in rows:
            print(f"{name:24} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {mb / r['cpu_s']:10.0f} "
                  f"{events / r['cpu_s'] / 1e6:15.2f} {r['peak_rss_mb']:8.0f}")
        ratio = rows[1][1]["cpu_s"] / rows[0][1]["cpu_s"]
        print(f"analyze / merge CPU time: {ratio:.2f} (wall {rows[1][1]['wall_s'] / rows[0][1]['wall_s']:.2f}); "
              f"peak / largest trace: {rows[1][1]['peak_rss_mb'] / largest:.2f}")
        print(f"cpu: {__import__('os').cpu_count()} cores, {merge_throughput._cpu_model()}; "
              f"python {sys.version.split()[0]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
