"""find/wait/collect on real vLLM traces placed in each node's trace dir (local backend, no server).

The two rank files of tests/data/traces/vllm-cpu-tp2-2node come from a real vLLM TP=2 across two
"nodes" (CPU worker names `rank{R}`, distributedInfo rank 0 and 1 of 2); here they are laid out as
that run left them: rank 0 and the API server's trace in node0's trace dir, rank 1 in node1's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest

from magpie_trace import trace_probe
from magpie_trace.backends import make_backend
from magpie_trace.collect import collect
from magpie_trace.config import (
    Config,
    NodeConfig,
    OutputConfig,
    ProfileConfig,
    SchedulerConfig,
    ServerConfig,
    validate,
)
from magpie_trace.errors import TraceError
from magpie_trace.plan import Plan, make_plan
from magpie_trace.profile import find_traces, wait_for_traces
from magpie_trace.rundir import RunDir, new_run_dir
from tests.real_traces import vllm_cpu as real

PID = "run1-p1"


def make(tmp_path: Path, shared: bool = False) -> tuple[Plan, RunDir]:
    config = Config(
        scheduler=SchedulerConfig(
            backend="local", nodes=[NodeConfig(host="127.0.0.1"), NodeConfig(host="127.0.0.1")],
            gpus_per_node=1, workdir=str(tmp_path / "nodes"),
            shared_dir=str(tmp_path / "shared") if shared else None,
        ),
        server=ServerConfig(engine="vllm", model="/models/tiny", tp=2),
        profile=ProfileConfig(enabled=True),
        output=OutputConfig(dir=str(tmp_path / "runs")),
        source="test-config",
    )
    validate(config)
    plan = make_plan(config, run_id="run1")
    return plan, new_run_dir(config.output.dir, plan.run_id)


def place(plan: Plan, node: int, source: Path, name: str) -> Path:
    trace_dir = Path(plan.nodes[node].trace_dir)
    trace_dir.mkdir(parents=True, exist_ok=True)
    target = trace_dir / name
    shutil.copyfile(source, target)
    return target


def place_run(plan: Plan) -> dict[str, Path]:
    """The files of one capture, named as vLLM's CPU worker and API server name them."""
    return {
        "rank0": place(plan, 0, real("rank0.*"), f"{PID}_rank0.1795388698351020595.pt.trace.json.gz"),
        "api": place(plan, 0, real("vm_*"), f"{PID}_vm_9937.async_llm.1795388698147209012.pt.trace.json.gz"),
        "rank1": place(plan, 1, real("rank1.*"), f"{PID}_rank1.1795388698376534517.pt.trace.json.gz"),
    }


def fingerprint(paths) -> dict[str, tuple[int, int, str]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, trace_probe.sha256_file(p)) for p in paths}


@pytest.fixture
def setup(tmp_path):
    plan, run_dir = make(tmp_path)
    backend = make_backend(plan.config.scheduler)
    return plan, run_dir, backend, place_run(plan)


def test_collect_names_verifies_and_writes_manifest(setup):
    plan, run_dir, backend, sources = setup
    before = fingerprint(sources.values())
    result = collect(plan, backend, run_dir, PID)
    assert sorted(p.name for p in run_dir.traces.iterdir()) == [
        "manifest.json", "node0-TP0.trace.json.gz", "node0-api-server.trace.json.gz",
        "node1-TP1.trace.json.gz",
    ]
    assert (result.fetched, result.reused) == (3, 0)
    manifest = orjson.loads((run_dir.traces / "manifest.json").read_bytes())
    assert manifest == result.manifest
    assert {k: manifest[k] for k in ("schema", "run_id", "engine", "engine_version", "world_size",
                                     "tp", "pp", "dp", "ep", "gpus_per_node", "clock_offsets_ns")} == {
        "schema": "magpie-trace/manifest/1", "run_id": "run1", "engine": "vllm",
        "engine_version": None, "world_size": 2, "tp": 2, "pp": 1, "dp": 1, "ep": 1,
        "gpus_per_node": 1, "clock_offsets_ns": {},
    }
    by_file = {entry["file"]: entry for entry in manifest["files"]}
    rank1 = by_file["node1-TP1.trace.json.gz"]
    assert rank1 == {
        "file": "node1-TP1.trace.json.gz", "kind": "rank", "node": 1, "node_name": "node1",
        "host": "127.0.0.1", "global_rank": 1, "tp_rank": 1, "pp_rank": 0, "dp_rank": 0,
        "ep_rank": 0, "source_path": str(sources["rank1"]), "source_name": sources["rank1"].name,
        "size": sources["rank1"].stat().st_size, "sha256": trace_probe.sha256_file(sources["rank1"]),
    }
    api = by_file["node0-api-server.trace.json.gz"]
    assert api["kind"] == "api_server" and api["global_rank"] is None and api["node"] == 0
    for entry in manifest["files"]:
        copy = run_dir.traces / entry["file"]
        assert trace_probe.sha256_file(copy) == entry["sha256"]
        assert copy.read_bytes() == Path(entry["source_path"]).read_bytes()
    assert fingerprint(sources.values()) == before  # sources only read


def test_manifest_takes_version_and_clock_offsets_from_preflight(setup):
    plan, run_dir, backend, _sources = setup
    run_dir.preflight.write_bytes(orjson.dumps({
        "nodes": [{"node": "node0", "engine_version": "0.32.0"}, {"node": "node1", "engine_version": "0.32.0"}],
        "clock_offsets_ns": {"node0": 0, "node1": 250_000_000},
    }))
    manifest = collect(plan, backend, run_dir, PID).manifest
    assert manifest["engine_version"] == "0.32.0"
    assert manifest["clock_offsets_ns"] == {"0": 0, "1": 250_000_000}


def test_rerun_fetches_only_what_is_missing_or_different(setup):
    plan, run_dir, backend, _sources = setup
    collect(plan, backend, run_dir, PID)
    kept = run_dir.traces / "node0-api-server.trace.json.gz"
    kept_stat = kept.stat()
    (run_dir.traces / "node1-TP1.trace.json.gz").unlink()  # a collection cut short
    damaged = run_dir.traces / "node0-TP0.trace.json.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    result = collect(plan, backend, run_dir, PID)
    assert (result.fetched, result.reused) == (2, 1)
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (kept_stat.st_ino, kept_stat.st_mtime_ns)
    for entry in result.manifest["files"]:
        assert trace_probe.sha256_file(run_dir.traces / entry["file"]) == entry["sha256"]
    assert not [p for p in run_dir.traces.iterdir() if p.name.startswith(".")]  # no temp files left


def test_missing_rank_names_node_and_rank(setup):
    plan, run_dir, backend, sources = setup
    sources["rank1"].unlink()
    with pytest.raises(TraceError) as info:
        collect(plan, backend, run_dir, PID)
    assert str(info.value) == f"capture {PID}: node1: no trace for rank 1 (TP1)"
    assert not (run_dir.traces / "manifest.json").exists()


def test_truncated_copy_names_node_and_file(setup):
    plan, run_dir, backend, sources = setup
    data = sources["rank1"].read_bytes()
    sources["rank1"].write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError) as info:
        collect(plan, backend, run_dir, PID)
    message = str(info.value)
    assert message.startswith(f"capture {PID}: node1: rank 1 (TP1): {sources['rank1']} is truncated")
    assert "\n" not in message and "more" not in message


def test_duplicate_names_node_and_rank(setup):
    plan, run_dir, backend, sources = setup
    second = place(plan, 1, real("rank1.*"), f"{PID}_rank1.1795388699999999999.pt.trace.json.gz")
    with pytest.raises(TraceError) as info:
        collect(plan, backend, run_dir, PID)
    assert str(info.value) == (
        f"capture {PID}: node1: rank 1 (TP1) has two traces: {sources['rank1']} and {second}"
    )


def test_file_on_the_wrong_node_is_a_conflict(setup):
    plan, run_dir, backend, _sources = setup
    stray = place(plan, 0, real("rank1.*"), f"{PID}_rank1.1795388698376534517.pt.trace.json.gz")
    with pytest.raises(TraceError) as info:
        collect(plan, backend, run_dir, PID)
    assert str(info.value) == (
        f"capture {PID}: node0: {stray} is named as rank 1 (TP1), which the plan puts on node1, not here"
    )


def test_name_and_distributed_info_disagree(setup):
    plan, run_dir, backend, sources = setup
    shutil.copyfile(real("rank1.*"), sources["rank0"])  # rank 1's contents under rank 0's name
    with pytest.raises(TraceError) as info:
        collect(plan, backend, run_dir, PID)
    assert str(info.value) == (
        f"capture {PID}: node0: {sources['rank0']}: its name says rank 0 (TP0) but its "
        "distributedInfo says rank 1 of 2"
    )


def test_other_captures_are_left_alone(setup):
    plan, _run_dir, backend, _sources = setup
    place(plan, 1, real("rank1.*"), "run1-p10_rank1.1.pt.trace.json.gz")
    place(plan, 1, real("rank1.*"), "rank1.2.pt.trace.json.gz")
    traces, missing, _problems = find_traces(plan, backend, PID)
    assert [t.name.split("_")[0] for t in traces] == [PID] * 3 and not missing


def test_wait_times_out_naming_missing_ranks_and_nodes(setup):
    plan, _run_dir, backend, sources = setup
    sources["rank1"].unlink()
    with pytest.raises(TraceError) as info:
        wait_for_traces(plan, backend, PID, timeout_s=1.0, poll_s=0.2)
    assert str(info.value) == f"capture {PID}: after 1 s: node1: no trace for rank 1 (TP1)"


def test_wait_returns_once_sizes_hold_still(setup):
    plan, _run_dir, backend, _sources = setup
    traces = wait_for_traces(plan, backend, PID, timeout_s=10.0, poll_s=0.1)
    assert [(t.node_name, t.kind, t.rank.global_rank if t.rank else None) for t in traces] == [
        ("node0", "rank", 0), ("node0", "api_server", None), ("node1", "rank", 1)
    ]
    assert [t.distributed_rank for t in traces] == [0, None, 1]


def test_shared_dir_links_without_the_backend(tmp_path):
    plan, run_dir = make(tmp_path, shared=True)
    assert plan.nodes[1].trace_dir.startswith(str(tmp_path / "shared"))
    sources = place_run(plan)
    before = fingerprint(sources.values())

    class NoBackend:  # a shared dir is read here; the backend must not be asked for anything
        def __getattr__(self, name):
            raise AssertionError(f"backend.{name} used")

    result = collect(plan, NoBackend(), run_dir, PID)  # type: ignore[arg-type]
    assert result.fetched == 3
    copy = run_dir.traces / "node1-TP1.trace.json.gz"
    assert os.path.samefile(copy, sources["rank1"])  # same filesystem: a hard link, no copy
    assert fingerprint(sources.values()) == before
    assert collect(plan, NoBackend(), run_dir, PID).reused == 3  # type: ignore[arg-type]
