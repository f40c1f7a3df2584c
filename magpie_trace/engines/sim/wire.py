"""Messages between sim processes: one JSON object per line, over a socket or a pipe."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

# Step messages are small; a profile's stop acknowledgement lists a few paths.
LINE_LIMIT = 1 << 20


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


async def receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None when the other side has gone (EOF or reset)."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    if not line:
        return None
    return orjson.loads(line)
