"""The real vLLM CPU TP=2 pair (tests/data), end to end through the command line: merge, analyze,
query; the breakdown checked against the trace itself, read independently with orjson."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from magpie_trace.analyze import query
from tests.real_traces import vllm_cpu


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "magpie_trace.cli", *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _union_us(intervals: list[tuple[int, int]]) -> float:
    total, end = 0, None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total / 1e3


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cpu-pair")
    (tmp / "traces").mkdir()
    for rank in (0, 1):
        shutil.copy(vllm_cpu(f"rank{rank}.*"), tmp / "traces" / f"node{rank}-TP{rank}.trace.json.gz")
    _cli("merge", str(tmp / "traces"), "-o", str(tmp / "merged"))
    out = _cli("analyze", str(tmp / "merged"))
    assert "events:" in out and "node0: cpu" in out and "node1: cpu" in out
    return tmp / "merged"


def test_cpu_pair_breakdown_matches_the_trace(merged: Path) -> None:
    columns, rows = query(merged, "SELECT * FROM breakdown ORDER BY rank")
    assert len(rows) == 2
    for row in (dict(zip(columns, r)) for r in rows):
        assert row["domain"] == "cpu"
        doc = orjson.loads(gzip.decompress((merged / "aligned" / f"node{row['rank']}-TP{row['rank']}-rank{row['rank']}"
                                            ".trace.json.gz").read_bytes()))
        base = doc["baseTimeNanoseconds"]
        ops = [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
        comm = [e for e in ops if e["name"].startswith(("gloo:", "c10d::", "_c10d_functional::"))]
        counted = [e for e in ops if e["cat"] == "cpu_op" or e in comm]

        def ns(e: dict) -> tuple[int, int]:
            return round(e["ts"] * 1000), round(e["ts"] * 1000) + round(e["dur"] * 1000)

        spans = [ns(e) for e in counted if e["dur"] > 0]
        assert row["total_us"] == pytest.approx((max(h for _, h in spans) - min(lo for lo, _ in spans)) / 1e3, abs=0.01)
        assert row["busy_us"] == pytest.approx(_union_us(spans), abs=0.01)
        assert row["comm_us"] == pytest.approx(_union_us([ns(e) for e in comm if e["dur"] > 0]), abs=0.01)
        assert base > 0
        # the parts add up, and most of a CPU rank's communication is exposed (gloo blocks the thread)
        assert (row["compute_only_us"] + row["overlapped_us"] + row["exposed_comm_us"] + row["memcpy_only_us"]
                + row["idle_us"]) == pytest.approx(row["total_us"], abs=0.01)
        assert row["exposed_comm_us"] > 0.5 * row["comm_us"] > 0


def test_cpu_pair_collectives_steps_and_waits(merged: Path) -> None:
    _, [(matched, ranks_per)] = query(merged, """SELECT count(*), count(DISTINCT rank) FROM events
                                                 WHERE collective IS NOT NULL""")
    _, [(rows,)] = query(merged, "SELECT count(*) FROM collectives")
    assert matched == rows > 600 and ranks_per == 2  # every matched gloo collective, found on both ranks
    _, steps = query(merged, "SELECT rank, count(*) FROM steps GROUP BY rank ORDER BY rank")
    assert steps == [(0, 68), (1, 68)]  # vLLM's execute_ annotations
    _, per_step = query(merged, "SELECT count(DISTINCT step), sum(exposed_comm_us) FROM breakdown_steps")
    assert per_step[0][0] == 68 and per_step[0][1] > 0
    columns, fam = query(merged, "SELECT * FROM collective_families ORDER BY family")
    fam = [dict(zip(columns, r)) for r in fam]
    assert {f["family"] for f in fam} == {"allreduce", "allgather"}
    assert {f["scope"] for f in fam} == {"inter-node"} and {f["ranks"] for f in fam} == {2}
    assert sum(f["calls"] for f in fam) == rows // 2
    _, waits = query(merged, "SELECT count(DISTINCT step), count(DISTINCT node) FROM wait_timeline")
    assert 60 <= waits[0][0] <= 68 and waits[0][1] == 2  # the steps that ran collectives, both nodes
    _, top = query(merged, "SELECT count(*), max(streak) FROM stragglers")
    assert top[0][0] > 0


def test_query_prints_and_writes(merged: Path, tmp_path: Path) -> None:
    out = _cli("query", str(merged), "SELECT node, count(*) AS n FROM events GROUP BY node ORDER BY node")
    lines = out.splitlines()
    assert lines[0] == "node\tn" and lines[1].startswith("node0\t") and lines[2].startswith("node1\t")
    target = tmp_path / "families.parquet"
    _cli("query", str(merged), "SELECT * FROM collective_families", "-o", str(target))
    _, [(n,)] = query(merged, f"SELECT count(*) FROM read_parquet('{target}')")
    assert n == 2
    as_json = orjson.loads(_cli("query", str(merged), "SELECT rank, domain FROM ranks ORDER BY rank", "--json"))
    assert as_json == [{"rank": 0, "domain": "cpu"}, {"rank": 1, "domain": "cpu"}]
    bad = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "query", str(merged), "SELECT nope FROM events"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: query failed:") and "nope" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "analyze", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no alignment.json" in missing.stderr
