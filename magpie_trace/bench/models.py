"""Which model name the requests carry.

A server started with `--served-model-name` answers 404 to any other name, so the name is never
guessed from the launch config: `benchmark.model` (or `server.served_model_name`) when given,
else the one model `/v1/models` lists. A server that lists several and none is named is refused
with one line that lists them.
"""

from __future__ import annotations

import aiohttp
import orjson

from magpie_trace.errors import MagpieError


async def served_models(session: aiohttp.ClientSession, base_url: str) -> list[tuple[str, str]]:
    """(id, root) of every model the server lists; root is the model path or hub name."""
    async with session.get(base_url.rstrip("/") + "/v1/models", timeout=aiohttp.ClientTimeout(total=30)) as response:
        body = await response.read()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
    cards = orjson.loads(body).get("data")
    if not isinstance(cards, list):
        raise ValueError("no data list in the answer")
    return [(str(c["id"]), str(c.get("root") or c["id"])) for c in cards if isinstance(c, dict) and "id" in c]


async def resolve_model(session: aiohttp.ClientSession, base_url: str, named: str | None) -> tuple[str, str]:
    """(the name requests carry, the model id for the result files: the served model's root)."""
    url = base_url.rstrip("/") + "/v1/models"
    try:
        cards = await served_models(session, base_url)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, orjson.JSONDecodeError) as exc:
        if named:
            return named, named
        raise MagpieError(
            f"bench: cannot list the served models ({url}: {type(exc).__name__}: {exc}); "
            "name the model with benchmark.model (--model)"
        ) from None
    if named:
        return named, next((root for name, root in cards if name == named), named)
    if len(cards) == 1:
        return cards[0]
    if not cards:
        raise MagpieError(f"bench: {url} lists no model; name one with benchmark.model (--model)")
    listed = ", ".join(name for name, _ in cards)
    raise MagpieError(
        f"bench: the server serves {len(cards)} models ({listed}); name one with benchmark.model (--model)"
    )
