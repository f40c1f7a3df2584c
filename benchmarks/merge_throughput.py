"""Throughput of `magpie-trace merge` against a naive gzip + json merge, on a large input built from
the real vLLM TP2 traces in tests/data/traces/vllm-cpu-tp2-2node.

Input: RANKS files (default 8: 4 nodes x 2 ranks; even ranks are copies of the real rank 0, odd
ranks of rank 1) whose event arrays are the real events repeated back to back (each copy shifted by
the original span) until each file holds >= MB uncompressed megabytes; each node's clock is shifted
by a known offset (and node 3 also drifts), written in Kineto's own text format, with the clock
probe `collect` would record in the manifest. Compressed with gzip level 6.

Both contenders run in a fresh subprocess; CPU seconds (user+sys of the process and its workers),
wall seconds and peak RSS come from the kernel (getrusage). MB/s is uncompressed input per CPU
second ("per core") and per wall second. The naive baseline does what common merge tools do: for
each file gzip-inflate + json.loads, shift ts / remap pid in Python, json.dumps + gzip (level 6) an
aligned copy and append to one merged gzip file.

    python benchmarks/merge_throughput.py [--ranks 8] [--mb 200] [--jobs 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

PAIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "traces" / "vllm-cpu-tp2-2node"
NODE_OFFSETS_NS = [0, 500_000, -3_000_000, 50_000_000]
NODE_DRIFT_PPM = [0.0, 0.0, 0.0, 20.0]


_TS = re.compile(rb'"ts": (\d+)\.(\d{3})')


def _source(rank: int) -> tuple[bytes, int, int, int]:
    """(raw Kineto text, start and end of the event array content, baseTimeNanoseconds)."""
    raw = gzip.decompress(next(PAIR.glob(f"rank{rank}.*.pt.trace.json.gz")).read_bytes())
    doc = orjson.loads(raw)
    lo = raw.index(b"[", raw.index(b'"traceEvents"')) + 1
    hi = raw.rindex(b"]")
    return raw, lo, hi, doc["baseTimeNanoseconds"]


def build(out_dir: Path, ranks: int, target_mb: int) -> list[Path]:
    """Write the input files (Kineto's own text, timestamps rewritten in its 3-decimal format) and
    a manifest; returns the files."""
    sources = [_source(0), _source(1)]
    raw0, lo0, hi0, base0 = sources[0]
    stamps = [int(m[1]) * 1000 + int(m[2]) for m in _TS.finditer(raw0, lo0, hi0)]
    period_ns = max(stamps) - min(stamps) + 1_000_000
    first_ns = base0 + min(stamps)
    files = []
    manifest = {"schema": "magpie-trace/manifest/1", "run_id": "bench", "engine": "vllm", "engine_version": "0.32.0",
                "gpus_per_node": 2, "world_size": ranks, "tp": ranks, "pp": 1, "dp": 1, "ep": 1, "files": [],
                "clock_probes": {}}
    last_ns = first_ns
    for rank in range(ranks):
        node = rank // 2
        raw, lo, hi, base = sources[rank % 2]
        off, ppm = NODE_OFFSETS_NS[node % 4], NODE_DRIFT_PPM[node % 4]
        body = raw[lo:hi].strip()
        copies = max(1, -(-target_mb * 10**6 // len(body)))
        last_ns = max(last_ns, first_ns + copies * period_ns)
        parts = []
        for k in range(copies):
            def shift(m: re.Match, k: int = k) -> bytes:
                absolute = base + int(m[1]) * 1000 + int(m[2]) + k * period_ns
                rel = absolute + off + round(ppm * 1e-6 * (absolute - first_ns)) - base
                return b'"ts": %d.%03d' % (rel // 1000, rel % 1000)

            parts.append(_TS.sub(shift, body))
        head = re.sub(rb'"rank": \d+, "world_size": \d+', b'"rank": %d, "world_size": %d' % (rank, ranks), raw[:lo])
        name = f"node{node}-TP{rank}.trace.json.gz"
        path = out_dir / name
        path.write_bytes(gzip.compress(head + b",\n".join(parts) + raw[hi:], compresslevel=6))
        files.append(path)
        manifest["files"].append({"file": name, "kind": "rank", "node": node, "node_name": f"node{node}",
                                  "host": f"host{node}", "global_rank": rank, "tp_rank": rank, "pp_rank": 0,
                                  "dp_rank": 0, "ep_rank": 0})
    # The clock probe `collect` records around every capture (loopback-sized uncertainty): the
    # repeated copies make every trace exactly periodic, so without it each pairing would be
    # ambiguous by one copy and every node but the reference left unaligned.
    for node in range(-(-ranks // 2)):
        off, ppm = NODE_OFFSETS_NS[node % 4], NODE_DRIFT_PPM[node % 4]
        manifest["clock_probes"][str(node)] = [
            {"t_ns": t, "offset_ns": off + ppm * 1e-6 * (t - first_ns), "uncertainty_ns": 120_000.0,
             "rtt_min_ns": 40_000, "samples": 200, "when": when}
            for t, when in ((first_ns - 10_000_000, "before"), (last_ns + 10_000_000, "after"))]
    (out_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    return files


def naive(in_dir: str, out_dir: str) -> None:
    """The baseline: whole-file gzip + json, Python loops, gzip + json out."""
    out = Path(out_dir)
    (out / "aligned").mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "merged.json.gz", "wt", compresslevel=6) as merged:
        merged.write('{"traceEvents": [')
        first = True
        for i, path in enumerate(sorted(Path(in_dir).glob("*.trace.json.gz"))):
            doc = json.loads(gzip.decompress(path.read_bytes()))
            pids: dict = {}
            for e in doc["traceEvents"]:
                if "ts" in e:
                    e["ts"] = e["ts"] - 0.5
            with gzip.open(out / "aligned" / path.name, "wt", compresslevel=6) as f:
                json.dump(doc, f)
            for e in doc["traceEvents"]:
                if "pid" in e:
                    e["pid"] = pids.setdefault(e["pid"], i * 1000 + len(pids) + 1)
                if "id" in e:
                    e["id"] = e["id"] * 64 + i
            text = json.dumps(doc["traceEvents"])[1:-1]
            merged.write(("" if first else ",") + text)
            first = False
            del doc, text
        merged.write("]}")


def warm_up(work: Path) -> None:
    """Merge the real pair once, so numba's on-disk cache of the compiled scanner exists (a first run
    after installing compiles it: seconds of CPU and ~200 MB, once) and is not what gets measured."""
    pair = work / "warm-in"
    pair.mkdir()
    for rank in (0, 1):
        shutil.copy(next(PAIR.glob(f"rank{rank}.*.pt.trace.json.gz")), pair / f"node{rank}-TP{rank}.trace.json.gz")
    subprocess.run([sys.executable, __file__, "--child", "magpie", str(pair), str(work / "warm-out"), "1"], check=True)


def _child(kind: str, in_dir: str, out_dir: str, jobs: int) -> None:
    if kind == "naive":
        naive(in_dir, out_dir)
    else:
        from magpie_trace.merge import MergeOptions, merge

        merge(Path(in_dir), Path(out_dir), MergeOptions(jobs=jobs))


def measure(kind: str, in_dir: Path, out_dir: Path, jobs: int, script: str = __file__) -> dict:
    """`script --child kind in out jobs` in a fresh process: its CPU and wall seconds and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, script, "--child", kind, str(in_dir), str(out_dir), str(jobs)], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": after.ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--mb", type=int, default=200, help="uncompressed MB per rank file (at least)")
    ap.add_argument("--jobs", type=int, default=1, help="--jobs for magpie-trace merge")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--keep", type=Path, help="build the input here (reused when it exists) and keep it")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="merge-bench-"))
    in_dir = args.keep or work / "in"
    try:
        if not (in_dir / "manifest.json").exists():
            in_dir.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            build(in_dir, args.ranks, args.mb)
            print(f"built input in {time.perf_counter() - t:.0f}s")
        files = sorted(in_dir.glob("*.trace.json.gz"))
        sizes = [len(gzip.decompress(p.read_bytes())) for p in files]
        total_mb, largest_mb = sum(sizes) / 1e6, max(sizes) / 1e6
        print(f"input: {len(files)} files, {total_mb:.0f} MB uncompressed (largest {largest_mb:.0f} MB), "
              f"{sum(p.stat().st_size for p in files) / 1e6:.0f} MB gzip")
        warm_up(work)
        rows = [("magpie-trace merge", measure("magpie", in_dir, work / "out", args.jobs))]
        align = orjson.loads((work / "out" / "alignment.json").read_bytes())
        if not args.skip_naive:
            rows.append(("naive gzip+json", measure("naive", in_dir, work / "naive", 1)))
        print(f"{'':20} {'wall s':>8} {'cpu s':>8} {'MB/s/core':>10} {'MB/s wall':>10} {'peak MB':>8} {'peak/largest':>12}")
        for name, r in rows:
            print(f"{name:20} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {total_mb / r['cpu_s']:10.0f} "
                  f"{total_mb / r['wall_s']:10.0f} {r['peak_rss_mb']:8.0f} {r['peak_rss_mb'] / largest_mb:12.2f}")
        if len(rows) == 2:
            print(f"speed-up per core: {rows[1][1]['cpu_s'] / rows[0][1]['cpu_s']:.1f}x, "
                  f"wall: {rows[1][1]['wall_s'] / rows[0][1]['wall_s']:.1f}x")
        for node, rep in align["nodes"].items():
            k = int(node.removeprefix("node"))
            print(f"{node}: offset {rep['offset_ns'] / 1e3:9.1f} us (injected {NODE_OFFSETS_NS[k % 4] / 1e3:9.1f}), "
                  f"drift {rep['drift_ppm']:7.2f} ppm (injected {NODE_DRIFT_PPM[k % 4]}), {rep['method']}")
        print(f"cpu: {os.cpu_count()} cores, {_cpu_model()}; python {sys.version.split()[0]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
