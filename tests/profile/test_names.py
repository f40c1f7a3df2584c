"""Trace file names of every engine, the collected names, profile ids, request bodies, and the
file probe on real Kineto traces (complete, cut short, distributedInfo before or after events)."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from magpie_trace import trace_probe
from magpie_trace.collect import output_name, tracelens_command
from magpie_trace.config import ProfileConfig
from magpie_trace.engines import get_engine
from magpie_trace.errors import ConfigError
from magpie_trace.profile import FoundTrace, check_profile_id
from magpie_trace.topology import Layout, Rank
from tests.real_traces import vllm_cpu as real



@pytest.mark.parametrize(
    "name, kind, prefix, fields",
    [
        ("run-p1_dp1_pp0_tp3_dcp0_ep7_rank3.1795388698351020595.pt.trace.json.gz", "rank", "run-p1",
         {"dp": 1, "pp": 0, "tp": 3, "ep": 7, "rank_in_dp": 3}),
        ("dp0_pp0_tp0_dcp0_ep0_rank0.17.pt.trace.json.gz", "rank", None,
         {"dp": 0, "tp": 0, "rank_in_dp": 0}),
        # The CPU worker: `rank{R}` only, R inside the DP replica.
        ("run.2_rank1.1795388698376534517.pt.trace.json.gz", "rank", "run.2",
         {"rank_in_dp": 1, "tp": None, "dp": None}),
        ("rank0.1795388698351020595.pt.trace.json.gz", "rank", None, {"rank_in_dp": 0}),
        ("vm_9937.async_llm.1795388698147209012.pt.trace.json.gz", "api_server", None,
         {"host": "vm", "pid": 9937}),
        ("r-1_gpu-host.example_12.async_llm.5.pt.trace.json.gz", "api_server", "r-1",
         {"host": "gpu-host.example", "pid": 12}),
    ],
)
def test_vllm_and_sim_names(name, kind, prefix, fields):
    for engine in ("vllm", "sim"):
        parsed = get_engine(engine).parse_trace_name(name)
        assert parsed is not None and parsed.kind == kind and parsed.profile_id == prefix
        for key, value in fields.items():
            assert getattr(parsed, key) == value, key


@pytest.mark.parametrize(
    "name",
    ["rank0.profiler_out.txt", "run_dp0_pp0_tp0_dcp0_ep0_rank0.profiler_out.txt",
     "graph_capture_rank_0.1.pt.trace.json.gz.tmp", "rank0.pt.trace.json.gz"],
)
def test_vllm_ignores_other_files(name):
    assert get_engine("vllm").parse_trace_name(name) is None


@pytest.mark.parametrize(
    "name, head, fields",
    [
        ("20240101-120000-p1-TP-3.trace.json.gz", "20240101-120000-p1",
         {"tp": 3, "dp": None, "pp": None, "ep": None, "stage": None}),
        ("run-TP-3-DP-1-PP-2-EP-4.trace.json.gz", "run", {"tp": 3, "dp": 1, "pp": 2, "ep": 4}),
        ("run-TP-0-PP-1.trace.json.gz", "run", {"tp": 0, "dp": None, "pp": 1}),
        ("run-TP-5-EXTEND.trace.json.gz", "run", {"tp": 5, "stage": "EXTEND"}),
        ("1718000000.25-TP-0-decode.trace.json.gz", "1718000000.25", {"stage": "decode"}),
    ],
)
def test_sglang_names(name, head, fields):
    parsed = get_engine("sglang").parse_trace_name(name)
    assert parsed is not None and parsed.kind == "rank" and parsed.profile_id == head
    for key, value in fields.items():
        assert getattr(parsed, key) == value, key


@pytest.mark.parametrize(
    "name", ["merged-run.trace.json.gz", "run-TP-0-memory.pickle", "run-TP-0.pt.trace.json"]
)
def test_sglang_ignores_other_files(name):
    assert get_engine("sglang").parse_trace_name(name) is None


def test_patterns_keep_captures_apart():
    import fnmatch

    for engine, mine, other in [
        ("vllm", "run-p1_dp0_pp0_tp0_dcp0_ep0_rank0.1.pt.trace.json.gz",
         "run-p10_dp0_pp0_tp0_dcp0_ep0_rank0.1.pt.trace.json.gz"),
        ("sglang", "run-p1-TP-0.trace.json.gz", "run-p10-TP-0.trace.json.gz"),
    ]:
        patterns = get_engine(engine).trace_patterns("run-p1")
        assert any(fnmatch.fnmatchcase(mine, p) for p in patterns)
        assert not any(fnmatch.fnmatchcase(other, p) for p in patterns)


def test_start_bodies_carry_the_id_and_window():
    profile = ProfileConfig(enabled=True, delay_iterations=2, max_iterations=5, start_step=7,
                            num_steps=3, activities=["CPU", "CUDA"], record_shapes=True)
    vllm = get_engine("vllm").start_profile_call(profile, "run-p1")
    assert (vllm.method, vllm.path) == ("POST", "/start_profile")
    assert vllm.body == {"profile_prefix": "run-p1", "delay_iterations": 2, "max_iterations": 5}
    sglang = get_engine("sglang").start_profile_call(profile, "run-p1")
    assert sglang.body == {"profile_id": "run-p1", "with_stack": False, "record_shapes": True,
                           "activities": ["CPU", "GPU"], "start_step": 7, "num_steps": 3}
    assert get_engine("sglang").stop_needed(profile) is False
    assert get_engine("vllm").stop_needed(profile) is True
    assert get_engine("vllm").start_profile_call(ProfileConfig(), "x").body == {"profile_prefix": "x"}


@pytest.mark.parametrize("bad", ["", "_x", "a_b", "a/b", "-a", "x" * 129, "a b"])
def test_profile_id_refused(bad):
    with pytest.raises(ConfigError, match="profile id"):
        check_profile_id(bad)


def _trace(node: int, rank: Rank | None) -> FoundTrace:
    return FoundTrace(node, f"node{node}", "h", "/p", "n", "rank" if rank else "api_server",
                      rank, 1, "0" * 64)


def test_output_names_add_dp_pp_only_above_one():
    rank = Rank(global_rank=13, node=1, local_rank=5, tp=1, pp=1, dp=1, ep=0)
    tp_only = Layout(tp=8, pp=1, dp=1, ep=1, nnodes=2, ranks_per_node=4)
    assert output_name(_trace(1, rank), tp_only) == "node1-TP1.trace.json.gz"
    assert output_name(_trace(1, rank), Layout(2, 2, 4, 1, 2, 8)) == "node1-TP1-DP1-PP1.trace.json.gz"
    assert output_name(_trace(1, rank), Layout(2, 1, 4, 1, 2, 4)) == "node1-TP1-DP1.trace.json.gz"
    assert output_name(_trace(0, None), tp_only) == "node0-api-server.trace.json.gz"


def test_tracelens_command_only_where_tp_is_the_global_rank(tmp_path):
    files = [{"kind": "rank", "node": n} for n in (0, 0, 1, 1)] + [{"kind": "api_server", "node": 0}]
    manifest = {"dp": 1, "pp": 1, "world_size": 4, "files": files}
    command = tracelens_command(manifest, tmp_path)
    assert command is not None
    assert "--rank_regex 'TP(?P<rank>\\d+)'" in command and "--world_size 4" in command
    assert "--gpus_per_node 2" in command and f"'{tmp_path}/node*-TP*.trace.json.gz'" in command
    assert tracelens_command({**manifest, "dp": 2}, tmp_path) is None


def test_tracelens_regex_maps_collected_names_to_ranks():
    import re

    pattern = re.compile(r"TP(?P<rank>\d+)")
    names = [f"node{n}-TP{r}.trace.json.gz" for n, r in ((0, 0), (0, 1), (1, 2), (1, 3))]
    assert [int(pattern.search(n)["rank"]) for n in names] == [0, 1, 2, 3]
    assert pattern.search("node0-api-server.trace.json.gz") is None


# ---- the probe, on real traces ------------------------------------------------------------


def test_probe_real_trace_complete_with_rank():
    path = real("rank1.*")
    result = trace_probe.probe(str(path))
    assert result["complete"] and result["error"] is None
    assert result["size"] == path.stat().st_size
    assert result["sha256"] == trace_probe.sha256_file(path)
    assert (result["rank"], result["world_size"]) == (1, 2)


def test_probe_cut_copy_is_truncated(tmp_path):
    data = real("rank0.*").read_bytes()
    cut = tmp_path / "cut.gz"
    for keep in (len(data) - 8, len(data) // 2, 100):
        cut.write_bytes(data[:keep])
        result = trace_probe.probe(str(cut))
        assert not result["complete"] and "truncated" in result["error"], keep


def test_probe_finds_distributed_info_after_events(tmp_path):
    trace = json.loads(gzip.decompress(real("rank1.*").read_bytes()))
    info = trace.pop("distributedInfo")
    trace["distributedInfo"] = info  # now the last key, after traceEvents
    path = tmp_path / "after.json.gz"
    text = json.dumps(trace).encode()
    assert text.index(b'"traceEvents"') < text.index(b'"distributedInfo"')
    path.write_bytes(gzip.compress(text))
    result = trace_probe.probe(str(path))
    assert result["complete"] and (result["rank"], result["world_size"]) == (1, 2)


def test_probe_reads_a_gzip_made_of_two_members(tmp_path):
    data = gzip.decompress(real("rank0.*").read_bytes())
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    result = trace_probe.probe(str(path))
    assert result["complete"] and result["rank"] == 0


def test_probe_not_gzip_and_missing(tmp_path):
    plain = tmp_path / "plain.json.gz"
    shutil.copyfile(real("vm_*"), tmp_path / "ok.gz")
    plain.write_bytes(b'{"traceEvents": []}')
    assert "not a valid gzip" in trace_probe.probe(str(plain))["error"]
    assert trace_probe.probe(str(tmp_path / "nope"))["error"] == "missing"
    api = trace_probe.probe(str(tmp_path / "ok.gz"))
    assert api["complete"] and api["rank"] is None
