"""Notice a lost node while the run waits on something that cannot see it.

An open profile window, an HTTP call to the head that only returns once every rank has written
its trace, the wait for trace files: none of these fail when a node dies, they wait (up to
profile.timeout_s, ten minutes by default) with the cluster held. A NodeGuard checks every node's
processes from a thread meanwhile; its waits end the moment a node is lost, with NodeLost naming
the node (exit code 3, as for a node lost during the benchmark).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from magpie_trace.backends.base import Backend, ProcessHandle, exit_text
from magpie_trace.config import NodeConfig
from magpie_trace.errors import MagpieError, NodeError, NodeGone
from magpie_trace.fanout import NodesFailed, on_nodes
from magpie_trace.plan import Plan

T = TypeVar("T")
MAIN = "engine process"  # how a node's engine main process is named in a Trip
EXIT_CODE_WAIT_S = 2.0
STREAM_POLL_S = 0.25  # a look at the monitors' memory: cheap


class NodeLost(NodeError):
    """A node was lost while the run needed it; everything is torn down and recorded."""

    exit_code = 3


@dataclass
class Trip:
    node: str
    reason: str
    process: str | None = None  # which process of the node's engine: "engine process", a rank
    pid: int | None = None
    main_pid: int | None = None  # a rank ended, and so did the engine's main process (this pid)
    lost: bool = True  # False: the symptom is seen at this node, which is not known to be lost


@dataclass
class ProcessCheck:
    """Is every node's engine still running? With `streams` (Monitors.check: one stream per
    node) it is a look at memory; without, one remote check per node. Blocking either way: call
    from a thread."""

    backend: Backend
    nodes: dict[str, NodeConfig]
    handles: dict[str, ProcessHandle] = field(default_factory=dict)
    during: str = "the run"
    streams: Callable[[], Trip | None] | None = None

    def __call__(self) -> Trip | None:
        if self.streams is not None:
            trip = self.streams()
            return None if trip is None else self._explain(trip)
        watched = [self.nodes[name] for name in self.handles if name in self.nodes]
        try:
            found = on_nodes(self._check_one, watched)
        except NodesFailed as exc:
            cause = exc.failures.get(exc.node, exc)
            if isinstance(cause, NodeGone):
                return Trip(exc.node, f"lost: {str(cause)[len(exc.node) + 2 :]}")
            return Trip(exc.node, f"cannot check its process: {cause}")
        return next((trip for trip in found.values() if trip is not None), None)

    def _check_one(self, node: NodeConfig) -> Trip | None:
        handle = self.handles[node.name]
        if self.backend.alive(node, handle):
            return None
        return Trip(node.name, f"engine process {handle.pid} exited with "
                               f"{exit_text(self.backend.exit_code(node, handle))} during {self.during}",
                    process=MAIN, pid=handle.pid)

    def _explain(self, trip: Trip) -> Trip:
        """The monitor's finding, with the engine's exit code when its main process ended. When
        a rank and the main process both ended, a main killed by a signal is the one to name;
        a main that exited by itself did so because its rank died."""
        handle = self.handles.get(trip.node)
        main_ended = trip.process == MAIN or trip.main_pid is not None
        if handle is None or not main_ended or not trip.reason.endswith(" exited"):
            return Trip(trip.node, f"{trip.reason} during {self.during}", trip.process, trip.pid)
        code = _wait_exit_code(self.backend, self.nodes[trip.node], handle)
        main_pid = trip.pid if trip.process == MAIN else trip.main_pid
        if trip.process == MAIN or (code is not None and code > 128):
            return Trip(trip.node, f"{MAIN} {main_pid} exited with {exit_text(code)} during "
                                   f"{self.during}", MAIN, main_pid)
        return Trip(trip.node, f"{trip.reason} during {self.during} (then the {MAIN} exited "
                               f"with {exit_text(code)})", trip.process, trip.pid)


def _wait_exit_code(backend: Backend, node: NodeConfig, handle: ProcessHandle) -> int | None:
    """The launcher writes the code just after the engine ends: give it a moment."""
    deadline = time.monotonic() + EXIT_CODE_WAIT_S
    while True:
        try:
            code = backend.exit_code(node, handle)
        except MagpieError:
            return None
        if code is not None or time.monotonic() >= deadline:
            return code
        time.sleep(0.1)


class NodeGuard:
    """Runs a check every poll_s in a thread; `wait` and `call` end early once it has tripped.

    Without a check (nothing launched by this run: a bare URL) it never trips.
    """

    def __init__(self, check: Callable[[], Trip | None] | None = None, poll_s: float = 1.0) -> None:
        self._check = check
        self.poll_s = poll_s
        self._tripped = threading.Event()
        self._stopped = threading.Event()
        self._trip: Trip | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "NodeGuard":
        if self._check is not None:
            self._thread = threading.Thread(target=self._loop, name="node-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        assert self._check is not None
        while not self._stopped.is_set() and not self._tripped.is_set():
            try:
                trip = self._check()
            except Exception as exc:  # noqa: BLE001 - a check that cannot run says why
                trip = Trip("node-guard", f"cannot check the nodes: {exc}")
            if trip is not None:
                self.trip(trip)
                return
            self._stopped.wait(self.poll_s)

    def trip(self, trip: Trip) -> None:
        """Record a lost node (the first one wins) and end every wait."""
        with self._lock:
            if self._trip is None:
                self._trip = trip
        self._tripped.set()

    @property
    def tripped(self) -> Trip | None:
        return self._trip

    def raise_if_tripped(self) -> None:
        trip = self._trip
        if trip is not None:
            raise NodeLost(trip.node, trip.reason)

    def wait(self, seconds: float) -> None:
        """Sleep, or raise NodeLost as soon as a node is lost."""
        self._tripped.wait(max(0.0, seconds))
        self.raise_if_tripped()

    def call(self, fn: Callable[[], T]) -> T:
        """fn() in a thread (it may block for minutes on a head that lost a node); its result,
        or NodeLost as soon as a node is lost (fn is then abandoned, still running)."""
        self.raise_if_tripped()
        done = threading.Event()
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, name="node-guard-call", daemon=True).start()
        while not done.wait(0.1):
            self.raise_if_tripped()
        self.raise_if_tripped()  # a node lost meanwhile explains what fn met
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]


def process_guard(
    plan: Plan,
    backend: Backend,
    handles: dict[str, ProcessHandle],
    during: str,
    streams: Callable[[], Trip | None] | None = None,
) -> NodeGuard:
    """A guard over the processes launch started on every node of plan and its router (streams:
    the nodes' monitors, looked at every 0.25 s; without, a remote check every second); a trip
    names the node's group."""
    check = ProcessCheck(backend, plan.watched_nodes(), dict(handles), during, streams)

    def labelled() -> Trip | None:
        trip = check()
        return replace(trip, node=plan.label(trip.node)) if trip is not None else None

    return NodeGuard(labelled, poll_s=STREAM_POLL_S if streams else 1.0)
