"""The GPU sampler through real backends: local (with recorded nvidia-smi / amd-smi output replayed
by a stand-in program on PATH, since these machines have no GPU) and ssh (real sshd)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from magpie_trace.awake import AWAKE
from magpie_trace.backends import make_backend
from magpie_trace.bench.telemetry import NodeSampler, detect_source
from magpie_trace.bench.watchdog import Watchdog
from magpie_trace.config import NodeConfig, SchedulerConfig

DATA = Path(__file__).parent / "data"


def stand_in(tmp_path: Path, tool: str, recorded: str) -> Path:
    """A directory holding `tool`, a script that prints a recorded output file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / tool
    script.write_text(f"#!/bin/sh\ncat '{DATA / recorded}'\n")
    script.chmod(0o755)
    return bin_dir


def local_node(tmp_path: Path) -> tuple[object, NodeConfig]:
    scheduler = SchedulerConfig(backend="local", nodes=[NodeConfig(host="127.0.0.1", name="node0")],
                                workdir=str(tmp_path / "nodes"))
    return make_backend(scheduler), scheduler.nodes[0]


@pytest.mark.parametrize(
    ("tool", "recorded", "util"),
    [("nvidia-smi", "nvidia-smi-h100.csv", [97, 0]), ("amd-smi", "amd-smi-26-gpu_data.json", [100, 100])],
)
def test_local_sampler_reads_the_tool_the_node_has(tmp_path, monkeypatch, tool, recorded, util):
    monkeypatch.setenv("PATH", f"{stand_in(tmp_path, tool, recorded)}:/usr/bin:/bin")
    backend, node = local_node(tmp_path)
    sampler = NodeSampler(backend, node, interval_s=0.1)
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sampler.stop()
    assert sampler.source == tool
    assert len(sampler.samples) >= 3 and sampler.failures == 0
    summary = sampler.summary()
    assert [g["util_pct_mean"] for g in summary["gpus"].values()] == util


def test_cpu_node_says_so_and_is_still_polled(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    backend, node = local_node(tmp_path)
    assert detect_source(backend, node) == ("none", "no nvidia-smi; no amd-smi")
    sampler = NodeSampler(backend, node, interval_s=0.1)
    sampler.start()
    time.sleep(0.5)
    sampler.stop()
    assert sampler.summary()["note"] == "no nvidia-smi; no amd-smi"
    assert AWAKE.now() - sampler.last_ok < 0.5 and sampler.failures == 0


def test_ssh_node_sampled_then_lost_trips_the_watchdog(ssh_scheduler):
    scheduler = ssh_scheduler(1)
    backend = make_backend(scheduler)
    node = scheduler.nodes[0]
    handle = backend.start(node, ["sleep", "60"], {}, f"{backend.workdir(node)}/sleep.log")
    port = node.ssh_port
    try:
        sampler = NodeSampler(backend, node, interval_s=0.2)
        sampler.start()
        time.sleep(0.6)
        assert sampler.failures == 0 and sampler.source in ("none", "nvidia-smi", "amd-smi")
        watchdog = Watchdog(head="node0", stall_timeout_s=30, backend=backend, nodes={node.name: node},
                            handles={node.name: handle}, samplers={node.name: sampler}, silence_s=1.5)
        assert watchdog.check_processes() is None  # alive, checked over ssh
        node.ssh_port = 1  # the node's sshd is now unreachable: every sample and check fails
        lost = watchdog.check_processes()
        deadline = time.monotonic() + 15
        trip = None
        while trip is None and time.monotonic() < deadline:
            trip = watchdog.check_telemetry()
            time.sleep(0.1)
        sampler.stop()
    finally:
        node.ssh_port = port
        backend.stop(node, handle, grace_s=1)
        backend.close()
    assert lost is not None and lost.node == node.name and lost.reason.startswith("cannot check its process")
    assert trip is not None and trip.node == node.name
    assert trip.reason.startswith("telemetry silent for") and sampler.failures > 0


def test_ray_node_sampled_then_removed_trips_the_watchdog(ray_cluster, tmp_path):
    from tests.fixtures.ray_cluster import LABEL

    ray_cluster.add_node("bench-n9")
    node = NodeConfig(host="127.0.0.1", name="bench-n9", ray_labels={LABEL: "bench-n9"})
    backend = make_backend(ray_cluster.scheduler(str(tmp_path / "ray-nodes"), nodes=[node]))
    try:
        sampler = NodeSampler(backend, node, interval_s=0.3)
        sampler.start()
        time.sleep(1.0)
        assert sampler.failures == 0 and AWAKE.now() - sampler.last_ok < 1.0
        assert sampler.source == "none"  # a CPU "node": said plainly
        assert "no nvidia-smi" in sampler.summary()["note"]
        ray_cluster.remove_node("bench-n9")
        watchdog = Watchdog(head="head", stall_timeout_s=30, samplers={node.name: sampler}, silence_s=2.0)
        trip = None
        deadline = time.monotonic() + 20
        while trip is None and time.monotonic() < deadline:
            trip = watchdog.check_telemetry()
            time.sleep(0.1)
        sampler.stop()
    finally:
        backend.close()
    assert trip is not None and trip.node == "bench-n9"
    assert trip.reason.startswith("telemetry silent for") and "gone" in trip.reason
