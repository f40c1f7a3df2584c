"""Start sim nodes as real subprocesses on 127.0.0.1 (each in its own session) and stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from magpie_trace.ports import free_port  # noqa: F401  (used by the sim tests)


def group_gone(pid: int) -> bool:
    """True once no process is left in the process group `pid` leads."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class SimCluster:
    """A head and nnodes-1 headless sim nodes; node i hosts global ranks i*k .. i*k+k-1."""

    def __init__(self, root: Path, *, nnodes: int = 1, tp: int = 1, pp: int = 1, dp: int = 1,
                 ttft_ms: float = 20, itl_ms: float = 5, startup_s: float = 0.2,
                 offsets_ms: dict[int, float] | None = None,
                 die_after_s: dict[int, float] | None = None, profile: bool = True,
                 layers: int = 4, extra: list[str] | None = None,
                 head_extra: list[str] | None = None) -> None:
        self.root = root
        self.nnodes = nnodes
        self.port = free_port()
        self.rendezvous = f"127.0.0.1:{free_port()}"
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        world = tp * pp * dp
        per_node = world // nnodes
        self.ranks = {i: list(range(i * per_node, (i + 1) * per_node)) for i in range(nnodes)}
        self.common = ["--model", "sim-model", "--nnodes", str(nnodes), "--tp", str(tp),
                       "--pp", str(pp), "--dp", str(dp), "--rendezvous", self.rendezvous,
                       "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms),
                       "--startup-s", str(startup_s), "--layers", str(layers)]
        self.offsets_ms = offsets_ms or {}
        self.die_after_s = die_after_s or {}
        self.profile = profile
        self.extra = list(extra or [])  # arguments for every node (e.g. a PD role)
        self.head_extra = list(head_extra or [])  # arguments for the head only

    def profile_dir(self, node: int) -> Path:
        return self.root / f"node{node}" / "traces"

    def log(self, node: int) -> str:
        return (self.root / f"node{node}" / "log.txt").read_text()

    def argv(self, node: int) -> list[str]:
        argv = [sys.executable, "-m", "magpie_trace.engines.sim", "serve", *self.common,
                "--node-rank", str(node), "--ranks", ",".join(map(str, self.ranks[node]))]
        argv += ["--headless"] if node else ["--host", "127.0.0.1", "--port", str(self.port)]
        if node in self.offsets_ms:
            argv += ["--clock-offset-ms", str(self.offsets_ms[node])]
        if node in self.die_after_s:
            argv += ["--die-after-s", str(self.die_after_s[node])]
        if self.profile:
            argv += ["--profile-dir", str(self.profile_dir(node))]
        return argv + self.extra + ([] if node else self.head_extra)

    def start(self, nodes: list[int] | None = None) -> SimCluster:
        for node in range(self.nnodes) if nodes is None else nodes:
            (self.root / f"node{node}").mkdir(parents=True, exist_ok=True)
            with open(self.root / f"node{node}" / "log.txt", "wb") as log:
                self.processes[node] = subprocess.Popen(
                    self.argv(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def health(self) -> int | None:
        """The head's /health status, or None while it refuses connections."""
        try:
            with urllib.request.urlopen(self.url("/health"), timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except (ConnectionError, urllib.error.URLError):
            return None

    def wait_ready(self, timeout: float = 20) -> SimCluster:
        def ready() -> bool:
            for node, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"node {node} exited {process.returncode}:\n{self.log(node)}")
            return self.health() == 200

        wait_for(ready, timeout, "the head's /health")
        return self

    def stop(self) -> None:
        """SIGTERM every node's process group, then SIGKILL whatever is left of it."""
        for process in self.processes.values():
            if not group_gone(process.pid):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in self.processes.values():
            while not group_gone(process.pid) and time.monotonic() < deadline:
                process.poll()
                time.sleep(0.05)
            if not group_gone(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator:
    """A factory of started SimClusters, all stopped at the end of the test."""
    clusters: list[SimCluster] = []

    def make(**options: object) -> SimCluster:
        cluster = SimCluster(tmp_path / f"cluster{len(clusters)}", **options)  # type: ignore[arg-type]
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()
