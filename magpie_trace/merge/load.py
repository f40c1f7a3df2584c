"""Pass 1 over each trace: check it is a Kineto trace and pick out the few events the merge needs
(collectives, process metadata, steps, the profiler span) without building objects for the rest.

The file is inflated once into a reused buffer of its size (gzip records it), so memory stays at one
uncompressed trace; pass 2 inflates it again as a stream, which is cheaper than writing and reading
back a decompressed copy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np
import orjson
from isal import igzip, isal_zlib

from magpie_trace.errors import TraceError
from magpie_trace.merge import bytescan
from magpie_trace.merge.anchors import Anchor, classify
from magpie_trace.merge.bytescan import MAX_CLOCK_NS
from magpie_trace.merge.discover import HOST_NAME, TraceFile

# Event names pass 1 looks at: collectives (gloo, NCCL/RCCL kernels, custom all-reduce), process
# metadata, step annotations (PyTorch, vLLM, SGLang) and the profiler's own span.
_PREFIXES = bytescan.prefix_table((
    b"gloo:", b"c10d::send", b"nccl", b"rccl", b"Nccl", b"cross_device_reduce", b"void vllm::cross_device_reduce",
    b"void sglang::cross_device_reduce", b'process_name"', b'process_labels"', b'process_sort_index"',
    b"ProfilerStep#", b"execute_", b"step[", b"PyTorch Profiler",
))
_PIECE = 8 << 20  # uncompressed bytes inflated at a time
_STEP_NAME = re.compile(r"^(ProfilerStep#\d+|execute_.*|step\[.*)$")


@dataclass
class Step:
    name: str
    start: int  # absolute ns, own clock
    end: int


@dataclass
class Scanned:
    """What pass 1 learnt about one file; positions are byte offsets into the uncompressed file."""

    file: TraceFile
    size: int
    compressed_size: int
    events: tuple[int, int]  # the traceEvents array, `[` to `]` inclusive
    top: list[tuple[str, int, int]]  # every top-level key and its value's span, in file order
    values: dict[str, bytes]  # the raw values of the top-level keys other than traceEvents
    base_ns: int | None  # None: the old absolute-microsecond format
    distributed_info: dict[str, Any] | None
    anchors: list[Anchor]
    meta_cuts: list[tuple[int, int]]  # process_* metadata events (replaced in the merged file)
    process_names: dict[bytes, str]  # pid token -> its original process name
    steps: list[Step]
    span: tuple[int, int] | None  # profiler window (absolute ns, own clock)
    warnings: list[str] = field(default_factory=list)
    host: str | None = None  # the trace's `host_name` (vLLM writes it), when it may name a node


class Scratch:
    """Pass 1's inflate buffer, kept between the files one process scans: a fresh buffer costs a page
    fault per page, as much CPU as inflating into it. `release` before pass 2 so memory stays at one
    uncompressed trace."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def at_least(self, size: int) -> bytearray:
        if len(self.buffer) < size:
            self.buffer = bytearray()  # drop the old pages first
            self.buffer = bytearray(size)
        return self.buffer

    def release(self) -> None:
        self.buffer = bytearray()


SCRATCH = Scratch()


def _sizes(f: BinaryIO) -> tuple[int, int, bool]:
    """(uncompressed size as the gzip trailer records it, mod 4 GiB and only the last member's, at
    most the bound on inflation, else the file's size; the file's size; is it gzip) of an open
    file, left at its start."""
    csize = os.fstat(f.fileno()).st_size
    gz = f.read(2) == b"\x1f\x8b"
    hint = csize
    if gz and csize >= 18:
        f.seek(-4, os.SEEK_END)
        hint = min(int.from_bytes(f.read(4), "little"), _limit(csize, gz))  # the trailer can lie
    f.seek(0)
    return hint, csize, gz


def _limit(csize: int, gz: bool) -> int:
    """The most bytes a file of csize bytes may inflate to (MAX_RATIO; a plain file: its size)."""
    return max(MAX_RATIO * csize, MIN_BOMB_BYTES) if gz else csize


def size_hint(path: Path) -> int:
    """The file's uncompressed size as `_sizes` tells it; 0 when unreadable (reading it again says why)."""
    try:
        with open(path, "rb") as f:
            return _sizes(f)[0]
    except OSError:
        return 0


def decompress(path: Path, scratch: Scratch = SCRATCH) -> tuple[bytearray, int, int]:
    """(buffer, size, compressed size): the file's uncompressed bytes are buffer[:size], inflated
    straight into `scratch` (sized from the gzip trailer, grown if that was short: several members or
    > 4 GiB). The buffer is reused by the next call; the error names the file."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from None
    with f:
        hint, csize, gz = _sizes(f)
        limit = _limit(csize, gz)
        buf = scratch.at_least(hint + 1)  # one spare byte: a full buffer means "maybe more"
        stream: BinaryIO = igzip.IGzipFile(fileobj=f) if gz else f  # type: ignore[assignment]
        size = 0
        try:
            while True:
                n = stream.readinto(memoryview(buf)[size : size + _PIECE])
                if not n:
                    break
                size += n
                if size == len(buf):  # rare: the trailer under-stated the size
                    if size > limit:
                        raise TraceError(_bomb(path, size, csize))
                    buf.extend(bytearray(min(len(buf), limit + 1 - len(buf)) or 1))
        except (OSError, EOFError, ValueError, isal_zlib.error) as exc:
            raise TraceError(f"{path}: {'truncated or corrupt gzip' if gz else 'cannot read'} ({exc})") from None
    return buf, size, csize


def _bomb(path: Path, size: int, csize: int) -> str:
    return (f"{path}: inflates to more than {size / 1e6:.0f} MB from {csize / 1e6:.1f} MB (over {MAX_RATIO}x, "
            "not a profiler trace: a gzip bomb?); refused")


def open_text(path: Path) -> BinaryIO:
    """The file's uncompressed bytes as a stream (pass 2)."""
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return igzip.IGzipFile(fileobj=f)  # type: ignore[return-value]
    f.seek(0)
    return f


def _address(buf: Any) -> int:
    return np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0] if len(buf) else 0


def top_level(path: Path, data: bytes | memoryview) -> list[tuple[str, int, int]]:
    """Validate the whole document as JSON (msgspec skips values without building them) and return
    each top-level key's value span."""
    try:
        doc = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    except msgspec.ValidationError:
        raise TraceError(f"{path}: not a trace (the top level is not a JSON object)") from None
    except msgspec.DecodeError as exc:
        raise TraceError(f"{path}: not JSON ({exc})") from None
    if "traceEvents" not in doc:
        raise TraceError(f"{path}: not a trace (no traceEvents)")
    base = _address(data)
    spans = []
    for key, raw in doc.items():
        lo = _address(raw) - base
        spans.append((key, lo, lo + len(raw)))
    lo = next(lo for key, lo, _ in spans if key == "traceEvents")
    if data[lo : lo + 1] != b"[":
        raise TraceError(f"{path}: not a trace (traceEvents is not a list)")
    return spans


def event_at(data: bytes | bytearray, pos: int, floor: int, ceiling: int) -> tuple[int, int, dict[str, Any]] | None:
    """The event object that contains byte `pos`, decoded: walk back over `{` for its start and
    forward over `}` for its end until the slice parses as an object with a `ph` (bounded tries)."""
    lo = pos
    for _ in range(16):
        lo = data.rfind(b"{", floor, lo)
        if lo < 0:
            return None
        hi = pos
        for _ in range(16):
            hi = data.find(b"}", hi, ceiling) + 1
            if hi <= 0:
                break
            try:
                ev = orjson.loads(data[lo:hi])
            except orjson.JSONDecodeError:
                continue
            if isinstance(ev, dict) and "ph" in ev:
                return lo, hi, ev
            break
    return None


def _decoded(data: bytes | bytearray, lo: int, hi: int) -> tuple[int, int, dict[str, Any]] | None:
    """The event at [lo, hi) when that slice is one (the fast path of `event_at`)."""
    if lo < 0:
        return None
    try:
        ev = orjson.loads(data[lo:hi])
    except orjson.JSONDecodeError:
        return None
    return (lo, hi, ev) if isinstance(ev, dict) and "ph" in ev else None


def _separator_span(data: bytes, lo: int, hi: int, floor: int) -> tuple[int, int]:
    """The event plus one neighbouring comma, so cutting it leaves a valid array."""
    j = hi
    while data[j : j + 1] in (b" ", b"\n", b"\r", b"\t"):
        j += 1
    if data[j : j + 1] == b",":
        j += 1
        while data[j : j + 1] in (b" ", b"\n", b"\r", b"\t"):
            j += 1
        return lo, j
    k = data.rfind(b",", floor, lo)
    return (k if k >= 0 else lo), hi


def candidate_names(data: bytes | bytearray, lo: int, hi: int) -> list[int]:
    """Positions of `"name":` keys whose value starts with a prefix pass 1 cares about."""
    found, count = bytescan.positions(bytescan.find_names, np.empty(max(1024, (hi - lo) >> 12), dtype=np.int64),
                                      np.frombuffer(data, dtype=np.uint8), lo, hi, *_PREFIXES)
    return found[:count].tolist()


MAX_RATIO = 200  # uncompressed / compressed: Kineto JSON compresses ~10-20x, a gzip bomb ~1000x
MIN_BOMB_BYTES = 256 << 20  # below this, any ratio is harmless


def _us_to_ns(value: Any, path: Path, what: str, base: int = 0) -> int:
    """A `ts`/`dur` in microseconds as integer ns, or one line naming the file; `base` + it must be
    a clock reading (within MAX_CLOCK_NS of the epoch, as pass 2 checks too)."""
    try:
        us = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{path}: an event's {what} is not a number ({str(value)[:40]!r})") from None
    if not abs(us * 1000 + base) <= MAX_CLOCK_NS:  # also NaN
        raise TraceError(f"{path}: an event's {what} is {value!r} us, outside any plausible clock reading")
    return int(round(us * 1000))


def scan(tf: TraceFile) -> Scanned:
    """Pass 1 for one file."""
    data, size, csize = decompress(tf.path)
    top = top_level(tf.path, memoryview(data)[:size])
    values = {key: (lo, hi) for key, lo, hi in top}
    base_ns: int | None = None
    if "baseTimeNanoseconds" in values:
        lo, hi = values["baseTimeNanoseconds"]
        try:
            base_ns = int(data[lo:hi])
        except ValueError:
            raise TraceError(f"{tf.path}: baseTimeNanoseconds is not an integer") from None
        if abs(base_ns) > MAX_CLOCK_NS:
            raise TraceError(f"{tf.path}: baseTimeNanoseconds is {base_ns}, outside any plausible clock reading")
    dist = None
    if "distributedInfo" in values:
        lo, hi = values["distributedInfo"]
        parsed = orjson.loads(data[lo:hi])
        dist = parsed if isinstance(parsed, dict) else None
    host = None
    if "host_name" in values:
        lo, hi = values["host_name"]
        parsed = orjson.loads(data[lo:hi])
        host = parsed if isinstance(parsed, str) and HOST_NAME.match(parsed) else None
    ev_lo, ev_hi = values["traceEvents"]
    base = base_ns or 0
    anchors: list[Anchor] = []
    meta_cuts: list[tuple[int, int]] = []
    names: dict[bytes, str] = {}
    steps: list[Step] = []
    span: tuple[int, int] | None = None
    positions = candidate_names(data, ev_lo + 1, ev_hi - 1)
    bounds = bytescan.event_bounds(np.frombuffer(data, dtype=np.uint8, count=size), np.array(positions, dtype=np.int64),
                                   ev_lo)
    for pos, (lo, hi) in zip(positions, bounds.tolist()):
        found = _decoded(data, lo, hi) or event_at(data, pos, ev_lo, ev_hi)
        if found is None:
            continue
        lo, hi, ev = found
        name = ev.get("name")
        ph = ev.get("ph")
        if not isinstance(name, str):
            continue
        if ph == "M" and name.startswith("process_"):
            meta_cuts.append(_separator_span(data, lo, hi, ev_lo + 1))
            if name == "process_name" and isinstance(ev.get("args"), dict):
                names[orjson.dumps(ev.get("pid"))] = str(ev["args"].get("name", ""))
            continue
        if ph != "X" or "ts" not in ev:
            continue
        start = base + _us_to_ns(ev["ts"], tf.path, "ts", base)
        end = start + _us_to_ns(ev.get("dur") or 0, tf.path, "dur")
        if name.startswith("PyTorch Profiler"):
            span = (start, end)
        elif _STEP_NAME.match(name) and (ev.get("cat") in ("user_annotation", None) or name.startswith("ProfilerStep")):
            steps.append(Step(name, start, end))
        else:
            anchor = classify(ev, start, end)
            if anchor is not None:
                anchors.append(anchor)
    if any(a.gpu for a in anchors):
        anchors = [a for a in anchors if a.gpu]
    steps.sort(key=lambda s: s.start)
    meta_cuts = _disjoint(meta_cuts)
    kept = {key: bytes(data[lo:hi]) for key, lo, hi in top if key != "traceEvents"}
    return Scanned(tf, size, csize, (ev_lo, ev_hi), top, kept, base_ns, dist, anchors, meta_cuts, names,
                   steps, span, host=host)


def _disjoint(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
