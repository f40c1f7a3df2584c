"""The outputs obey the rules their readers have: TraceLens's loader and multi-rank file naming for the
aligned per-rank files, Perfetto's JSON importer for the merged file; tables and alignment.json.

Rules checked (read from TraceLens's DataLoader and Perfetto's JSON importer):
TraceLens loads `.json.gz` with gzip + orjson, needs `traceEvents`, keeps other top-level keys as
metadata and finds ranks with `rank[\\[\\-_/]?(?P<rank>\\d+)` on the file name. Perfetto rejects a
`dur` that is null or not a number, coerces pids to uint32, keys v1 flows by (id, cat, name) across
the whole file, and names/sorts processes with `process_name` / `process_sort_index` metadata.
"""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest

from magpie_trace.merge import MergeOptions, merge
from magpie_trace.merge.perfetto import FLOW_CATEGORY
from tests.merge.traces import (
    gpu_partner,
    load,
    save,
    shift,
    span,
    vllm_rank,
)
from tests.real_traces import LEGACY, NCCL_RANK0, vllm_cpu

TRACELENS_RANK_REGEX = re.compile(r"rank[\[\-_/]?(?P<rank>\d+)")
OFFSET_NS, DRIFT_PPM = 3_000_000, 20.0


def tracelens_load(path: Path) -> dict:
    """TraceLens DataLoader.load_data for .json.gz / .json."""
    data = gzip.open(path, "r").read() if path.name.endswith(".json.gz") else path.read_bytes()
    return orjson.loads(data)


def tracelens_rank_map(paths: list[Path], world_size: int) -> dict[int, Path]:
    """TraceLens --trace_glob + default --rank_regex: rank from basename (else full path), first kept."""
    ranks: dict[int, Path] = {}
    for path in sorted(paths):
        m = TRACELENS_RANK_REGEX.search(path.name) or TRACELENS_RANK_REGEX.search(str(path))
        if m:
            ranks.setdefault(int(m.group("rank")), path)
    missing = [r for r in range(world_size) if r not in ranks]
    assert not missing, f"TraceLens would raise FileNotFoundError for ranks {missing}"
    return ranks


def assert_perfetto_rules(doc: dict, labels: list[str]) -> None:
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    names: dict[int, list[str]] = defaultdict(list)
    sort_index: dict[int, int] = {}
    flows: dict[tuple, set[int]] = defaultdict(set)
    for e in events:
        assert isinstance(e, dict) and isinstance(e.get("ph"), str)
        if "dur" in e:
            assert isinstance(e["dur"], (int, float)) and not isinstance(e["dur"], bool), e
        if "ts" in e:
            assert isinstance(e["ts"], (int, float)), e
        assert isinstance(e.get("pid"), int) and 0 <= e["pid"] < 2**32, e
        if e["ph"] == "M" and e["name"] == "process_name":
            names[e["pid"]].append(e["args"]["name"])
        if e["ph"] == "M" and e["name"] == "process_sort_index":
            sort_index[e["pid"]] = e["args"]["sort_index"]
        if e["ph"] in ("s", "t", "f") and e.get("cat") != FLOW_CATEGORY:  # ours link the ranks on purpose
            flows[(e["id"], e.get("cat"), e.get("name"))].add(e["pid"] // 1000)  # pid block = source file
    used = {e["pid"] for e in events}
    assert set(names) == used, "every process is named"
    assert all(len(v) == 1 for v in names.values()), "one process_name per pid (originals replaced)"
    assert set(sort_index) == used, "every process has a sort index"
    for pid, (name,) in names.items():
        assert name.split(" ")[0] in labels, name
    assert [p for p, _ in sorted(sort_index.items(), key=lambda kv: kv[1])] == sorted(used), "sorted by file"
    assert all(len(files) == 1 for files in flows.values()), "a flow id never joins two ranks"


def without_collective_ids(events: list[dict]) -> list[dict]:
    """The events as the input had them: the merge adds `magpie_collective` to matched collectives' args."""
    out = []
    for e in events:
        if "magpie_collective" in e.get("args", {}):
            e = {**e, "args": {k: v for k, v in e["args"].items() if k != "magpie_collective"}}
        out.append(e)
    return out


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    """The real vLLM pair, node1 shifted by 3 ms + 20 ppm, merged with every output."""
    tmp = tmp_path_factory.mktemp("cpu")
    inp = tmp / "in"
    inp.mkdir()
    rank0, rank1 = load(vllm_rank(0)), load(vllm_rank(1))
    save(rank0, inp / "node0-TP0.trace.json.gz")
    shifted = shift(rank1, OFFSET_NS, DRIFT_PPM, span(rank1)[0])
    save(shifted, inp / "node1-TP1.trace.json.gz")
    (inp / "node1-api-server.trace.json.gz").write_bytes(
        vllm_cpu("vm_*.async_llm.*").read_bytes())
    result = merge(inp, tmp / "out", MergeOptions())
    return inp, tmp / "out", {"node0-TP0": rank0, "node1-TP1": shifted}, result.to_dict()


def test_aligned_files_load_in_tracelens_with_their_metadata(cpu_run):
    _, out, sources, _ = cpu_run
    files = sorted((out / "aligned").glob("*.trace.json.gz"))
    ranks = tracelens_rank_map([f for f in files if "api-server" not in f.name], world_size=2)
    assert [ranks[0].name, ranks[1].name] == ["node0-TP0-rank0.trace.json.gz", "node1-TP1-rank1.trace.json.gz"]
    bases = set()
    for rank, path in ranks.items():
        doc = tracelens_load(path)
        src = sources[path.name.split("-rank")[0]]
        assert list(doc) == list(src) + ["magpie_trace"], "every top-level key kept, in order"
        for key in ("distributedInfo", "deviceProperties", "schemaVersion", "traceName"):
            assert doc[key] == src[key]
        assert len(doc["traceEvents"]) == len(src["traceEvents"])
        bases.add(doc["baseTimeNanoseconds"])
        assert doc["magpie_trace"]["global_rank"] == rank
    assert len(bases) == 1, "one common baseTimeNanoseconds"


def test_aligned_timestamps_are_the_source_minus_the_fitted_clock_error(cpu_run):
    _, out, sources, result = cpu_run
    node = result["nodes"]["node1"]
    src = sources["node1-TP1"]
    doc = tracelens_load(out / "aligned" / "node1-TP1-rank1.trace.json.gz")
    base = doc["baseTimeNanoseconds"]
    for a, s in zip(without_collective_ids(doc["traceEvents"]), src["traceEvents"]):
        assert {k: v for k, v in a.items() if k not in ("ts", "dur")} == {k: v for k, v in s.items() if k not in ("ts", "dur")}
        if "ts" not in s:
            continue
        c = src["baseTimeNanoseconds"] + round(s["ts"] * 1000)  # integers: floats lose ns at 1.8e18
        theta = node["offset_ns"] + node["drift_ppm"] * 1e-6 * (c - node["t0_ns"])
        assert abs(round(a["ts"] * 1000) - (c - base - theta)) <= 1.0
        if "dur" in s:  # durations shrink with the drift, ends map like starts
            end = c + round(s["dur"] * 1000)
            theta_end = node["offset_ns"] + node["drift_ppm"] * 1e-6 * (end - node["t0_ns"])
            assert abs(round(a["ts"] * 1000) + round(a["dur"] * 1000) - (end - base - theta_end)) <= 2.0


def test_after_alignment_no_collective_ends_before_it_started_everywhere(cpu_run):
    _, out, _, _ = cpu_run
    spans = []
    for name in ("node0-TP0-rank0", "node1-TP1-rank1"):
        doc = tracelens_load(out / "aligned" / f"{name}.trace.json.gz")
        ev = sorted((e for e in doc["traceEvents"] if e.get("name") == "gloo:all_reduce"), key=lambda e: e["ts"])
        spans.append(np.array([[round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000)] for e in ev]))
    (s0, e0), (s1, e1) = spans[0].T, spans[1].T
    assert (e0 >= s1).all() and (e1 >= s0).all()


def test_merged_file_passes_perfetto_rules(cpu_run):
    _, out, _, result = cpu_run
    doc = orjson.loads(gzip.decompress((out / "merged.trace.json.gz").read_bytes()))
    assert_perfetto_rules(doc, ["node0-TP0", "node1-TP1", "node1-api-server"])
    names = {e["args"]["name"] for e in doc["traceEvents"] if e.get("name") == "process_name"}
    assert "node1-TP1 VLLM::Worker_TP1" in names and "node0-TP0 VLLM::Worker_TP0" in names
    assert doc["baseTimeNanoseconds"] == result["base_time_ns"]
    n_src = sum(len(load(vllm_rank(r))["traceEvents"]) for r in (0, 1))
    n_meta = sum(1 for e in doc["traceEvents"] if e["ph"] == "M" and e["name"].startswith("process_"))
    assert len(doc["traceEvents"]) > n_src - 10 and n_meta > 0


def test_tables_list_every_matched_collective_per_rank_and_a_node_summary(cpu_run):
    _, out, _, result = cpu_run
    table = pl.read_parquet(out / "collectives.parquet")
    assert table.height == 2 * result["collectives"] and result["collectives"] >= 576
    assert pl.read_csv(out / "collectives.csv").height == table.height
    per = table.group_by("collective").agg(pl.len().alias("n"), pl.col("wait_us").min().alias("w"),
                                           pl.col("is_last_arrival").sum().alias("last"))
    assert (per["n"] == 2).all() and (per["w"] == 0).all() and (per["last"] == 1).all()
    assert (table["end_us"] >= table["start_us"]).all()
    nodes = pl.read_parquet(out / "nodes.parquet")
    assert set(nodes["node"]) == {"node0", "node1"}
    assert nodes["times_last_to_arrive"].sum() == result["collectives"]
    assert (nodes["comm_time_per_rank_us"] > 0).all()


def test_alignment_json_reports_each_node(cpu_run):
    _, out, _, _ = cpu_run
    doc = orjson.loads((out / "alignment.json").read_bytes())
    assert doc["schema"] == "magpie-trace/alignment/1" and doc["reference_node"] == "node0"
    node1 = doc["nodes"]["node1"]
    assert abs(node1["offset_ns"] - OFFSET_NS) < 100_000 and node1["n_anchors"] >= 576
    assert {"drift_ppm", "method", "uncertainty_us", "residuals", "warnings"} <= set(node1)
    assert [f["kind"] for f in doc["files"]] == ["rank", "rank", "api_server"]


def test_inputs_are_untouched(cpu_run):
    inp, _, _, _ = cpu_run
    assert sorted(p.name for p in inp.iterdir()) == [
        "node0-TP0.trace.json.gz", "node1-TP1.trace.json.gz", "node1-api-server.trace.json.gz"]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory) -> tuple[Path, dict]:
    """A real NCCL rank and its partner (kernels jittered), node1 shifted; the traces have flows."""
    tmp = tmp_path_factory.mktemp("gpu")
    inp = tmp / "in"
    inp.mkdir()
    rank0 = load(NCCL_RANK0)
    save(rank0, inp / "node0-TP0.trace.json.gz")
    partner = gpu_partner(rank0, 1, jitter_us=2.0)
    save(shift(partner, 500_000, 0.0, span(partner)[0]), inp / "node1-TP1.trace.json.gz")
    merge(inp, tmp / "out", MergeOptions(jobs=2))
    return tmp / "out", rank0


def test_gpu_merge_keeps_flows_unique_per_rank(gpu_run):
    out, rank0 = gpu_run
    doc = orjson.loads(gzip.decompress((out / "merged.trace.json.gz").read_bytes()))
    assert_perfetto_rules(doc, ["node0-TP0", "node1-TP1"])
    flows = [e for e in doc["traceEvents"] if e["ph"] in ("s", "f") and e.get("cat") != FLOW_CATEGORY]
    assert len(flows) == 2 * sum(1 for e in rank0["traceEvents"] if e["ph"] in ("s", "f"))
    aligned = tracelens_load(out / "aligned" / "node0-TP0-rank0.trace.json.gz")
    assert without_collective_ids(aligned["traceEvents"]) == rank0["traceEvents"], "the reference rank's events are unchanged"


def test_jobs_do_not_change_the_outputs(gpu_run, tmp_path):
    out, _ = gpu_run
    again = merge(out.parent / "in", tmp_path / "out", MergeOptions(jobs=1))
    for rel in ("merged.trace.json.gz", "aligned/node1-TP1-rank1.trace.json.gz"):
        assert gzip.decompress((out / rel).read_bytes()) == gzip.decompress((tmp_path / "out" / rel).read_bytes())
    assert again.nodes["node1"]["offset_ns"] == pytest.approx(500_000, abs=5_000)


def test_window_cuts_every_rank_at_the_same_aligned_instants(cpu_run, tmp_path):
    inp, _, _, _ = cpu_run
    result = merge(inp, tmp_path / "out", MergeOptions(window_ms=(200.0, 300.0), outputs=("aligned", "merged")))
    lo, hi = result.window_ns
    assert hi - lo == 100_000_000
    counts = []
    for path in sorted((tmp_path / "out" / "aligned").glob("node*-rank*.trace.json.gz")):
        doc = tracelens_load(path)
        base = doc["baseTimeNanoseconds"]
        timed = [e for e in doc["traceEvents"] if e["ph"] != "M" and "ts" in e]
        for e in timed:
            start = round(e["ts"] * 1000) + base - result.base_time_ns
            end = start + round(e.get("dur", 0) * 1000)
            assert end >= lo and start <= hi, e
        counts.append(len(timed))
    assert all(0 < c < 20000 for c in counts)
    kept = [f["events_kept"] for f in result.files if f["kind"] == "rank"]
    assert all(k is not None and k > 0 for k in kept)
    doc = orjson.loads(gzip.decompress((tmp_path / "out" / "merged.trace.json.gz").read_bytes()))
    assert_perfetto_rules(doc, ["node0-TP0", "node1-TP1", "node1-api-server"])


def test_steps_window_is_the_reference_ranks_step_annotations(cpu_run, tmp_path):
    inp, _, sources, _ = cpu_run
    result = merge(inp, tmp_path / "out", MergeOptions(steps=(3, 5), outputs=("aligned",)))
    ref = sources["node0-TP0"]
    steps = sorted((e for e in ref["traceEvents"] if e.get("name", "").startswith("execute_")), key=lambda e: e["ts"])
    base = ref["baseTimeNanoseconds"] - result.base_time_ns
    assert result.window_ns == (base + round(steps[3]["ts"] * 1000), base + round((steps[5]["ts"] + steps[5]["dur"]) * 1000))


def test_outputs_option_writes_only_what_is_asked(cpu_run, tmp_path):
    inp, _, _, _ = cpu_run
    merge(inp, tmp_path / "out", MergeOptions(outputs=("tables",)))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "collectives.csv", "collectives.parquet", "nodes.csv", "nodes.parquet"]


def test_legacy_absolute_timestamps_and_plain_json(tmp_path):
    """Old traces (absolute epoch-us ts, no baseTimeNanoseconds), given as plain .json."""
    rank0 = load(LEGACY)
    partner = gpu_partner(rank0, 1, jitter_us=1.0)
    inp = tmp_path / "in"
    inp.mkdir()
    save(rank0, inp / "node0-TP0.trace.json")
    save(shift(partner, 3_000_000, 0.0, span(partner)[0]), inp / "node1-TP1.trace.json")
    result = merge(inp, tmp_path / "out", MergeOptions())
    assert result.nodes["node1"]["offset_ns"] == pytest.approx(3_000_000, abs=5_000)
    doc = tracelens_load(tmp_path / "out" / "aligned" / "node0-TP0-rank0.trace.json.gz")
    assert doc["baseTimeNanoseconds"] == result.base_time_ns
    first = next(e for e in rank0["traceEvents"] if "ts" in e)
    mine = next(e for e in doc["traceEvents"] if "ts" in e)
    assert round(first["ts"] * 1000) == round(mine["ts"] * 1000) + doc["baseTimeNanoseconds"]


def test_chunking_does_not_change_the_output(cpu_run, tmp_path, monkeypatch):
    """Files are streamed in chunks; with tiny chunks (cut between keys, next to dropped metadata,
    between a `ts` and its `dur`) every output byte is the same."""
    import sys

    inp, _, _, _ = cpu_run
    merge(inp, tmp_path / "whole", MergeOptions(outputs=("aligned", "merged")))
    monkeypatch.setattr(sys.modules["magpie_trace.merge.rewrite"], "CHUNK", 1_000)
    merge(inp, tmp_path / "out", MergeOptions(outputs=("aligned", "merged")))
    for rel in ("merged.trace.json.gz", "aligned/node1-TP1-rank1.trace.json.gz",
                "aligned/node0-TP0-rank0.trace.json.gz"):
        assert gzip.decompress((tmp_path / "out" / rel).read_bytes()) == gzip.decompress((tmp_path / "whole" / rel).read_bytes())


def test_three_nodes_each_aligned_to_the_reference(tmp_path):
    """A third node (a copy of rank 1 as rank 2, on its own clock) is fitted like the second."""
    rank0, rank1 = load(vllm_rank(0)), load(vllm_rank(1))
    inp = tmp_path / "in"
    inp.mkdir()
    save(rank0, inp / "node0-TP0.trace.json.gz")
    save(shift(rank1, 700_000, 0.0, span(rank1)[0]), inp / "node1-TP1.trace.json.gz")
    third = shift(rank1, -2_000_000, 0.0, span(rank1)[0])
    third["distributedInfo"] = dict(rank1["distributedInfo"], rank=2)
    save(third, inp / "node2-TP2.trace.json.gz")
    result = merge(inp, tmp_path / "out", MergeOptions(outputs=("alignment",)))
    unshifted = merge_offset_of_pair(tmp_path)
    assert result.nodes["node1"]["offset_ns"] == pytest.approx(700_000 + unshifted, abs=1_000)
    assert result.nodes["node2"]["offset_ns"] == pytest.approx(-2_000_000 + unshifted, abs=1_000)


def merge_offset_of_pair(tmp_path: Path) -> float:
    inp = tmp_path / "pair"
    inp.mkdir()
    for rank in (0, 1):
        (inp / f"node{rank}-TP{rank}.trace.json.gz").write_bytes(vllm_rank(rank).read_bytes())
    return merge(inp, tmp_path / "pair-out", MergeOptions(outputs=("alignment",))).nodes["node1"]["offset_ns"]
