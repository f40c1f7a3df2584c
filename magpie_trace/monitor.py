"""Watch every node through one long-lived channel: the node_monitor streaming its state.

One NodeMonitor per node reads the stream in a thread and keeps what the checks need: when the
node last answered, the engine's process tree (which processes are its ranks, by the engine's
own process titles), and the GPU samples. A check is then a look at memory, never a remote
command: the watchdog can look every 50 ms at no cost to the node.

What counts as lost, naming the node and the process:
- a rank process (or the engine's main process) is gone: killed, crashed;
- a rank process is stopped (state T: SIGSTOP, a debugger): the node is frozen, the others wait;
- the node has said nothing for `silence_s` (the machine is frozen or unreachable), or its
  channel ended.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from magpie_trace import node_monitor
from magpie_trace.awake import AWAKE
from magpie_trace.backends.base import Backend, LineStream, ProcessHandle
from magpie_trace.config import NodeConfig
from magpie_trace.engines import get_engine
from magpie_trace.errors import MagpieError
from magpie_trace.nodewatch import MAIN, Trip
from magpie_trace.plan import Plan

_SOURCE = Path(node_monitor.__file__).read_text()
STOPPED_STATES = ("T", "t")
FIRST_SAMPLE_S = 30.0


@dataclass
class Watched:
    """A process of the engine's tree whose end or stop loses the node."""

    pid: int
    start: str
    label: str


@dataclass
class NodeMonitor:
    """One node's stream and what it says about that node's engine."""

    backend: Backend
    node: NodeConfig
    handle: ProcessHandle | None
    python: str
    rank_process: Callable[[str], str | None]
    interval_s: float = 1.0
    silence_s: float = 10.0
    last_ok: float = field(default_factory=AWAKE.now)  # in AWAKE time: our own stalls are not its silence
    samples: int = 0
    gpu: list[dict[str, Any]] = field(default_factory=list)  # {"t", "source", "text"}
    watched: dict[int, Watched] = field(default_factory=dict)
    trip: Trip | None = None
    on_sample: Callable[["NodeMonitor", dict[str, Any]], None] | None = None
    _stream: LineStream | None = None
    _thread: threading.Thread | None = None
    _closing: bool = False

    def start(self) -> None:
        groups = [] if self.handle is None else [[self.handle.pgid, self._leader_start()]]
        options = {"groups": groups, "interval": self.interval_s}
        try:
            self._stream = self.backend.stream(
                self.node, [self.python, "-c", _SOURCE, orjson.dumps(options).decode()]
            )
        except MagpieError as exc:
            self.trip = Trip(self.node.name, f"cannot start its monitor: {exc}")
            return
        self.last_ok = AWAKE.now()
        self._thread = threading.Thread(target=self._read, name=f"monitor-{self.node.name}", daemon=True)
        self._thread.start()

    def _leader_start(self) -> str:
        assert self.handle is not None
        return str(self.handle.extra.get("starttime", ""))

    def _read(self) -> None:
        assert self._stream is not None
        while True:
            line = self._stream.readline()
            if line is None:
                if not self._closing and self.trip is None:
                    self.trip = Trip(self.node.name, f"its monitor channel ended: {self._stream.why_ended()}")
                return
            try:
                sample = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            self.last_ok = AWAKE.now()
            self.samples += 1
            if sample.get("gpu"):
                self.gpu.append({"t": sample["t"], **sample["gpu"]})
            if self.trip is None and self.handle is not None:
                self.trip = self._judge(sample.get("groups", {}).get(str(self.handle.pgid), []))
            if self.on_sample is not None:
                self.on_sample(self, sample)

    def _judge(self, procs: list[dict[str, Any]] | None) -> Trip | None:
        """What this sample of the engine's tree says: None while every watched process runs."""
        assert self.handle is not None
        name = self.node.name
        if procs is None:
            return Trip(name, f"engine process group {self.handle.pgid} is gone (its pid was reused)")
        by_pid = {p["pid"]: p for p in procs}
        leader = by_pid.get(self.handle.pid)
        # ssh and local run the engine under a `sh -c` wrapper that leads the group; Ray's group
        # leader is the engine itself (exec).
        wrapped = leader is None or leader["cmd"].startswith("sh -c ")
        for proc in procs:  # learn the tree: the engine's main process and every rank process
            if proc["pid"] in self.watched:
                continue
            label = self.rank_process(proc["cmd"])
            main = proc["ppid"] == self.handle.pid if wrapped else proc["pid"] == self.handle.pid
            if label is None and main:
                label = MAIN
            if label is not None:
                self.watched[proc["pid"]] = Watched(proc["pid"], proc["start"], label)
        gone = [w for w in self.watched.values() if _ended(by_pid.get(w.pid), w)]
        if gone:
            # A rank's death makes the main process exit, and the main's death its ranks: name a
            # rank, noting that the main went too; ProcessCheck tells which from its exit code.
            ranks = [w for w in gone if w.label != MAIN]
            first = ranks[0] if ranks else gone[0]
            main = next((w.pid for w in gone if w.label == MAIN and w is not first), None)
            return Trip(name, f"{first.label} {first.pid} exited", process=first.label,
                        pid=first.pid, main_pid=main)
        for watched in self.watched.values():
            if by_pid[watched.pid]["state"] in STOPPED_STATES:
                return Trip(name, f"{watched.label} {watched.pid} is stopped (SIGSTOP?): the node "
                                  "is frozen", process=watched.label, pid=watched.pid)
        if not procs:
            return Trip(name, f"engine process group {self.handle.pgid} has no process left")
        return None

    def check(self) -> Trip | None:
        if self.trip is not None:
            return self.trip
        silent = AWAKE.now() - self.last_ok
        # Its first sample waits for a python to start on the node: slow on a busy one.
        if silent > (self.silence_s if self.samples else max(self.silence_s, FIRST_SAMPLE_S)):
            return Trip(self.node.name, f"no status from the node for {silent:.0f} s "
                                        "(frozen or unreachable)")
        return None

    def stop(self) -> None:
        self._closing = True
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)


class Monitors:
    """A NodeMonitor on every node of a run; `check()` is the first lost node, from memory."""

    def __init__(
        self,
        backend: Backend,
        nodes: dict[str, NodeConfig],
        handles: dict[str, ProcessHandle],
        python: str,
        engine: str,
        interval_s: float = 1.0,
    ) -> None:
        rank_process = get_engine(engine).rank_process
        silence = max(10.0, 5 * interval_s)
        self.by_node = {
            name: NodeMonitor(backend, node, handles.get(name), python, rank_process, interval_s, silence)
            for name, node in nodes.items()
        }

    def __enter__(self) -> "Monitors":
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        threads = [threading.Thread(target=m.start, daemon=True) for m in self.by_node.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def wait_first_samples(self, timeout_s: float = 30.0) -> None:
        """Until every node has answered once (so the engine's tree is known), or timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(m.samples or m.trip for m in self.by_node.values()):
                return
            time.sleep(0.05)

    def check(self) -> Trip | None:
        for monitor in self.by_node.values():
            trip = monitor.check()
            if trip is not None:
                return trip
        return None

    def stop(self) -> None:
        for monitor in self.by_node.values():
            monitor.stop()


def _ended(proc: dict[str, Any] | None, watched: Watched) -> bool:
    return proc is None or proc["start"] != watched.start or proc["state"] == "Z"


def monitors_for(
    plan: Plan, backend: Backend, handles: dict[str, ProcessHandle], interval_s: float = 1.0
) -> Monitors:
    """A monitor on every node of plan, watching the process groups launch started there."""
    from magpie_trace.preflight import python_of

    nodes = {node.name: plan.node_config(node.index) for node in plan.nodes}
    return Monitors(backend, nodes, handles, python_of(plan), plan.engine, interval_s)
