"""Which node, clock and rank each input file belongs to, and the names of the aligned files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from magpie_trace.errors import TraceError
from magpie_trace.merge.discover import (
    TRACELENS_RANK_REGEX,
    discover,
    from_name,
    manifest_probes,
)


@pytest.mark.parametrize("name,kind,node,tp,rank,label", [
    ("node1-TP3.trace.json.gz", "rank", "node1", 3, None, "node1-TP3"),
    ("node0-TP5-DP1-PP1.trace.json", "rank", "node0", 5, None, "node0-TP5-DP1-PP1"),
    ("node2-api-server.trace.json.gz", "api_server", "node2", None, None, "node2-api-server"),
    ("rank1.1795388698376534517.pt.trace.json.gz", "rank", "rank1", None, 1, "rank1"),
    ("dp0_pp0_tp1_dcp0_ep0_rank5.17953.pt.trace.json.gz", "rank", "dp0_pp0_tp1_dcp0_ep0_rank5", None, 5,
     "dp0_pp0_tp1_dcp0_ep0_rank5"),
    ("1712345-TP-3-DP-1-DECODE.trace.json.gz", "rank", "1712345-TP-3-DP-1-DECODE", 3, None,
     "1712345-TP-3-DP-1-DECODE"),
    ("vm_9937.async_llm.1795388698147209012.pt.trace.json.gz", "api_server", "vm_9937", None, None, "vm_9937"),
])
def test_names(name, kind, node, tp, rank, label):
    tf = from_name(Path(name))
    assert (tf.kind, tf.node_name, tf.tp_rank, tf.global_rank, tf.label) == (kind, node, tp, rank, label)


@pytest.mark.parametrize("name,rank", [
    ("node1-TP3.trace.json.gz", 3), ("rank1.123.pt.trace.json.gz", 1), ("abc-TP-3.trace.json.gz", 3),
])
def test_aligned_names_give_tracelens_the_global_rank(name, rank):
    tf = from_name(Path(name))
    tf.global_rank = rank
    found = TRACELENS_RANK_REGEX.search(tf.output_name())
    assert found and int(found.group("rank")) == rank


def test_manifest_wins_over_names_and_gives_clock_probes(tmp_path):
    (tmp_path / "a.trace.json.gz").write_bytes(b"")
    (tmp_path / "node7-TP0.trace.json.gz").write_bytes(b"")
    probe = [{"t_ns": 2, "offset_ns": 2500.0, "uncertainty_ns": 90.0}, {"t_ns": 1, "offset_ns": 2400, "uncertainty_ns": 80},
             {"t_ns": 3, "offset_ns": "x", "uncertainty_ns": 1}, {"t_ns": 4, "offset_ns": 1.0, "uncertainty_ns": -1}]
    manifest = {"schema": "magpie-trace/manifest/1", "clock_probes": {"1": probe, "9": "junk"},
                "files": [{"file": "a.trace.json.gz", "kind": "rank", "node": 1, "node_name": "node1",
                           "global_rank": 9, "tp_rank": 1, "pp_rank": 0, "dp_rank": 0}]}
    (tmp_path / "manifest.json").write_bytes(orjson.dumps(manifest))
    files, loaded = discover(tmp_path)
    assert [(f.path.name, f.node_name, f.global_rank, f.from_manifest) for f in files] == [
        ("a.trace.json.gz", "node1", 9, True), ("node7-TP0.trace.json.gz", "node7", None, False)]
    probes = manifest_probes(loaded, files)  # by node name; unparsable points are skipped, never fatal
    assert list(probes) == ["node1"] and [(p.t_ns, p.offset_ns) for p in probes["node1"]] == [(1, 2400), (2, 2500)]
    assert files[0].output_name() == "node1-TP1-rank9.trace.json.gz"


@pytest.mark.parametrize("manifest,message", [
    (b"{not json", "manifest.json: not JSON"),
    (b'{"schema": "other"}', "not a magpie-trace manifest"),
    (b'{"schema": "magpie-trace/manifest/1", "files": [{"file": "missing.json.gz"}]}', "lists missing.json.gz"),
])
def test_bad_manifest_is_named(tmp_path, manifest, message):
    (tmp_path / "manifest.json").write_bytes(manifest)
    with pytest.raises(TraceError, match=message):
        discover(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(TraceError, match="no trace files"):
        discover(tmp_path)
