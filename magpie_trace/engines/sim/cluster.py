"""The rendezvous between the head and the headless nodes, over one TCP connection per node.

A headless node connects (retrying until its deadline), says `hello` with its node rank and
ranks, and gets `welcome`. From then on the head sends it every engine step and every profiler
start/stop; the node forwards them to its rank children and acks each start/stop once all of its
children have. A connection that ends is a lost node for the head and a lost head for the node.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from magpie_trace.engines.sim import wire
from magpie_trace.engines.sim.ranks import RankPool

log = logging.getLogger("magpie_trace.engines.sim")


class HeadCluster:
    """The head's side: accept nodes 1..nnodes-1, broadcast to them, gather their acks."""

    def __init__(self, nnodes: int, on_lost: Callable[[int], None]) -> None:
        self._expected = set(range(1, nnodes))
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._on_lost = on_lost
        self._lost: set[int] = set()
        self._pending: dict[tuple[int, int], asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.joined = asyncio.Event()
        self._server: asyncio.Server | None = None
        if not self._expected:
            self.joined.set()

    async def listen(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, limit=wire.LINE_LIMIT)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await wire.receive(reader)
        node = hello.get("node_rank") if hello and hello.get("op") == "hello" else None
        if node not in self._expected or node in self._writers:
            log.warning("sim: refused a rendezvous connection that said %r", hello)
            writer.close()
            return
        self._writers[node] = writer
        writer.write(wire.encode({"op": "welcome"}))
        log.info("sim node 0: node %d joined with ranks %s", node, hello.get("ranks"))
        if set(self._writers) == self._expected:
            self.joined.set()
        while (message := await wire.receive(reader)) is not None:
            future = self._pending.pop((message["req"], node), None)
            if future is not None and not future.done():
                future.set_result(message)
        self._lose(node)

    def _lose(self, node: int) -> None:
        if node not in self._lost:
            self._lost.add(node)
            self._on_lost(node)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send to every joined node without waiting (steps, and stops nobody waits for)."""
        data = wire.encode(message)
        for node, writer in self._writers.items():
            if writer.is_closing():
                self._lose(node)
            else:
                writer.write(data)

    def request(self, message: dict[str, Any]) -> asyncio.Future[list[dict[str, Any]]]:
        """Send a start/stop to every node now; the future gives each node's ack (never, if one
        is lost: like vLLM's collective_rpc, a stop then hangs)."""
        req = next(self._ids)
        loop = asyncio.get_running_loop()
        futures = []
        for node in self._writers:
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[(req, node)] = future
            futures.append(future)
        self.broadcast({**message, "req": req})
        return asyncio.gather(*futures)


async def connect_to_head(host: str, port: int, deadline: float) -> tuple[asyncio.StreamReader,
                                                                        asyncio.StreamWriter]:
    """Connect to the head's rendezvous port, retrying until `deadline` (loop time)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await asyncio.open_connection(host, port, limit=wire.LINE_LIMIT)
        except OSError:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.1)


async def serve_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node_rank: int,
                     ranks: list[int], pool: RankPool) -> None:
    """A headless node's life: join, then relay the head's messages until the head goes away."""
    writer.write(wire.encode({"op": "hello", "node_rank": node_rank, "ranks": ranks}))
    welcome = await wire.receive(reader)
    if welcome is None or welcome.get("op") != "welcome":
        return
    log.info("sim node %d: joined the head", node_rank)
    tasks: set[asyncio.Task[None]] = set()

    async def relay(req: int, acked: asyncio.Future[list[dict[str, Any]]]) -> None:
        acks = await acked
        writer.write(wire.encode({"op": "ack", "req": req,
                                  "paths": [ack["path"] for ack in acks if ack["path"]]}))

    while (message := await wire.receive(reader)) is not None:
        if message["op"] == "step":
            if message.get("rec"):
                pool.send(message)
        elif message["op"] == "kv":  # sent only inside a capture window
            pool.send(message)
        else:  # start / stop: forwarded now (so later steps stay behind them), acked when done
            acked = pool.request({k: v for k, v in message.items() if k != "req"})
            task = asyncio.create_task(relay(message["req"], acked))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
