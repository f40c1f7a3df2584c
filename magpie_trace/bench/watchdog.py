"""Stop a run the moment a node is lost, instead of reporting degraded numbers as a success.

Three checks, polled every `poll_s` while load runs:
- a node's process has exited (`backend.alive` on the handle launch recorded);
- a node's telemetry has not answered for `silence_s` (the node or its transport is gone);
- no token arrived for `stall_timeout_s` while requests are in flight (a dead TP/PP peer makes the
  head hang without an error until the NCCL watchdog fires, 10-30 minutes later).
The first to fire cancels the load and names the node; the runner then writes the result file
marked invalid and raises RunAborted (exit code 3).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from magpie_trace import interrupts
from magpie_trace.awake import AWAKE
from magpie_trace.backends.base import Backend, ProcessHandle
from magpie_trace.bench.client import Progress
from magpie_trace.bench.telemetry import NodeSampler
from magpie_trace.config import NodeConfig
from magpie_trace.errors import MagpieError
from magpie_trace.nodewatch import STREAM_POLL_S, NodeLost, ProcessCheck, Trip


class RunAborted(NodeLost):
    """A node was lost during the benchmark; the result file is written and marked invalid."""

    def __init__(self, node: str, reason: str, result_path: str | None = None) -> None:
        where = f" (partial results, marked invalid: {result_path})" if result_path else ""
        super().__init__(node, reason + where)
        self.reason = reason
        self.result_path = result_path


class BenchInterrupted(MagpieError):
    """Ctrl-C (or SIGTERM, SIGHUP, a closed output) during the load: what was measured is
    written, marked invalid; exit like that signal (128 + its number)."""

    def __init__(self, result_path: str) -> None:
        super().__init__(f"{interrupts.describe()} (partial results, marked invalid: {result_path})")
        self.result_path = result_path
        self.exit_code = interrupts.exit_code()


class BenchInvalid(MagpieError):
    """Requests failed or were cut short: the numbers are written but marked invalid."""

    exit_code = 3

    def __init__(self, reasons: list[str], result_path: str) -> None:
        super().__init__(f"benchmark invalid: {'; '.join(reasons)} (results: {result_path})")
        self.reasons = reasons
        self.result_path = result_path


FAILURE_POLL_S = 0.05  # how soon a failed request leads to a process check
LOST_GRACE_S = 2.0  # a lost node's tree gets this long after SIGTERM (a frozen one ignores it)


@dataclass
class Watchdog:
    """Owns the checks; `watch(task)` cancels task on the first failure and records why."""

    head: str
    stall_timeout_s: float
    progress: Progress | None = None
    backend: Backend | None = None
    nodes: dict[str, NodeConfig] = field(default_factory=dict)
    handles: dict[str, ProcessHandle] = field(default_factory=dict)
    samplers: dict[str, NodeSampler] = field(default_factory=dict)
    silence_s: float = 10.0
    poll_s: float = 1.0
    trip: Trip | None = None
    streams: Callable[[], Trip | None] | None = None  # the nodes' monitors (Monitors.check)
    fresh_s: float = 2.5  # how old the monitors' news can be: two samples and a margin

    def __post_init__(self) -> None:
        if self.streams is not None:
            self.poll_s = min(self.poll_s, STREAM_POLL_S)  # a look at memory, not at the nodes

    def check_processes(self) -> Trip | None:
        """Blocking without streams (it may ssh): call from a thread. Every node at once."""
        if self.backend is None:
            return None
        return ProcessCheck(self.backend, self.nodes, self.handles, "the benchmark", self.streams)()

    def stop_lost_node(self) -> None:
        """Stop the whole process tree of the node that was lost: a node with a dead or frozen
        rank must not go on holding its GPUs and its peers (blocking: call from a thread)."""
        trip = self.trip
        if trip is None or self.backend is None or trip.node not in self.handles:
            return
        try:
            self.backend.stop(self.nodes[trip.node], self.handles[trip.node], grace_s=LOST_GRACE_S)
        except MagpieError:
            pass  # teardown (or `magpie-trace stop`) tries again

    def check_telemetry(self) -> Trip | None:
        now = AWAKE.now()
        for name, sampler in self.samplers.items():
            silent = now - sampler.last_ok
            if silent > self.silence_s:
                why = f" (last error: {sampler.last_error})" if sampler.last_error else ""
                return Trip(name, f"telemetry silent for {silent:.0f} s{why}")
        return None

    def check_progress(self) -> Trip | None:
        progress = self.progress
        if progress is None or progress.in_flight == 0:
            return None
        idle = (time.perf_counter_ns() - progress.last_progress_ns) / 1e9
        if idle > self.stall_timeout_s:
            # Called right after a clean process check: with the nodes watched, none is to blame.
            running = ("; every node's engine is running (no process exited or stopped): the server "
                       "hangs, no node is known lost (see each node's log)") if self.handles else ""
            return Trip(
                self.head,
                f"no token progress for {idle:.0f} s with {progress.in_flight} request(s) in flight{running}",
                lost=False,
            )
        return None

    def failed(self) -> int:
        return self.progress.failed if self.progress is not None else 0

    async def watch(self, task: asyncio.Task[object]) -> None:
        """Poll until task ends; on a failure record it and cancel task.

        Failed requests trigger an immediate process check: when a worker dies, the head can fail
        every request within milliseconds (vLLM's EngineDeadError), and the node to name is the
        one that is dead while the head still answers.
        """
        seen_failed = self.failed()
        next_full = 0.0
        while not task.done():
            failed = self.failed()
            if time.monotonic() >= next_full or failed != seen_failed:
                seen_failed = failed
                next_full = time.monotonic() + self.poll_s
                trip = await asyncio.to_thread(self.check_processes)
                trip = trip or self.check_telemetry() or self.check_progress()
                if trip is not None:
                    self.trip = trip
                    task.cancel()
                    return
            await asyncio.wait({task}, timeout=FAILURE_POLL_S)

    async def after_failures(self, failed_before: int) -> None:
        """The load ended with failed requests faster than a poll: name a lost node, if any.

        A dead rank makes the head fail every request within milliseconds (vLLM's
        EngineDeadError), before the node's monitor has sent its next sample: wait for up to
        `fresh_s` of samples before calling the failures the server's own."""
        if self.trip is not None or self.failed() == failed_before:
            return
        deadline = time.monotonic() + (self.fresh_s if self.streams is not None else 0.0)
        while True:
            self.trip = await asyncio.to_thread(self.check_processes)
            if self.trip is not None or time.monotonic() >= deadline:
                return
            await asyncio.sleep(FAILURE_POLL_S)
