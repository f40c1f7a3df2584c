"""Launch the sim on 2 and 4 nodes through the local, ssh and Ray backends, profile under load,
collect: exactly one correctly named, verified file per rank (plus the API server's) and the
manifest; a broken source (missing, cut short, duplicated) gives one line naming node and rank."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Self

import pytest

from magpie_trace import trace_probe
from magpie_trace.backends import make_backend
from magpie_trace.collect import collect
from magpie_trace.errors import MagpieError, TraceError
from magpie_trace.launch import launch, stop
from magpie_trace.plan import make_plan
from magpie_trace.profile import capture, load_captures, start_profile, stop_profile
from magpie_trace.rundir import new_run_dir
from tests.launch.simcluster import local_scheduler, sim_config


def complete(url: str, max_tokens: int = 8) -> None:
    body = json.dumps({"model": "sim-model", "prompt": "hello", "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


class Load:
    """Requests in a loop while the capture is open, so the ranks have steps to record."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(10_000):  # bounded
            if self.done.is_set():
                return
            complete(self.url)
            self.count += 1

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)


@pytest.fixture
def scheduler_for(request, tmp_path):
    kind = request.param

    def make(nodes: int):
        if kind == "local":
            return local_scheduler(tmp_path, nodes), lambda: None
        if kind == "ssh":
            return request.getfixturevalue("ssh_scheduler")(nodes), lambda: None
        cluster = request.getfixturevalue("ray_cluster")
        added = [f"n{i}" for i in range(len(cluster.labels), nodes)]
        for label in added:
            cluster.add_node(label)

        def cleanup() -> None:
            for label in added:
                cluster.remove_node(label)

        chosen = cluster.nodes()[:nodes]
        for node in chosen:  # every Ray node here is 127.0.0.1: a workdir apiece tells them apart
            node.workdir = str(tmp_path / "nodes" / node.name)
        return cluster.scheduler(str(tmp_path / "nodes"), chosen), cleanup

    return make


@pytest.mark.parametrize("scheduler_for", ["local", "ssh", "ray"], indirect=True)
@pytest.mark.parametrize("nodes", [2, 4])
def test_profile_and_collect_every_rank(scheduler_for, tmp_path, nodes):
    scheduler, cleanup = scheduler_for(nodes)
    try:
        _profile_and_collect(scheduler, tmp_path, nodes)
    finally:
        cleanup()


def _profile_and_collect(scheduler, tmp_path: Path, nodes: int) -> None:
    config = sim_config(scheduler, tmp_path, ranks_per_node=2, profile=True)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    launch(plan, run_dir, backend)
    try:
        with Load(plan.head_url) as load:
            record = capture(plan, backend, run_dir, duration_s=0.5)
        assert load.count > 0
        assert [c["profile_id"] for c in load_captures(run_dir)] == [record.profile_id]
        assert sum(t.kind == "rank" for t in record.traces) == 2 * nodes
        sources = [Path(t.path) for t in record.traces]  # every "node" is this machine
        before = {p: (p.stat().st_mtime_ns, trace_probe.sha256_file(p)) for p in sources}

        result = collect(plan, backend, run_dir)
        expected = {f"node{r // 2}-TP{r}.trace.json.gz" for r in range(2 * nodes)}
        expected |= {"node0-api-server.trace.json.gz", "manifest.json"}
        assert {p.name for p in run_dir.traces.iterdir()} == expected
        files = result.manifest["files"]
        assert result.fetched == len(files) == 2 * nodes + 1
        for entry in files:
            copy = run_dir.traces / entry["file"]
            assert trace_probe.sha256_file(copy) == entry["sha256"]
            assert copy.stat().st_size == entry["size"]
            assert entry["node_name"] == plan.nodes[entry["node"]].name
            if entry["kind"] == "rank":
                probe = trace_probe.probe(str(copy))
                assert probe["rank"] == entry["global_rank"] == entry["tp_rank"]
                assert entry["node"] == entry["global_rank"] // 2
                assert entry["source_name"].startswith(record.profile_id + "_dp0_pp0_tp")
        assert {p: (p.stat().st_mtime_ns, trace_probe.sha256_file(p)) for p in sources} == before

        if nodes == 2:  # the checks of broken sources need not be repeated on 4 nodes
            _broken_sources_are_named(plan, backend, run_dir, record, nodes)

        # A second capture gets its own id; collecting it replaces the first's files.
        second = capture(plan, backend, run_dir, duration_s=0.2)
        assert second.profile_id != record.profile_id
        assert collect(plan, backend, run_dir).fetched == len(files)
    finally:
        stop(plan, run_dir, backend)
        backend.close()


def _broken_sources_are_named(plan, backend, run_dir, record, nodes: int) -> None:
    """Break the last node's rank file three ways (restoring it after each)."""
    last = nodes - 1
    rank = 2 * nodes - 1
    trace = next(t for t in record.traces if t.rank and t.rank.global_rank == rank)
    source = Path(trace.path)
    keep = source.parent / ".keep"
    shutil.copyfile(source, keep)
    prefix = f"capture {record.profile_id}: {plan.nodes[last].name}: "
    try:
        source.unlink()
        with pytest.raises(TraceError) as info:
            collect(plan, backend, run_dir)
        assert str(info.value) == prefix + f"no trace for rank {rank} (TP{rank})"

        source.write_bytes(keep.read_bytes()[:-40])  # a cut copy
        with pytest.raises(TraceError) as info:
            collect(plan, backend, run_dir)
        assert str(info.value) == (
            prefix + f"rank {rank} (TP{rank}): {source} is truncated (the gzip stream has no end)"
        )

        shutil.copyfile(keep, source)
        twin = source.with_name(source.name.replace(".pt.trace", "9.pt.trace"))
        shutil.copyfile(keep, twin)
        with pytest.raises(TraceError) as info:
            collect(plan, backend, run_dir)
        assert str(info.value).startswith(prefix + f"rank {rank} (TP{rank}) has two traces: ")
        twin.unlink()
    finally:
        shutil.copyfile(keep, source)
        keep.unlink()
    # After a failed collection the run's traces folder still holds only whole, verified files.
    result = collect(plan, backend, run_dir)
    assert (result.fetched, result.reused) == (0, len(result.manifest["files"]))


def test_second_start_while_open_is_refused_and_profiling_must_be_armed(tmp_path):
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path, profile=True)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    launch(plan, run_dir)
    try:
        start_profile(plan, "one")
        with pytest.raises(MagpieError, match=r"/start_profile: 409: a capture is already open"):
            start_profile(plan, "two")
        stop_profile(plan)
    finally:
        stop(plan, run_dir)
    unarmed = make_plan(sim_config(local_scheduler(tmp_path, 2), tmp_path, profile=False))
    with pytest.raises(MagpieError, match="profile.enabled is false"):
        start_profile(unarmed, "one")


def test_step_window_closes_the_capture_without_a_duration(tmp_path):
    """profile.max_iterations set and no duration: capture waits until every rank has written its
    window, then closes the session (vLLM still wants /stop_profile) and collects the API server's."""
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path, profile=True)
    config.profile.max_iterations = 4
    config.profile.duration_s = 60.0  # would make this test slow if it were used
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    launch(plan, run_dir, backend)
    try:
        with Load(plan.head_url):
            started = time.monotonic()
            record = capture(plan, backend, run_dir)
            took = time.monotonic() - started
        assert took < 20
        assert sorted(t.kind for t in record.traces) == ["api_server", "rank", "rank"]
        assert record.stopped_at is not None
        start_profile(plan, "after-window")  # the session was closed: a new one opens
        stop_profile(plan)
    finally:
        stop(plan, run_dir, backend)


def test_a_failed_capture_does_not_lend_its_id_to_the_next(tmp_path):
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path, profile=True)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    launch(plan, run_dir, backend)
    try:
        # A stray file claiming capture p1's rank 1 makes that capture fail (two traces).
        trace_dir = Path(plan.nodes[1].trace_dir)
        trace_dir.mkdir(parents=True, exist_ok=True)
        stray = trace_dir / f"{plan.run_id}-p1_dp0_pp0_tp1_dcp0_ep0_rank1.1.pt.trace.json.gz"
        stray.write_bytes(gzip.compress(b'{"traceEvents": []}'))
        with pytest.raises(TraceError, match=r"rank 1 \(TP1\) has two traces"):
            capture(plan, backend, run_dir, duration_s=0.1)
        ids = [c["profile_id"] for c in load_captures(run_dir)]
        assert len(ids) == 1 and ids[0].endswith("-p1")
        assert capture(plan, backend, run_dir, duration_s=0.1).profile_id.endswith("-p2")
    finally:
        stop(plan, run_dir, backend)
