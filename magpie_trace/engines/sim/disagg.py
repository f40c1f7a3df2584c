"""Prefill and decode roles: what a request through a PD router asks of each sim server.

The two real routers speak two protocols, and the sim answers both:
- sglang-router sends the same request to a prefill and a decode server at once, adding
  `bootstrap_host`, `bootstrap_port` and `bootstrap_room`; the decode pulls the room's KV from the
  prefill's bootstrap (KV) port and streams every output token.
- vllm-router sends the request to the prefill first with `max_tokens: 1` and
  `kv_transfer_params: {do_remote_decode: true}`; the prefill answers with kv_transfer_params that
  say where its KV is (`remote_host`, `remote_port`, `remote_request_id`), which the router hands to
  the decode with the original request.
A prefill server computes only the first token; the decode's first token is due when the KV lands.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from magpie_trace.engines.sim.kvlink import KvReceiver, KvSender

ROLES = ("prefill", "decode")


class HandoffError(ValueError):
    """A PD request that does not say where its KV is (answered 400)."""


@dataclass(frozen=True)
class Handoff:
    """Where one request's KV comes from or goes to."""

    key: str
    style: str  # "sglang" | "vllm"
    host: str | None = None  # decode: the prefill's KV endpoint
    port: int | None = None


def _port(value: Any, what: str) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise HandoffError(f"{what} must be a TCP port, got {value!r} (give the router the "
                           "prefill server's bootstrap port)")
    return value


class PrefillRole:
    """Computes the prompt and the first token, then holds the KV for the decode to pull."""

    role = "prefill"

    def __init__(self, sender: KvSender, kv_host: str, kv_port: int, engine_id: str,
                 tp: int) -> None:
        self.sender = sender
        self._kv_host, self._kv_port = kv_host, kv_port
        self._engine_id = engine_id
        self._tp = tp

    def parse(self, body: dict[str, Any], request_id: str) -> Handoff | None:
        if body.get("bootstrap_room") is not None:
            return Handoff(str(body["bootstrap_room"]), "sglang")
        params = body.get("kv_transfer_params")
        if isinstance(params, dict) and params.get("do_remote_decode"):
            return Handoff(request_id, "vllm")
        return None  # a plain request: served whole, as vLLM's kv_both instance does

    def max_tokens(self, handoff: Handoff | None, requested: int) -> int:
        return requested if handoff is None else 1

    def response_fields(self, handoff: Handoff | None) -> dict[str, Any]:
        if handoff is None or handoff.style != "vllm":
            return {}
        return {"kv_transfer_params": {
            "do_remote_prefill": True, "do_remote_decode": False,
            "remote_engine_id": self._engine_id, "remote_request_id": handoff.key,
            "remote_block_ids": [0], "remote_host": self._kv_host, "remote_port": self._kv_port,
            "tp_size": self._tp,
        }}

    async def admit(self, handoff: Handoff | None, computed_at: float) -> float | None:
        """The prompt's KV is there when its first token is due (`computed_at`, loop time): from
        then on a decode's pull is answered after the transfer delay. The first token is the
        engine's own (None)."""
        if handoff is not None:
            self.sender.ready(handoff.key, computed_at)
        return None


class DecodeRole:
    """Pulls the prompt's KV from the prefill server, then generates every output token."""

    role = "decode"

    def __init__(self, receiver: KvReceiver) -> None:
        self.receiver = receiver

    def parse(self, body: dict[str, Any], request_id: str) -> Handoff:
        if body.get("bootstrap_room") is not None:
            host = body.get("bootstrap_host")
            if not isinstance(host, str) or not host:
                raise HandoffError("bootstrap_host must be the prefill server's host")
            return Handoff(str(body["bootstrap_room"]), "sglang", host.strip("[]"),
                           _port(body.get("bootstrap_port"), "bootstrap_port"))
        params = body.get("kv_transfer_params")
        if isinstance(params, dict) and params.get("do_remote_prefill"):
            host, key = params.get("remote_host"), params.get("remote_request_id")
            if not isinstance(host, str) or not isinstance(key, str):
                raise HandoffError("kv_transfer_params needs remote_host and remote_request_id "
                                   "(as the prefill server returned them)")
            return Handoff(key, "vllm", host, _port(params.get("remote_port"), "remote_port"))
        raise HandoffError("a decode server serves only requests a PD router has paired with a "
                           "prefill (bootstrap_room, or kv_transfer_params from the prefill)")

    def max_tokens(self, handoff: Handoff | None, requested: int) -> int:
        return requested

    def response_fields(self, handoff: Handoff | None) -> dict[str, Any]:
        return {}

    async def admit(self, handoff: Handoff | None, computed_at: float) -> float | None:
        """Pull the KV; the first token is due as it lands (loop time). Raises KvError."""
        assert handoff is not None and handoff.host is not None and handoff.port is not None
        await self.receiver.pull(handoff.host, handoff.port, handoff.key)
        return asyncio.get_running_loop().time()


Role = PrefillRole | DecodeRole
