"""What the merge adds for TraceLens and Perfetto users: each matched collective's id in its args in
the aligned traces, flow arrows across ranks in the merged trace, every process named and labelled
with its node's clock correction; and the events table written by the merge itself."""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from magpie_trace.analyze import AnalyzeOptions, analyze, query
from magpie_trace.merge import OUTPUTS, MergeOptions, merge
from magpie_trace.merge.perfetto import FLOW_CATEGORY
from tests.analyze import synth


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("links")
    (tmp / "traces").mkdir()
    for rank, delay in ((0, 0), (1, 70)):
        synth.write(synth.gpu_rank(rank, delay), tmp / "traces" / f"node{rank}-TP{rank}.trace.json.gz")
    merge(tmp / "traces", tmp / "merged", MergeOptions(outputs=OUTPUTS))
    return tmp / "merged"


def _load(path: Path) -> dict:
    return orjson.loads(gzip.decompress(path.read_bytes()))


def test_merge_writes_the_events_table(merged: Path) -> None:
    assert (merged / "events" / "rank0.parquet").is_file() and (merged / "events" / "rank1.parquet").is_file()
    assert analyze(merged, AnalyzeOptions(plots=False)).events["built"] is False  # analyze reuses it


def test_plain_merge_leaves_the_events_table_to_analyze(merged: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    merge(merged.parent / "traces", plain)  # default outputs: no events table, no ids in the args
    assert not (plain / "events").exists()
    aligned = _load(plain / "aligned" / "node0-TP0-rank0.trace.json.gz")["traceEvents"]
    assert not any("magpie_collective" in e.get("args", {}) for e in aligned)
    assert analyze(plain, AnalyzeOptions(plots=False)).events["built"] is True
    every = "SELECT * EXCLUDE (label) FROM events ORDER BY rank, start_ns, name, tid"
    assert query(plain, every) == query(merged, every)  # the same table, whoever built it


def test_aligned_args_carry_the_collective_id(merged: Path) -> None:
    _, rows = query(merged, "SELECT rank, start_ns, collective FROM events WHERE collective IS NOT NULL")
    ids = {(rank, start): cid for rank, start, cid in rows}
    assert len(ids) == 8  # 4 all-reduces on 2 ranks
    for rank in (0, 1):
        doc = _load(merged / "aligned" / f"node{rank}-TP{rank}-rank{rank}.trace.json.gz")
        tagged = {(rank, round(e["ts"] * 1000)): e["args"]["magpie_collective"]
                  for e in doc["traceEvents"] if "magpie_collective" in e.get("args", {})}
        assert tagged == {k: v for k, v in ids.items() if k[0] == rank}
        # the other args are still there, first key ours
        first = next(e for e in doc["traceEvents"] if "magpie_collective" in e.get("args", {}))
        assert list(first["args"])[0] == "magpie_collective" and first["args"]["stream"] == 13


def test_merged_trace_links_collectives_and_names_processes(merged: Path) -> None:
    doc = _load(merged / "merged.trace.json.gz")
    events = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    labels = {e["pid"]: e["args"]["labels"] for e in events if e.get("ph") == "M" and e["name"] == "process_labels"}
    assert sorted(names.values()) == ["node0-TP0 GPU 0", "node0-TP0 python", "node1-TP1 GPU 0", "node1-TP1 python"]
    assert set(labels) == set(names)
    assert {labels[p] for p, n in names.items() if n.startswith("node0")} == {"clock: reference"}
    assert all(labels[p].startswith("clock ") and " us " in labels[p] for p, n in names.items() if n.startswith("node1"))
    flows: dict[int, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") == FLOW_CATEGORY:
            flows[e["id"]].append(e)
    _, matched = query(merged, "SELECT DISTINCT collective FROM events WHERE collective IS NOT NULL")
    assert set(flows) == {cid for (cid,) in matched}
    gpu = {p for p, n in names.items() if "GPU" in n}
    for chain in flows.values():
        assert [e["ph"] for e in chain] == ["s", "f"]
        assert {e["pid"] // 1000 for e in chain} == {0, 1}  # one end on each rank
        assert all(e["pid"] in gpu and e["tid"] == 13 for e in chain)  # on the collective's stream
        slices = [x for x in events if x.get("ph") == "X" and x["pid"] == chain[0]["pid"] and x["tid"] == 13]
        assert any(x["ts"] <= chain[0]["ts"] <= x["ts"] + x["dur"] for x in slices)  # inside its slice
