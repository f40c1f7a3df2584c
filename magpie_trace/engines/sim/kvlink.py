"""The KV-cache handoff between a prefill server and a decode server, over one TCP side channel.

A prefill server's head listens on its KV port (SGLang's bootstrap port, vLLM's NIXL side-channel
port). A decode server pulls a request's KV by key (SGLang's bootstrap_room, or the request id
vLLM's prefill returned in kv_transfer_params): it sends `pull` and gets `kv` the configured
transfer delay after the prefill computed that prompt (at once if it asks later than that: the
router's hops between the two servers, which vLLM's protocol puts between them, are part of the
handoff, as they are in SGLang's, where the decode asks first). Both sides report each transfer with the wall-clock instants they saw it begin and
end, so the traces of both groups show it, and four timestamps per transfer (pull sent, pull
received, KV sent, KV received) bound the clock offset between the two nodes as an NTP exchange.

The transfer delay is the whole handoff: the side channel's own latency (a process wake-up on each
side, ~0.3 ms on a busy 2-core VM) is not added to it. Each `kv` reply says how long the prefill
held the pull, so the decode knows the link's round trip without either clock; it sends the median
of its recent one-way estimates with its next pulls (`lead_ns`), and the prefill sends that much early.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from magpie_trace.engines.sim import wire

log = logging.getLogger("magpie_trace.engines.sim")

# A computed prompt nobody pulls is dropped after this long; a pull waits at most this long.
KV_TTL_S = 120.0
LEAD_SAMPLES = 15  # the link's one-way latency: the median of this many recent round trips, halved


@dataclass(frozen=True)
class Transfer:
    """One KV handoff as one side saw it: wall-clock ns (true time) of its first and last instant."""

    side: str  # "send" (prefill) | "recv" (decode)
    key: str
    start_ns: int  # send: pull received; recv: pull sent
    end_ns: int  # send: KV sent; recv: KV received
    xfer_ns: int  # the transfer itself (the prefill's delay), the tail of the span
    peer: str

    def to_message(self) -> dict[str, Any]:
        return {"op": "kv", "side": self.side, "key": self.key, "start_ns": self.start_ns,
                "end_ns": self.end_ns, "xfer_ns": self.xfer_ns, "peer": self.peer}


class KvError(Exception):
    """The KV could not be fetched (prefill gone, unknown key, timeout)."""


OnTransfer = Callable[[Transfer], None]


class KvSender:
    """The prefill side: computed prompts by key, answered to pulls after the transfer delay."""

    def __init__(self, transfer_s: float, on_transfer: OnTransfer) -> None:
        self.transfer_s = transfer_s
        self._on_transfer = on_transfer
        self._ready: dict[str, asyncio.Future[float]] = {}
        self._server: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, limit=wire.LINE_LIMIT)

    def _future(self, key: str) -> asyncio.Future[float]:
        future = self._ready.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._ready[key] = loop.create_future()
            loop.call_later(KV_TTL_S, self._expire, key, future)
        return future

    def _expire(self, key: str, future: asyncio.Future[float]) -> None:
        if self._ready.get(key) is future:
            del self._ready[key]
        if not future.done():
            future.set_exception(KvError(f"no prefill of {key} within {KV_TTL_S:g} s"))
            future.exception()  # retrieved: nobody may be waiting

    def ready(self, key: str, at: float) -> None:
        """The prompt of `key` is computed at loop time `at` (now or later): its KV can be sent
        from then on."""
        future = self._future(key)
        if not future.done():
            future.set_result(at)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        tasks: set[asyncio.Task[None]] = set()
        while (message := await wire.receive(reader)) is not None:
            if message.get("op") != "pull":
                continue
            task = asyncio.create_task(self._serve(writer, message, time.time_ns(), peer_text))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()

    async def _serve(self, writer: asyncio.StreamWriter, message: dict[str, Any],
                     received_ns: int, peer: str) -> None:
        loop = asyncio.get_running_loop()
        received = loop.time()
        key = str(message["key"])
        future = self._future(key)
        try:
            ready = await asyncio.wait_for(asyncio.shield(future), KV_TTL_S)
        except (KvError, asyncio.TimeoutError) as error:
            writer.write(wire.encode({"op": "error", "req": message["req"], "error": str(error)}))
            return
        self._ready.pop(key, None)
        lead_ns = message.get("lead_ns")
        lead_s = min(lead_ns / 1e9, self.transfer_s) if type(lead_ns) is int and lead_ns > 0 else 0.0
        send_at = max(ready + self.transfer_s - lead_s, received)  # lands when the delay is over
        await asyncio.sleep(send_at - loop.time())
        sent_ns = time.time_ns()
        xfer_ns = round(self.transfer_s * 1e9)
        if writer.is_closing():
            return
        writer.write(wire.encode({"op": "kv", "req": message["req"], "xfer_ns": xfer_ns,
                                  "held_ns": sent_ns - received_ns}))
        self._on_transfer(Transfer("send", key, received_ns, sent_ns, xfer_ns, peer))


class KvReceiver:
    """The decode side: one connection per prefill server, pulls multiplexed on it."""

    def __init__(self, on_transfer: OnTransfer) -> None:
        self._on_transfer = on_transfer
        self._links: dict[tuple[str, int], _Link] = {}

    async def pull(self, host: str, port: int, key: str) -> Transfer:
        """Fetch the KV of `key` from the prefill server at host:port; raises KvError."""
        link = self._links.get((host, port))
        if link is None or link.closed:
            link = _Link(host, port)
            self._links[(host, port)] = link
        transfer = await link.pull(key)
        self._on_transfer(transfer)
        return transfer


class _Link:
    def __init__(self, host: str, port: int) -> None:
        self.peer = f"{host}:{port}"
        self._host, self._port = host, port
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._one_way_ns: collections.deque[int] = collections.deque(maxlen=LEAD_SAMPLES)
        self.closed = False

    async def _connect(self) -> None:
        try:
            reader, self._writer = await asyncio.open_connection(self._host, self._port,
                                                                 limit=wire.LINE_LIMIT)
        except OSError as error:
            self.closed = True
            raise KvError(f"cannot reach the prefill's KV port {self.peer}: {error}") from None
        asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while (message := await wire.receive(reader)) is not None:
            future = self._pending.pop(message.get("req"), None)
            if future is not None and not future.done():
                future.set_result(message)
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(KvError(f"the prefill at {self.peer} went away"))
        self._pending.clear()

    async def pull(self, key: str) -> Transfer:
        if self._writer is None:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect())
            await asyncio.shield(self._connecting)
        assert self._writer is not None
        if self.closed:
            raise KvError(f"the prefill at {self.peer} went away")
        req = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req] = future
        pull: dict[str, Any] = {"op": "pull", "req": req, "key": key}
        if self._one_way_ns:
            pull["lead_ns"] = sorted(self._one_way_ns)[len(self._one_way_ns) // 2]
        sent_ns = time.time_ns()
        self._writer.write(wire.encode(pull))
        reply = await future
        received_ns = time.time_ns()
        if reply.get("op") != "kv":
            raise KvError(f"the prefill at {self.peer} has no KV for {key}: {reply.get('error')}")
        held_ns = reply.get("held_ns")
        if type(held_ns) is int and 0 <= held_ns <= received_ns - sent_ns:
            self._one_way_ns.append((received_ns - sent_ns - held_ns) // 2)
        return Transfer("recv", key, sent_ns, received_ns, int(reply["xfer_ns"]), self.peer)
