"""Spread requests over several API servers: replicas without a router, or vLLM's per-node API
servers (data parallel with hybrid or external load balancing).

`round_robin` sends request k to endpoint k mod n; `least_outstanding` to the endpoint with the
fewest requests in flight (ties: the one sent fewest, then the first), as a load balancer in front
of them would. Each request's record names its endpoint, so the results can be split by it.
"""

from __future__ import annotations

from typing import Any

from magpie_trace.bench.metrics import RequestRecord, aggregate

POLICIES = ("round_robin", "least_outstanding")


class Endpoints:
    def __init__(self, urls: list[str], policy: str = "round_robin") -> None:
        if not urls:
            raise ValueError("no endpoint to send requests to")
        if policy not in POLICIES:
            raise ValueError(f"unknown spread policy {policy!r} (one of {', '.join(POLICIES)})")
        self.urls = [url.rstrip("/") for url in urls]
        self.policy = policy
        self.outstanding = [0] * len(urls)
        self.sent = [0] * len(urls)
        self._next = 0

    def acquire(self) -> int:
        """The endpoint (index) for the next request; release it when the request ends."""
        if self.policy == "round_robin":
            index = self._next
            self._next = (self._next + 1) % len(self.urls)
        else:
            index = min(range(len(self.urls)), key=lambda i: (self.outstanding[i], self.sent[i], i))
        self.outstanding[index] += 1
        self.sent[index] += 1
        return index

    def release(self, index: int) -> None:
        self.outstanding[index] -= 1


def per_endpoint(records: list[RequestRecord], urls: list[str], duration_s: float,
                 percentiles: list[float], goodput: dict[str, float] | None) -> dict[str, Any]:
    """Per endpoint: how many requests it got and their metrics (over the point's duration)."""
    out: dict[str, Any] = {}
    for url in urls:
        mine = [record for record in records if record.endpoint == url]
        out[url] = {"requests": len(mine), **aggregate(mine, duration_s, percentiles, goodput)}
    return out
