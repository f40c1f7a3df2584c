"""A small streaming client, run as its own process by the timing test.

Usage: python timing_client.py URL CONCURRENCY REQUESTS MIN_TOKENS MAX_TOKENS
Closed loop at CONCURRENCY; each request asks for a random length in [MIN_TOKENS, MAX_TOKENS]
(seeded), so completions, and so new arrivals, spread out as in a real benchmark. The first
CONCURRENCY requests are warmup (they open the connections and start as one burst) and are left
out. Prints one JSON object: TTFT and TPOT percentiles in ms, with vLLM's definitions (TTFT from
the request's send to the first content chunk's arrival; TPOT = (E2E - TTFT) / (tokens - 1)), and
how many requests got a wrong number of chunks.

Arrivals are the kernel's receive stamps (SO_TIMESTAMPNS), not the time the client got round to
reading: with 256 streams on a 2-core machine a Python client reads a chunk up to several ms after
it came (an asyncio client put 3-5 ms of its own backlog into the server's TTFT p99), and that is
the client's lateness, not the server's. Sends are stamped as they happen, so a client that falls
behind sends later but never counts its delay. One connection per request (Connection: close), so
a response ends at EOF.
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

import orjson

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("qq")
MARK = b'"text":'


class Stream:
    """One request on its own connection; stamps of its first and last content chunks."""

    def __init__(self, address: tuple[str, int], path: str, tokens: int) -> None:
        body = orjson.dumps({"model": "sim-model", "prompt": "one two three four", "max_tokens": tokens,
                             "stream": True, "ignore_eos": True,
                             "stream_options": {"include_usage": True}})
        request = (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                   % (path.encode(), address[0].encode(), address[1], len(body), body))
        self.tokens = tokens
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sent = time.time_ns()
        self.sock.sendall(request)
        self.sock.setblocking(False)
        self.first = self.last = 0
        self.chunks = 0
        self._tail = b""  # a mark split across two reads is counted once

    def read(self) -> bool:
        """Reads what has come; False at the end of the response."""
        data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(TIMESPEC.size))
        if not data:
            return False
        stamp = time.time_ns()
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = TIMESPEC.unpack(payload[:TIMESPEC.size])
                stamp = seconds * 1_000_000_000 + nanoseconds
        text = self._tail + data
        found = text.count(MARK)
        self._tail = text[-(len(MARK) - 1):]
        if found:
            self.first = self.first or stamp
            self.last = stamp
            self.chunks += found
        return True

    def result(self) -> tuple[float, float, int]:
        ttft = (self.first - self.sent) / 1e9
        e2e = (self.last - self.sent) / 1e9
        return ttft, (e2e - ttft) / (self.tokens - 1), self.chunks - self.tokens


def run(url: str, concurrency: int, requests: int, low: int, high: int) -> dict:
    rng = random.Random(1)
    lengths = [rng.randint(low, high) for _ in range(concurrency + requests)]
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    selector = selectors.DefaultSelector()
    results: list[tuple[float, float, int]] = []
    started = 0

    def start() -> None:
        nonlocal started
        stream = Stream(address, parts.path, lengths[started])
        selector.register(stream.sock, selectors.EVENT_READ, (started, stream))
        started += 1

    while started < min(concurrency, len(lengths)):
        start()
    deadline = time.monotonic() + 110
    while selector.get_map():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(selector.get_map())} streams still open after 110 s")
        for key, _ in selector.select(timeout=1):
            index, stream = key.data
            if stream.read():
                continue
            selector.unregister(stream.sock)
            stream.sock.close()
            if index >= concurrency:
                results.append(stream.result())
            if started < len(lengths):
                start()

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000

    ttfts = [r[0] for r in results]
    tpots = [r[1] for r in results]
    return {
        "n": len(results),
        "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99),
        "tpot_p50": pct(tpots, 0.5), "tpot_p99": pct(tpots, 0.99),
        "bad_counts": sum(r[2] != 0 for r in results),
    }


if __name__ == "__main__":
    url, concurrency, requests, low, high = sys.argv[1], *map(int, sys.argv[2:6])
    print(orjson.dumps(run(url, concurrency, requests, low, high)).decode())
