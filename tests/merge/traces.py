"""Test inputs made from the real traces in tests/data/traces, with known clock errors injected.

Written with orjson + stdlib gzip (not with the merge's own byte-level code), so the merge is checked
against an independent writer; orjson also prints floats in their shortest form, unlike Kineto,
which exercises the parser's other layouts.
"""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path
from typing import Any

import orjson

from tests.real_traces import vllm_cpu

GPU_COLLECTIVE = re.compile(r"nccl", re.I)


def vllm_rank(rank: int) -> Path:
    return vllm_cpu(f"rank{rank}.*.pt.trace.json.gz")


def load(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    return orjson.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def save(doc: dict[str, Any], path: Path) -> Path:
    data = orjson.dumps(doc)
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.name.endswith(".gz") else data)
    return path


def abs_ns(doc: dict[str, Any], ts: float) -> int:
    return doc.get("baseTimeNanoseconds", 0) + round(ts * 1000)


def span(doc: dict[str, Any]) -> tuple[int, int]:
    """First and last absolute ns of the trace's events."""
    stamps = [abs_ns(doc, e["ts"]) for e in doc["traceEvents"] if "ts" in e and e.get("ph") != "M"]
    return min(stamps), max(stamps)


def shift(doc: dict[str, Any], offset_ns: int, drift_ppm: float, t_ref_ns: int) -> dict[str, Any]:
    """A copy whose clock reads c + offset + drift * (c - t_ref): every ts moves, durations stretch."""
    base = doc.get("baseTimeNanoseconds", 0)

    def move(c: int) -> int:
        return c + offset_ns + round(drift_ppm * 1e-6 * (c - t_ref_ns))

    out = dict(doc)
    events = []
    for e in doc["traceEvents"]:
        e = dict(e)
        if "ts" in e:
            start = base + round(e["ts"] * 1000)
            new_start = move(start)
            if isinstance(e.get("dur"), (int, float)):
                e["dur"] = (move(start + round(e["dur"] * 1000)) - new_start) / 1000
            e["ts"] = (new_start - base) / 1000
        events.append(e)
    out["traceEvents"] = events
    return out


def truth(offset_ns: int, drift_ppm: float, t_ref_ns: int, c: Any) -> Any:
    """The injected clock error at shifted clock reading c (exact inverse of `shift`)."""
    d = c - t_ref_ns
    return d - (d - offset_ns) / (1 + drift_ppm * 1e-6)


def gpu_partner(doc: dict[str, Any], rank: int, jitter_us: float, seed: int = 0) -> dict[str, Any]:
    """Rank `rank`'s trace made from a real rank's trace: same events, NCCL kernel start and end moved
    by up to +-jitter_us (independently), distributedInfo.rank changed."""
    rng = random.Random(seed)
    out = dict(doc)
    events = []
    for e in doc["traceEvents"]:
        if e.get("cat") == "kernel" and GPU_COLLECTIVE.search(e.get("name", "")):
            e = dict(e)
            start = round(e["ts"] * 1000) + round(rng.uniform(-jitter_us, jitter_us) * 1000)
            end = round((e["ts"] + e["dur"]) * 1000) + round(rng.uniform(-jitter_us, jitter_us) * 1000)
            e["ts"], e["dur"] = start / 1000, (end - start) / 1000
        events.append(e)
    out["traceEvents"] = events
    out["distributedInfo"] = dict(doc["distributedInfo"], rank=rank)
    return out
