"""One child process per rank, like vLLM's worker processes; each writes its rank's trace.

A child reads one JSON message per line on stdin (`start`, `step`, `kv`, `stop`, `exit`) and answers
`ready` once and an `ack` per start/stop on stdout. It exits 0 on `exit` and 1 on end of input:
stdin is a pipe from its node process, so when that process dies, however it dies, its children
see EOF and exit too.

Run as `python -m magpie_trace.engines.sim.ranks SPEC_JSON` by RankPool, never by hand.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from magpie_trace.clock_client import shifted_ns

from magpie_trace.engines.sim import kineto, wire
from magpie_trace.engines.sim.layout import place, process_groups
from magpie_trace.topology import Layout


@dataclass
class RankSpec:
    """What a rank child needs to know; passed to it as JSON on its command line."""

    global_rank: int
    device: int  # local device index: the rank's position on its node
    layout: dict[str, int]
    layers: int
    offset_ns: int
    drift_ppm: float
    profile_dir: str | None

    def to_json(self) -> str:
        return orjson.dumps(self.__dict__).decode()


@dataclass
class _Recording:
    prefix: str | None
    start_ns: int  # node clock
    steps: list[kineto.Step] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)  # KV handoffs (PD roles)


def _child_main(spec: RankSpec) -> int:
    layout = Layout(**spec.layout)
    rank = place(layout, spec.global_rank)
    groups = process_groups(layout, spec.global_rank)
    pid = os.getpid()

    def clock_ns() -> int:
        return shifted_ns(time.time_ns(), spec.offset_ns, spec.drift_ppm)

    base_ns = kineto.base_time_ns(clock_ns())  # Kineto computes it once per process
    out = sys.stdout.buffer

    def reply(message: dict[str, Any]) -> None:
        out.write(wire.encode(message))
        out.flush()

    reply({"op": "ready", "rank": spec.global_rank})
    recording: _Recording | None = None
    for line in sys.stdin.buffer:
        message = orjson.loads(line)
        op = message["op"]
        if op == "step":
            if recording is not None:
                recording.steps.append(kineto.Step.from_message(message))
        elif op == "kv":
            if recording is not None:
                recording.transfers.append(message)
        elif op == "start":
            recording = _Recording(message.get("prefix"), clock_ns())
            reply({"op": "ack", "req": message["req"], "rank": spec.global_rank, "path": None})
        elif op == "stop":
            path = None
            if recording is not None and spec.profile_dir is not None:
                now = clock_ns()
                name = kineto.worker_file_name(recording.prefix, rank, now)
                trace = kineto.rank_trace(
                    layout=layout, place=rank, groups=groups, device=spec.device, pid=pid,
                    steps=recording.steps, layers=spec.layers, offset_ns=spec.offset_ns, drift_ppm=spec.drift_ppm,
                    base_ns=base_ns, start_ns=recording.start_ns, end_ns=now,
                    trace_name=os.path.join(spec.profile_dir, name),
                )
                trace["traceEvents"] += kineto.transfer_events(pid, recording.transfers,
                                                               spec.offset_ns, base_ns)
                path = str(kineto.write_trace(spec.profile_dir, name, trace))
            recording = None
            reply({"op": "ack", "req": message["req"], "rank": spec.global_rank, "path": path})
        elif op == "exit":
            return 0
    return 1  # stdin closed without `exit`: the node process is gone


class RankPool:
    """The node's rank children: start them, send them messages, collect their acks, stop them."""

    def __init__(self, specs: list[RankSpec], on_exit: Callable[[int, int | None], None]) -> None:
        self._specs = specs
        self._on_exit = on_exit  # (global rank, return code) when a child dies on its own
        self._procs: list[asyncio.subprocess.Process] = []
        self._pending: dict[tuple[int, int], asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start every child and wait until each has said it is ready."""
        for spec in self._specs:
            self._procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "magpie_trace.engines.sim.ranks", spec.to_json(),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            ))
        for spec, proc in zip(self._specs, self._procs):
            assert proc.stdout is not None
            ready = await wire.receive(proc.stdout)
            if ready is None or ready.get("op") != "ready":
                self._on_exit(spec.global_rank, await proc.wait())
                return
        for spec, proc in zip(self._specs, self._procs):
            self._readers.append(asyncio.create_task(self._read(spec.global_rank, proc)))

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    async def _read(self, rank: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while (message := await wire.receive(proc.stdout)) is not None:
            future = self._pending.pop((message["req"], rank), None)
            if future is not None and not future.done():
                future.set_result(message)
        code = await proc.wait()
        if not self._closing:
            self._on_exit(rank, code)

    def send(self, message: dict[str, Any]) -> None:
        """Write a message to every child without waiting (a pipe keeps the order)."""
        data = wire.encode(message)
        for proc in self._procs:
            assert proc.stdin is not None
            if not proc.stdin.is_closing():
                proc.stdin.write(data)

    def request(self, message: dict[str, Any]) -> asyncio.Future[list[dict[str, Any]]]:
        """Send a start/stop to every child now; the future gives each child's ack."""
        req = next(self._ids)
        loop = asyncio.get_running_loop()
        futures = []
        for spec in self._specs:
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[(req, spec.global_rank)] = future
            futures.append(future)
        self.send({**message, "req": req})
        return asyncio.gather(*futures)

    async def close(self, timeout: float = 1.0) -> None:
        """Ask every child to exit; kill any that has not within timeout seconds."""
        self._closing = True
        self.send({"op": "exit"})
        waits = [asyncio.create_task(proc.wait()) for proc in self._procs]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for proc in self._procs:
            if proc.returncode is None:
                proc.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops us
    sys.exit(_child_main(RankSpec(**orjson.loads(sys.argv[1]))))
