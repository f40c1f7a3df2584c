"""vLLM's profiler, simulated: one /start_profile on the head arms every rank on every node.

Semantics follow vLLM (reference B.1): `delay_iterations` steps are skipped after a start,
`max_iterations` (0 = no limit) recorded steps end the ranks' capture on their own (they write
their files then), and the session still needs /stop_profile, which returns only once every
rank on every node has written its file, then writes the API server's own CPU trace.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

from magpie_trace.clock_client import shifted_ns
from magpie_trace.engines.sim import kineto
from magpie_trace.engines.sim.cluster import HeadCluster
from magpie_trace.engines.sim.generate import Stream
from magpie_trace.engines.sim.ranks import RankPool


class ProfilerBusy(Exception):
    """A session is already active (vLLM answers 409)."""


class Profiler:
    def __init__(self, profile_dir: str, cluster: HeadCluster, pool: RankPool,
                 offset_ns: int, drift_ppm: float = 0.0) -> None:
        self._dir = profile_dir
        self._cluster = cluster
        self._pool = pool
        self._offset_ns = offset_ns
        self._drift_ppm = drift_ppm
        self._pid = os.getpid()
        self._hostname = socket.gethostname()
        self._base_ns = kineto.base_time_ns(self._clock_ns())
        self.active = False
        self._capturing = False  # ranks are recording steps
        self._prefix: str | None = None
        self._delay = self._max = self._seen = self._recorded = 0
        self._start_ns = 0
        self._requests: list[tuple[str, int, int]] = []

    def _clock_ns(self) -> int:
        return shifted_ns(time.time_ns(), self._offset_ns, self._drift_ppm)

    async def start(self, prefix: str | None, delay: int, max_steps: int) -> None:
        if self.active:
            raise ProfilerBusy
        self.active = self._capturing = True
        self._prefix, self._delay, self._max = prefix, delay, max_steps
        self._seen = self._recorded = 0
        self._requests = []
        self._start_ns = self._clock_ns()
        message = {"op": "start", "prefix": prefix}
        await asyncio.gather(self._cluster.request(message), self._pool.request(message))

    async def stop(self) -> list[str]:
        """End the session; the paths of the files written by this stop (each on its own node)."""
        if not self.active:
            return []
        self._capturing = False
        message = {"op": "stop"}
        nodes, ranks = await asyncio.gather(self._cluster.request(message),
                                            self._pool.request(message))
        now = self._clock_ns()
        name = kineto.frontend_file_name(self._prefix, self._hostname, self._pid, now)
        trace = kineto.frontend_trace(
            pid=self._pid, requests=self._requests, base_ns=self._base_ns,
            start_ns=self._start_ns, end_ns=now, hostname=self._hostname,
            trace_name=os.path.join(self._dir, name),
        )
        frontend = kineto.write_trace(self._dir, name, trace)
        self.active = False
        paths = [ack["path"] for ack in ranks if ack["path"]]
        paths += [path for ack in nodes for path in ack["paths"]]
        return paths + [str(frontend)]

    def on_step(self, step: dict[str, Any]) -> None:
        """Broadcast an engine step to every node; mark it recorded inside the step window."""
        record = False
        if self._capturing:
            self._seen += 1
            record = self._seen > self._delay
        message = {**step, "rec": record}
        self._cluster.broadcast(message)
        if record:
            self._pool.send(message)
            self._recorded += 1
            if self._max and self._recorded >= self._max:
                self._capturing = False  # the ranks stop and write now; the session stays open
                self._cluster.request({"op": "stop"})
                self._pool.request({"op": "stop"})

    def on_transfer(self, message: dict[str, Any]) -> None:
        """A KV handoff seen by this server: every rank of it records it inside the window."""
        if self._capturing:
            self._cluster.broadcast(message)
            self._pool.send(message)

    def on_finish(self, stream: Stream, finish_ns: int) -> None:
        if self.active:
            self._requests.append((stream.request_id,
                                   shifted_ns(stream.arrival_ns, self._offset_ns, self._drift_ppm),
                                   shifted_ns(finish_ns, self._offset_ns, self._drift_ppm)))
