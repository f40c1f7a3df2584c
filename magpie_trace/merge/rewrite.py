"""Pass 2: stream one trace's events (inflating it again), rewriting values at the byte level, into
its aligned per-rank file and its part of the merged Perfetto file.

Aligned file: every top-level key kept in order, `baseTimeNanoseconds` set to the common base, every
`ts` mapped onto the reference clock (and `dur` too when there is drift); pids and ids untouched, so
TraceLens reads it like the original. Merged part: the same events with dense per-file pids, flow ids
made unique per file (`id * n_files + index`), the original `process_*` metadata left out (perfetto.py
names the processes, from the pid map returned here).
"""

from __future__ import annotations

import bisect
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np
import orjson
from isal import igzip

from magpie_trace.errors import TraceError
from magpie_trace.fsutil import temp_path_for
from magpie_trace.merge import bytescan
from magpie_trace.merge.bytescan import MAX_CLOCK_NS
from magpie_trace.merge.gzipjoin import LEVEL, PartWriter

CHUNK = 8 << 20
PIDS_PER_FILE = 1000  # merged pids of file i are i*1000+1 ...; more processes in one file is an error
_WS = b" \n\r\t"


@dataclass(frozen=True)
class Transform:
    """File timestamp (ns, relative to its own base) -> output timestamp (ns, relative to base_out)."""

    base_in: int
    base_out: int
    offset_ns: float = 0.0
    drift_ppm: float = 0.0
    t0_ns: int = 0

    def apply(self, rel_ns: np.ndarray) -> np.ndarray:
        c = rel_ns.astype(np.int64) + self.base_in
        theta = self.offset_ns + self.drift_ppm * 1e-6 * (c - self.t0_ns).astype(np.float64)
        return c - np.rint(theta).astype(np.int64) - self.base_out


@dataclass
class RewriteJob:
    index: int
    n_files: int
    label: str
    source: Path
    events: tuple[int, int]
    top: list[tuple[str, int, int]]
    values: dict[str, bytes]
    has_base: bool
    transform: Transform
    meta_cuts: list[tuple[int, int]]
    process_names: dict[bytes, str]
    aligned_path: Path | None
    merged_part: Path | None
    window: tuple[int, int] | None = None  # output-relative ns
    alignment_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewriteResult:
    index: int
    input_bytes: int
    merged: tuple[Path, int, int] | None  # (part path, crc, length)
    events_kept: int | None  # only counted when a window is cut
    events_timed: int | None = None  # of those, events with a time (not metadata)
    pids: dict[bytes, int] = field(default_factory=dict)  # original pid token -> merged pid (perfetto.py names them)


class _Light(msgspec.Struct):
    ph: str = ""
    name: Any = None
    ts: float | None = None
    dur: float | None = None


_KEY_AHEAD = re.compile(rb'\s*"[^"\\]{1,64}"\s*:')


def _cut_point(block: bytes | bytearray, start: int, cuts: list[tuple[int, int]], cut_starts: list[int],
               size: int) -> int:
    """A split position in `block[:size]`: right before a `,` that is followed by an object key (so
    the split is outside every string and value) and outside every byte range we drop."""
    k = size
    while True:
        k = block.rfind(b",", 0, k)
        if k <= 0:
            return size
        if _KEY_AHEAD.match(block, k + 1, size):
            i = bisect.bisect_right(cut_starts, start + k) - 1
            if i < 0 or not (cuts[i][0] <= start + k < cuts[i][1]):
                return k


class _Rewriter:
    """Rewrites one file's chunks; keeps the file's pid mapping across chunks."""

    def __init__(self, job: RewriteJob) -> None:
        self.job = job
        self.pids: dict[bytes, int] = {}  # original pid token -> merged pid
        self.known = bytescan.pid_table(PIDS_PER_FILE - 1)
        self.pid_rows = np.zeros(1, dtype=np.int64)
        self.new_pids = np.zeros((PIDS_PER_FILE, 4), dtype=np.int64)
        self.last_ts = np.zeros(1, dtype=np.int64)
        self.out_a = self.out_m = np.empty(0, dtype=np.uint8)  # reused: fresh pages cost page faults
        self.keys = np.empty(CHUNK // 32, dtype=np.int64)  # positions of the keys to rewrite

    def chunk(self, chunk: bytes | memoryview, aligned: bool, merged: bool,
              cuts: list[tuple[int, int]]) -> tuple[memoryview | None, memoryview | None]:
        """One chunk rewritten for the aligned file and/or the merged part (`cuts`: ranges to drop
        there). The results are views of buffers reused by the next call: consume them first."""
        src = np.frombuffer(chunk, dtype=np.uint8)
        cap = 4 * len(chunk) + 1024  # a value grows by at most ~20 bytes and takes at least 6 with its key
        if aligned and self.out_a.size < cap:
            self.out_a = np.empty(cap, dtype=np.uint8)
        if merged and self.out_m.size < cap:
            self.out_m = np.empty(cap, dtype=np.uint8)
        out_a, out_m = self.out_a, self.out_m
        t = self.job.transform
        cut_rows = np.array(cuts, dtype=np.int64).reshape(-1, 2)
        self.keys, n_keys = bytescan.positions(bytescan.key_colons, self.keys, src)
        la, lm, n_new = bytescan.rewrite(
            src, self.keys[:n_keys], out_a, out_m, aligned, merged, t.base_in, t.base_out, t.offset_ns, t.drift_ppm * 1e-6, t.t0_ns,
            cut_rows, self.known, self.job.index * PIDS_PER_FILE, self.pid_rows, self.new_pids, self.job.n_files,
            self.job.index, self.last_ts)
        if n_new == bytescan.OUT_OF_RANGE:
            raise TraceError(f"{self.job.source}: an event's ts or dur is outside any plausible clock reading")
        if n_new < 0:
            raise TraceError(f"{self.job.label}: more than {PIDS_PER_FILE - 1} processes in one trace")
        for new_pid, kind, a, b in self.new_pids[:n_new].tolist():
            self.pids[bytes(chunk[a:b]) if kind else str(a).encode()] = new_pid
        return (memoryview(out_a[:la]) if aligned else None), (memoryview(out_m[:lm]) if merged else None)

    def stream(self, source: BinaryIO, lo: int, hi: int, cuts: list[tuple[int, int]], sinks: tuple[Any, Any]) -> None:
        """Rewrite bytes [lo, hi) of the uncompressed stream (positioned at 0) chunk by chunk into
        (aligned sink, merged sink); output buffers go to the compressors without extra copies."""
        aligned_sink, merged_sink = sinks
        cut_starts = [c[0] for c in cuts]
        _skip(source, lo)
        pos = lo
        block = bytearray(CHUNK)
        view = memoryview(block)
        carried = 0
        while pos < hi:
            want = min(CHUNK, hi - pos)
            got = carried
            while got < want:
                n = source.readinto(view[got:want])
                if not n:
                    raise TraceError(f"{self.job.source}: ended early (changed since it was read?)")
                got += n
            k = got if pos + got >= hi else _cut_point(block, pos, cuts, cut_starts, got)
            chunk = view[:k]
            local = [(max(a, pos) - pos, min(b, pos + k) - pos) for a, b in cuts if a < pos + k and b > pos]
            a_out, m_out = self.chunk(chunk, aligned_sink is not None, merged_sink is not None, local)
            if aligned_sink is not None:
                aligned_sink.write(a_out)
            if merged_sink is not None:
                merged_sink.write(m_out)
            chunk.release()
            carried = got - k
            block[:carried] = block[k:got]
            pos += k


def _skip(source: BinaryIO, n: int) -> None:
    while n > 0:
        got = len(source.read(min(n, CHUNK)))
        if not got:
            break
        n -= got


def _window_filter(job: RewriteJob, data: bytes) -> tuple[bytes, bytes, int, int]:
    """(events for the aligned file, events for the merged file, count kept, how many of those carry
    a time) inside the window."""
    lo_ns, hi_ns = job.window  # type: ignore[misc]
    t = job.transform
    decoder = msgspec.json.Decoder(_Light)
    events = msgspec.json.decode(data, type=list[msgspec.Raw])
    keep_aligned: list[bytes] = []
    keep_merged: list[bytes] = []
    timed = 0
    for raw in events:
        ev = decoder.decode(raw)
        if ev.ph != "M" and ev.ts is not None:
            if not (abs(ev.ts * 1000 + t.base_in) <= MAX_CLOCK_NS and abs(ev.dur or 0.0) * 1000 <= MAX_CLOCK_NS):
                raise TraceError(f"{job.source}: an event's ts or dur is outside any plausible clock reading")
            start = int(t.apply(np.array([round(ev.ts * 1000)]))[0])
            end = start + int(round((ev.dur or 0.0) * 1000))
            if end < lo_ns or start > hi_ns:
                continue
            timed += 1
        keep_aligned.append(bytes(raw))
        if not (ev.ph == "M" and isinstance(ev.name, str) and ev.name.startswith("process_")):
            keep_merged.append(bytes(raw))
    return b",".join(keep_aligned), b",".join(keep_merged), len(keep_aligned), timed


def _header_and_footer(job: RewriteJob) -> tuple[bytes, bytes]:
    """The aligned file's bytes before and after the event array content."""
    before: list[bytes] = []
    after: list[bytes] = []
    target = before
    base = f'"baseTimeNanoseconds": {job.transform.base_out}'.encode()
    for key, lo, hi in job.top:
        if key == "magpie_trace":
            continue
        if key == "traceEvents":
            if not job.has_base:
                before.append(base)
            before.append(b'"traceEvents": [')
            target = after
            continue
        if key == "baseTimeNanoseconds":
            target.append(base)
            continue
        target.append(orjson.dumps(key) + b": " + job.values[key])
    after.append(b'"magpie_trace": ' + orjson.dumps(job.alignment_meta))
    head = b"{" + b", ".join(before[:-1]) + (b", " if len(before) > 1 else b"") + before[-1]
    tail = b"], " + b", ".join(after) + b"}"
    return head, tail


class _Counter:
    """Passes writes on and remembers whether any event (non-whitespace) went through."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.empty = True

    def write(self, data: bytes | memoryview) -> None:
        if self.empty and bytes(data).strip(_WS):
            self.empty = False
        self.sink.write(data)


def rewrite(job: RewriteJob) -> RewriteResult:
    """Write the aligned file and/or merged part of one trace. Runs in a worker process."""
    from magpie_trace.merge.load import open_text

    rw = _Rewriter(job)
    ev_lo, ev_hi = job.events
    aligned_file = merged_part = None
    tmp_aligned = temp_path_for(job.aligned_path) if job.aligned_path else None
    kept = timed = None
    try:
        if tmp_aligned is not None:
            head, tail = _header_and_footer(job)
            aligned_file = igzip.open(tmp_aligned, "wb", compresslevel=LEVEL)
            aligned_file.write(head)
        if job.merged_part is not None:
            merged_part = PartWriter(job.merged_part)
        merged_sink = _Counter(merged_part) if merged_part is not None else None
        with open_text(job.source) as source:
            if job.window is None:
                rw.stream(source, ev_lo + 1, ev_hi - 1, job.meta_cuts, (aligned_file, merged_sink))
            else:
                _skip(source, ev_lo)
                a_events, m_events, kept, timed = _window_filter(job, source.read(ev_hi - ev_lo))
                for content, sinks in ((a_events, (aligned_file, None)), (m_events, (None, merged_sink))):
                    if any(s is not None for s in sinks):
                        rw.stream(io.BytesIO(content), 0, len(content), [], sinks)
        if aligned_file is not None:
            aligned_file.write(tail)
            aligned_file.close()
            aligned_file = None
            os.replace(tmp_aligned, job.aligned_path)  # type: ignore[arg-type]
        merged = None
        if merged_part is not None and merged_sink is not None:
            crc, length = merged_part.close()
            if not merged_sink.empty:  # a part with no event is left out of the merged file
                merged = (job.merged_part, crc, length)
    except BaseException:
        if aligned_file is not None:
            aligned_file.close()
        if tmp_aligned is not None and tmp_aligned.exists():
            tmp_aligned.unlink()
        raise
    return RewriteResult(job.index, ev_hi - ev_lo, merged, kept, timed, dict(rw.pids))
