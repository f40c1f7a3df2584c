"""Which files share a clock, and what happens when they do not: two clocks under one node name,
ranks assigned to the wrong nodes, raw engine files grouped by their `host_name`, and the API
server's trace on its node's clock whichever node is the reference.

The real vLLM pair was recorded on one machine (one clock), so every clock difference here is one
the test injected."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from magpie_trace.merge import MergeOptions, merge
from tests.merge.traces import load, save, shift, vllm_rank
from tests.real_traces import vllm_cpu

TWO_CLOCKS = "two clocks under one node name"
SKEW_NS = 250_000_000


def _as_rank(doc: dict, rank: int, skew_ns: int = 0) -> dict:
    """The trace as rank `rank`'s, its clock `skew_ns` ahead."""
    moved = shift(doc, skew_ns, 0.0, 0) if skew_ns else doc
    return dict(moved, distributedInfo=dict(doc["distributedInfo"], rank=rank))


def _merge(tmp_path: Path, files: dict[str, dict | Path], **options) -> tuple[Path, dict]:
    inp = tmp_path / "in"
    inp.mkdir()
    for name, doc in files.items():
        if isinstance(doc, Path):
            shutil.copyfile(doc, inp / name)
        else:
            save(doc, inp / name)
    out = tmp_path / "out"
    return out, merge(inp, out, MergeOptions(outputs=("aligned", "alignment"), **options)).to_dict()


def _unaligned_for_two_clocks(node: dict) -> None:
    assert not node["aligned"] and node["method"] == "unaligned", node
    found = re.search(r"disagree with each other by ([0-9.]+) ms", node["unaligned"])
    assert TWO_CLOCKS in node["unaligned"] and found and 249 <= float(found.group(1)) <= 250, node


def test_two_clocks_on_the_first_node_move_the_reference(tmp_path, vllm_pair):
    """node0's second file runs 250 ms ahead: every collective it shares with node0's first file
    violates causality. node0 is refused (its files under unaligned/, the reason said), and the
    reference moves to node1, whose clock is one."""
    r0, r1 = vllm_pair
    out, result = _merge(tmp_path, {"node0-TP0.trace.json.gz": r0, "node0-TP1.trace.json.gz": _as_rank(r1, 1, SKEW_NS),
                                    "node1-TP2.trace.json.gz": _as_rank(r1, 2)})
    assert result["reference_node"] == "node1"
    assert result["nodes"]["node1"]["aligned"] and result["nodes"]["node1"]["method"] == "reference"
    _unaligned_for_two_clocks(result["nodes"]["node0"])
    assert any(w.startswith("node0: left on its own clock") and TWO_CLOCKS in w for w in result["warnings"])
    assert sorted(p.name for p in (out / "unaligned").iterdir()) == [
        "node0-TP0-rank0.trace.json.gz", "node0-TP1-rank1.trace.json.gz"]


def test_two_clocks_on_a_chosen_reference_leave_it_unaligned(tmp_path, vllm_pair):
    """The user asked for node0 as the reference: it stays the reference but is not called aligned."""
    r0, r1 = vllm_pair
    _, result = _merge(tmp_path, {"node0-TP0.trace.json.gz": r0, "node0-TP1.trace.json.gz": _as_rank(r1, 1, SKEW_NS),
                                  "node1-TP2.trace.json.gz": _as_rank(r1, 2)}, reference_node="node0")
    assert result["reference_node"] == "node0"
    _unaligned_for_two_clocks(result["nodes"]["node0"])
    assert not result["nodes"]["node1"]["aligned"]  # nothing but node0's mixed files tied it to node0


def test_two_clocks_on_another_node_refuse_that_node(tmp_path, vllm_pair):
    r0, r1 = vllm_pair
    _, result = _merge(tmp_path, {"node0-TP0.trace.json.gz": r0, "node1-TP1.trace.json.gz": _as_rank(r1, 1),
                                  "node1-TP2.trace.json.gz": _as_rank(r1, 2, SKEW_NS)})
    assert result["reference_node"] == "node0" and result["nodes"]["node0"]["aligned"]
    _unaligned_for_two_clocks(result["nodes"]["node1"])


def test_ranks_mis_assigned_on_two_nodes(tmp_path, vllm_pair):
    """Each of two nodes holds one rank of the other's clock (was a traceback): both are refused
    with the reason, exit 0, nothing presented as aligned."""
    r0, r1 = vllm_pair
    out, result = _merge(tmp_path, {"node0-TP0.trace.json.gz": r0, "node0-TP1.trace.json.gz": _as_rank(r1, 1, SKEW_NS),
                                    "node1-TP2.trace.json.gz": _as_rank(r1, 2), "node1-TP3.trace.json.gz": _as_rank(r0, 3, SKEW_NS)})
    for node in ("node0", "node1"):
        _unaligned_for_two_clocks(result["nodes"][node])
    assert not (out / "aligned").exists() or not list((out / "aligned").iterdir())
    assert len(list((out / "unaligned").iterdir())) == 4
    assert result["tracelens_command"] is None


def test_raw_vllm_files_share_their_hosts_clock(tmp_path):
    """Raw vLLM names say no node; the traces' host_name does: both ranks and the API server of
    host `vm` are one clock (nothing to align, nothing left on its own clock)."""
    files = {p.name: p for p in (vllm_cpu("rank0.*"), vllm_cpu("rank1.*"), vllm_cpu("vm_*"))}
    _, result = _merge(tmp_path, files)
    assert list(result["nodes"]) == ["vm"] and result["nodes"]["vm"]["method"] == "reference"
    assert {f["file"]: (f["node"], f["kind"]) for f in result["files"]} == {
        vllm_cpu("rank0.*").name: ("vm", "rank"), vllm_cpu("rank1.*").name: ("vm", "rank"),
        vllm_cpu("vm_*").name: ("vm", "api_server")}
    assert [f["aligned"] for f in result["files"]] == ["rank0.trace.json.gz", "rank1.trace.json.gz",
                                                       "vm_9937.trace.json.gz"]
    assert result["warnings"] == []


@pytest.mark.parametrize("host", ["../../etc", "a/b", "", "x" * 80, 42])
def test_a_host_name_that_cannot_name_a_node_is_not_used(tmp_path, host):
    """host_name ends up in output names: anything path-like is ignored (the file keeps its own
    clock domain, as without a host_name)."""
    r0, r1 = (load(vllm_rank(k)) for k in (0, 1))
    _, result = _merge(tmp_path, {"rank0.1.pt.trace.json.gz": dict(r0, host_name=host),
                                  "rank1.1.pt.trace.json.gz": dict(r1, host_name=host)})
    assert sorted(result["nodes"]) == ["rank0", "rank1"]
    assert all("/" not in f["aligned"] for f in result["files"])


def test_reference_node_brings_the_api_server_of_another_host_along(tmp_path, vllm_pair):
    """Raw files of two hosts: `vm` (rank 0 and the API server) and `hostb` (rank 1, 3 ms ahead).
    With hostb as the reference, the API server moves with its host's fit onto hostb's clock."""
    r0, r1 = vllm_pair
    api = load(vllm_cpu("vm_*"))
    out, result = _merge(tmp_path, {"rank0.1.pt.trace.json.gz": r0,
                                    "rank1.2.pt.trace.json.gz": dict(shift(r1, 3_000_000, 0.0, 0), host_name="hostb"),
                                    vllm_cpu("vm_*").name: api}, reference_node="hostb")
    vm = result["nodes"]["vm"]
    assert result["reference_node"] == "hostb" and vm["aligned"] and vm["placed_by"] == ["collectives"]
    assert abs(vm["offset_ns"] + 3_000_000) <= vm["uncertainty_us"] * 1e3 + 20_000
    aligned = load(out / "aligned" / "vm_9937.trace.json.gz")
    assert aligned["magpie_trace"]["node"] == "vm" and aligned["magpie_trace"]["clock_offset_ns"] == vm["offset_ns"]
    pairs = [(abs_ns(api, s), abs_ns(aligned, e)) for e, s in zip(aligned["traceEvents"], api["traceEvents"]) if "ts" in s]
    assert pairs
    for c, out_ns in pairs:  # alignment.json rounds the drift to 1e-4 ppm
        theta = vm["offset_ns"] + vm["drift_ppm"] * 1e-6 * (c - vm["t0_ns"])
        assert abs((out_ns - c) + theta) <= 2 + 1e-10 * abs(c - vm["t0_ns"]), (c, out_ns, theta)


def abs_ns(doc: dict, event: dict) -> int:
    return doc["baseTimeNanoseconds"] + round(event["ts"] * 1000)
