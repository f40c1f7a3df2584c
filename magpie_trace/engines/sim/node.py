"""One sim node process: its rank children, and either the head's HTTP API or a headless relay.

A head may play a prefill or decode role behind a PD router (disagg.py, kvlink.py).

Lifecycle, as in vLLM's multi-node mp executor: every node starts its rank children and takes
--startup-s (model loading); headless nodes then join the head's rendezvous port; the head
listens on HTTP only once every node has joined (until then a client gets connection refused).
A node exits 0 on SIGTERM/SIGINT (children stopped first), 1 when --die-after-s passes, when a
rank child dies, or (headless) when the head cannot be reached or goes away. A lost node makes
the head hang, not exit: no more tokens or steps, /health still 200, one log line `lost node N`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from magpie_trace.engines.sim import cluster as rendezvous
from magpie_trace.engines.sim.disagg import DecodeRole, PrefillRole, Role
from magpie_trace.engines.sim.generate import Stream, TokenEngine
from magpie_trace.engines.sim.kvlink import KvReceiver, KvSender, Transfer
from magpie_trace.engines.sim.loop import new_event_loop
from magpie_trace.engines.sim.metrics import XFER_BUCKETS, Histogram, Metrics
from magpie_trace.engines.sim.profiler import Profiler
from magpie_trace.engines.sim.ranks import RankPool, RankSpec
from magpie_trace.engines.sim.server import HeadServer
from magpie_trace.topology import Layout

log = logging.getLogger("magpie_trace.engines.sim")

# How long past --startup-s a headless node keeps trying to reach the head.
CONNECT_GRACE_S = 30.0


@dataclass(frozen=True)
class NodeConfig:
    model: str
    served_names: tuple[str, ...]
    node_rank: int
    nnodes: int
    ranks: list[int]
    layout: Layout
    rendezvous_host: str
    rendezvous_port: int
    headless: bool
    host: str
    port: int
    ttft_s: float
    itl_s: float
    startup_s: float
    offset_ns: int
    drift_ppm: float
    die_after_s: float | None
    profile_dir: Path | None
    layers: int
    pd_role: str | None = None  # "prefill" | "decode" behind a PD router
    kv_port: int | None = None  # prefill: the KV side channel (bootstrap) port
    kv_address: str = ""  # prefill: the address decode servers reach that port at
    transfer_s: float = 0.0  # prefill: how long one KV transfer takes
    hang_after_s: float | None = None  # head: stop producing tokens then, every process running


class _Http2ProbeFilter(logging.Filter):
    """sglang-router probes each worker with an HTTP/2 preface before speaking HTTP/1.1; aiohttp
    logs every such probe as an error with a traceback. Those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or "PRI/Upgrade" not in str(error)


def run(config: NodeConfig) -> int:
    """Run the node until it exits; returns its exit code."""
    logging.basicConfig(format="%(message)s", level=logging.INFO, stream=sys.stderr)
    logging.getLogger("aiohttp.server").addFilter(_Http2ProbeFilter())
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(_Node(config).run())


class _Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = f"sim node {config.node_rank}"
        specs = [
            RankSpec(global_rank=rank, device=local, layout=config.layout.__dict__,
                     layers=config.layers, offset_ns=config.offset_ns, drift_ppm=config.drift_ppm,
                     profile_dir=str(config.profile_dir) if config.profile_dir else None)
            for local, rank in enumerate(config.ranks)
        ]
        self.pool = RankPool(specs, self._rank_exited)
        self.engine: TokenEngine | None = None
        self.lost: list[int] = []
        self.hung = False
        self._exit: asyncio.Future[int] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._exit = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._finish, 0, f"{signal.Signals(signum).name}")
        if self.config.die_after_s is not None:
            loop.call_at(started + self.config.die_after_s, self._die)
        if self.config.hang_after_s is not None:
            loop.call_at(started + self.config.hang_after_s, self._hang)
        body = self._headless(started) if self.config.headless else self._head(started)
        main = asyncio.create_task(body)
        main.add_done_callback(self._main_done)
        code = await self._exit
        main.cancel()
        await self.pool.close()
        return code

    def _finish(self, code: int, reason: str) -> None:
        assert self._exit is not None
        if not self._exit.done():
            log.info("%s: exiting with code %d (%s)", self.name, code, reason)
            self._exit.set_result(code)

    def _main_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._finish(1, f"{type(error).__name__}: {error}")

    def _die(self) -> None:
        """Failure injection: exit at once with code 1, like a crash; children see EOF and exit."""
        log.info("%s: --die-after-s %g reached, exiting with code 1", self.name,
                 self.config.die_after_s)
        sys.stderr.flush()
        os._exit(1)

    def _hang(self) -> None:
        """Failure injection: the engine stops producing tokens while every process runs on, as
        a TP engine does when a peer hangs in a collective (no process exits, none is stopped)."""
        log.info("%s: --hang-after-s %g reached, no more tokens", self.name, self.config.hang_after_s)
        self.hung = True  # an engine made after this hangs at once
        if self.engine is not None:
            self.engine.hang()

    def _rank_exited(self, rank: int, code: int | None) -> None:
        self._finish(1, f"rank {rank} exited with code {code}")

    def _lose(self, node: int) -> None:
        log.warning("lost node %d", node)
        self.lost.append(node)
        if self.engine is not None:
            self.engine.hang()

    async def _head(self, started: float) -> None:
        config = self.config
        cluster = rendezvous.HeadCluster(config.nnodes, self._lose)
        await cluster.listen(config.rendezvous_host, config.rendezvous_port)
        await self.pool.start()
        await asyncio.sleep(started + config.startup_s - asyncio.get_running_loop().time())
        await cluster.joined.wait()
        metrics = Metrics(config.served_names[0])
        profiler = None
        if config.profile_dir is not None:
            profiler = Profiler(str(config.profile_dir), cluster, self.pool, config.offset_ns,
                                config.drift_ppm)

        def on_step(step: dict[str, Any]) -> None:
            if profiler is not None:
                profiler.on_step(step)
            else:
                cluster.broadcast({**step, "rec": False})

        def on_finish(stream: Stream, finish_ns: int) -> None:
            if profiler is not None:
                profiler.on_finish(stream, finish_ns)

        self.engine = TokenEngine(config.ttft_s, config.itl_s, metrics, on_step, on_finish)
        if self.lost or self.hung:
            self.engine.hang()
        tasks = [asyncio.create_task(self.engine.run()), asyncio.create_task(self.engine.run_steps())]
        role = await self._role(metrics, profiler)
        server = HeadServer(config.model, self.engine, metrics, profiler, role, config.served_names)
        runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port, backlog=4096).start()
        # As vLLM's API server does once it is up: the startup heap leaves the collector's view, so
        # a full collection under load scans only what requests made (without this, one took 21 ms
        # at 256 streams: the whole TTFT p99).
        gc.collect()
        gc.freeze()
        log.info("%s: ready, serving %s on http://%s:%d", self.name, ", ".join(config.served_names), config.host,
                 config.port)
        await asyncio.gather(*tasks)

    async def _role(self, metrics: Metrics, profiler: Profiler | None) -> Role | None:
        """The PD role's KV side: a prefill listens on its KV port, a decode pulls from them."""
        config = self.config

        def on_transfer(transfer: Transfer) -> None:
            if metrics.kv_transfer is not None:
                metrics.kv_transfer.observe(transfer.xfer_ns / 1e9)
            if profiler is not None:
                profiler.on_transfer(transfer.to_message())

        if config.pd_role == "prefill":
            assert config.kv_port is not None
            sender = KvSender(config.transfer_s, on_transfer)
            await sender.listen(config.host, config.kv_port)
            log.info("%s: prefill role, KV port %d", self.name, config.kv_port)
            return PrefillRole(sender, config.kv_address or config.host, config.kv_port,
                               f"sim-{config.kv_address or config.host}-{config.kv_port}",
                               config.layout.tp)
        if config.pd_role == "decode":
            metrics.kv_transfer = Histogram(XFER_BUCKETS)
            return DecodeRole(KvReceiver(on_transfer))
        return None

    async def _headless(self, started: float) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        await self.pool.start()
        await asyncio.sleep(started + config.startup_s - loop.time())
        deadline = started + config.startup_s + CONNECT_GRACE_S
        where = f"{config.rendezvous_host}:{config.rendezvous_port}"
        try:
            reader, writer = await rendezvous.connect_to_head(
                config.rendezvous_host, config.rendezvous_port, deadline)
        except OSError as error:
            self._finish(1, f"cannot reach the head at {where}: {error}")
            return
        await rendezvous.serve_head(reader, writer, config.node_rank, config.ranks, self.pool)
        self._finish(1, f"lost the head at {where}")
