"""The events table: every duration event of every aligned rank trace, one row each, in Parquet.

One file per rank (`events/rank<G>.parquet`), so a query about one rank reads one file. Times are
integer nanoseconds after the merge's common `baseTimeNanoseconds`, on the aligned (reference) clock.
Each row says where the event ran (node, rank, device, pid, tid, track), what it is (Kineto's `cat`,
our `category`, name), when (start/end), which step of the rank it belongs to, and, for
collectives, which matched collective it is (the merge's `collectives` table id), its process group,
message size and NCCL algorithm where the trace records them.

Reading is compiled (`eventscan`): each distinct string is decoded once, the rest stays numpy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
from isal import igzip

from magpie_trace.analyze import eventscan as es
from magpie_trace.analyze import timeline
from magpie_trace.errors import TraceError
from magpie_trace.fsutil import temp_path_for
from magpie_trace.merge.anchors import GPU_COLLECTIVE
from magpie_trace.merge.gzipjoin import LEVEL
from magpie_trace.merge.load import _STEP_NAME, Scratch, decompress, size_hint

CATEGORIES = ("compute_kernel", "comm_kernel", "memcpy", "gpu_annotation", "cpu_op", "cpu_comm", "annotation",
              "runtime", "python", "other")
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation")
STEP_FAMILIES = ("ProfilerStep#", "step[", "execute_")  # the first family a rank has is its steps
# CPU-side collectives: gloo execution (the vLLM CPU build's anchors), c10d ops and their annotations.
_CPU_COMM = re.compile(r"^(gloo:|nccl:|rccl:|c10d::|_c10d_functional::|c10d_functional::|symm_mem::"
                       r"|record_param_comms$)")
_ALGORITHM = re.compile(r"_(NVLS_TREE|NVLS|COLLNET_DIRECT|COLLNET_CHAIN|RING|TREE|PAT)_(LL128|LL|SIMPLE)", re.IGNORECASE)
_DTYPE_BYTES = {
    "float": 4, "float32": 4, "double": 8, "float64": 8, "half": 2, "float16": 2, "bfloat16": 2, "int": 4,
    "int32": 4, "long": 8, "int64": 8, "short": 2, "int16": 2, "char": 1, "int8": 1, "byte": 1, "uint8": 1,
    "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}
SCHEMA: dict[str, Any] = {
    "node": pl.Utf8, "rank": pl.Int32, "label": pl.Utf8, "device": pl.Utf8, "pid": pl.Utf8, "tid": pl.Utf8,
    "track": pl.Utf8, "category": pl.Utf8, "cat": pl.Utf8, "name": pl.Utf8, "start_ns": pl.Int64,
    "end_ns": pl.Int64, "dur_ns": pl.Int64, "step": pl.Int32, "collective": pl.Int64, "process_group": pl.Utf8,
    "msg_bytes": pl.Int64, "algorithm": pl.Utf8, "external_id": pl.Int64, "correlation": pl.Int64,
}
# As stored: each text column dictionary-encoded (a few thousand distinct values in a million rows),
# which Parquet readers (duckdb) return as text; building and writing it is 2x cheaper than plain text.
STORED: dict[str, Any] = {c: pl.Categorical if t == pl.Utf8 else t for c, t in SCHEMA.items()}
SEGMENT_SCHEMA: dict[str, Any] = {"rank": pl.Int32, "step": pl.Int32, "t0_ns": pl.Int64, "t1_ns": pl.Int64,
                                  "compute": pl.Boolean, "comm": pl.Boolean, "memcpy": pl.Boolean}
STEP_SCHEMA: dict[str, Any] = {"node": pl.Utf8, "rank": pl.Int32, "step": pl.Int32, "name": pl.Utf8,
                               "start_ns": pl.Int64, "end_ns": pl.Int64}
_FIRST_ROWS = 1 << 15


class _Buffers:
    """The inflated trace, the scan's masks and its row array, kept between the files one process
    reads: a fresh page costs a fault when first written, which for the rows of a 204 MB trace
    (~150 MB) is ~0.15 CPU s, half as much as the scan that fills them."""

    def __init__(self) -> None:
        self.inflate = Scratch()
        self.release()

    def masks(self, blocks: int) -> tuple[np.ndarray, np.ndarray]:
        if self.quotes.size < blocks:
            self.quotes = self.structure = np.empty(0, np.uint64)
            self.quotes, self.structure = np.empty(blocks, np.uint64), np.empty(blocks, np.uint64)
        return self.quotes[:blocks], self.structure[:blocks]

    def rows(self, n: int, keep: int = 0) -> np.ndarray:
        """At least n rows, the first `keep` of the current ones copied over."""
        if self.row_array.shape[0] < n:
            more = np.empty((n, es.N_COLUMNS), np.int64)
            more[:keep] = self.row_array[:keep]
            self.row_array = more
        return self.row_array

    def release(self) -> None:
        self.inflate.release()
        self.quotes = self.structure = np.empty(0, np.uint64)
        self.row_array = np.empty((0, es.N_COLUMNS), np.int64)


_BUFFERS = _Buffers()


def release_buffers() -> None:
    """Free what `build` keeps between files (call when the last rank is built)."""
    _BUFFERS.release()


@dataclass
class RankTables:
    """What one rank trace gives: its events, step windows and timeline segments (timeline.py), and
    whether it is measured on its GPU or, having no GPU activity, on its CPU."""

    events: pl.DataFrame
    steps: pl.DataFrame
    segments: pl.DataFrame
    domain: str


@dataclass
class RankSource:
    """One aligned rank trace and what the merge knows about it."""

    path: Path
    node: str
    rank: int
    label: str
    collectives: pl.DataFrame | None  # this rank's rows of collectives.parquet
    annotate: bool = False  # rewrite the trace with each matched collective's id in its args (merge only)


def category(cat: str | None, name: str) -> str:
    """Our category for a Kineto (cat, name); the breakdown's compute/comm/memcpy classes come from it."""
    if cat == "kernel":
        return "comm_kernel" if GPU_COLLECTIVE.search(name) else "compute_kernel"
    if cat in ("gpu_memcpy", "gpu_memset"):
        return "memcpy"
    if cat == "gpu_user_annotation":
        return "gpu_annotation"
    if cat in ("cpu_op", "user_annotation", None) and _CPU_COMM.match(name):
        return "cpu_comm"
    if cat == "cpu_op":
        return "cpu_op"
    if cat in ("user_annotation", "Trace"):
        return "annotation"
    if cat in ("cuda_runtime", "cuda_driver"):
        return "runtime"
    if cat == "python_function":
        return "python"
    return "other"


def algorithm(name: str) -> str | None:
    """NCCL/RCCL algorithm and protocol from a kernel name (`..._RING_LL(...)` -> `RING_LL`)."""
    m = _ALGORITHM.search(name)
    return f"{m.group(1).upper()}_{m.group(2).upper()}" if m else None


def message_bytes(args: dict[str, Any]) -> int | None:
    """Bytes a collective moves as nccl-tests counts them: the larger of its input and output."""
    nelems = [v for v in (args.get("In msg nelems"), args.get("Out msg nelems")) if isinstance(v, int)]
    size = _DTYPE_BYTES.get(str(args.get("dtype", "")).lower())
    return max(nelems) * size if nelems and size else None


def _strings(values: list[str | None], codes: np.ndarray) -> pl.Series:
    """values[codes] as a categorical column: one code per row, each distinct text stored once."""
    return pl.Series(values, dtype=pl.Categorical).gather(codes)


def _text(src: np.ndarray, lo: int, length: int) -> str:
    raw = bytes(src[lo : lo + length])
    return str(orjson.loads(b'"' + raw + b'"')) if b"\\" in raw else raw.decode("utf-8", errors="replace")


def _decode(src: np.ndarray, lo: np.ndarray, length: np.ndarray, hashes: np.ndarray, path: Path
            ) -> tuple[np.ndarray, list[str | None]]:
    """(code per row, distinct strings): each distinct string (by its 64-bit hash; ~10^3 per file,
    so a collision is a 1e-13 chance) is decoded once."""
    codes, first = es.factorize(hashes)
    if not np.array_equal(length, length[first][codes]):
        raise TraceError(f"{path}: two different strings share a 64-bit hash; cannot build the events table")
    return codes, [_text(src, int(lo[f]), int(length[f])) if lo[f] >= 0 else None for f in first.tolist()]


def _ids(kind: np.ndarray, val: np.ndarray, lo: np.ndarray, length: np.ndarray, src: np.ndarray
         ) -> tuple[np.ndarray, list[str]]:
    """pid/tid as text: numbers in decimal, strings as written (a file has few distinct values)."""
    codes, first = es.factorize(val)
    values = [_text(src, int(lo[f]), int(length[f])) if kind[f] == es.KIND_STR
              else str(int(val[f])) if kind[f] == es.KIND_INT else "" for f in first.tolist()]
    return codes, values


def _scan_rows(src: np.ndarray, size: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(a row per timed X event, the [lo, hi) span of every M event). The first chunk tells the bytes
    per event, which sizes one array for the rest (no list of chunks to join: that copy cost as much
    as the scan)."""
    i = es.event_array(src, size)
    if i < 0:
        raise TraceError(f"{path}: not a trace (no traceEvents array)")
    quotes, structure = _BUFFERS.masks((size + 63) // 64)
    es.masks(src, size, quotes, structure)
    out = _BUFFERS.rows(_FIRST_ROWS)
    meta = np.empty((1024, 2), np.int64)
    n_meta = np.zeros(1, np.int64)
    start = i
    rows = 0
    while True:
        got, i = es.scan(src, i, size, out[rows:], meta, n_meta, quotes, structure)
        if i < 0:
            raise TraceError(f"{path}: malformed JSON in traceEvents")
        rows += got
        if n_meta[0] > meta.shape[0]:  # rare: more metadata events than room; scan again with room
            meta = np.empty((2 * n_meta[0], 2), np.int64)
            i, rows, n_meta[0] = start, 0, 0
            continue
        if i >= size:
            return out[:rows], meta[: n_meta[0]]
        per_row = max(1.0, (i - start) / max(rows, 1))
        out = _BUFFERS.rows(int(rows + (size - i) / per_row * 1.1) + _FIRST_ROWS, keep=rows)


def _thread_names(src: np.ndarray, spans: np.ndarray) -> dict[tuple[str, str], str]:
    """Thread names by (pid, tid), from the `thread_name` metadata events."""
    threads: dict[tuple[str, str], str] = {}
    for lo, hi in spans.tolist():
        ev = orjson.loads(bytes(src[lo:hi]))
        args = ev.get("args")
        if ev.get("name") == "thread_name" and isinstance(args, dict) and "name" in args:
            threads.setdefault((str(ev.get("pid")), str(ev.get("tid"))), str(args["name"]))
    return threads


def step_windows(cats: list[str | None], names: list[str | None], cat_code: np.ndarray, name_code: np.ndarray,
                 start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Rows of the rank's step annotations (CPU side; one family, see STEP_FAMILIES), in time order,
    leaving out any that starts before the previous one ended."""
    cpu_cat = np.array([c in ("user_annotation", "Trace", None) for c in cats], bool)[cat_code]
    for prefix in STEP_FAMILIES:
        codes = [k for k, n in enumerate(names) if n is not None and n.startswith(prefix) and _STEP_NAME.match(n)]
        rows = np.flatnonzero(np.isin(name_code, codes) & (cpu_cat | (prefix == "ProfilerStep#")))
        rows = rows[np.array([cats[c] != "gpu_user_annotation" for c in cat_code[rows]], bool)] if rows.size else rows
        if rows.size:
            break
    else:
        return np.empty(0, np.int64)
    rows = rows[np.argsort(start[rows], kind="stable")]
    kept, last_end = [], np.iinfo(np.int64).min
    for r in rows.tolist():
        if start[r] >= last_end:
            kept.append(r)
            last_end = end[r]
    return np.array(kept, np.int64)


def assign_steps(steps: np.ndarray, start: np.ndarray, end: np.ndarray, gpu: np.ndarray, launch: np.ndarray,
                 correlation: np.ndarray) -> np.ndarray:
    """Step index per event, -1 for none. A CPU event is in the step whose annotation contains its
    start; a GPU event is in the step of the runtime call that launched it (same `correlation`), since
    the GPU runs behind the CPU."""
    out = np.full(start.size, -1, np.int64)
    if not steps.size:
        return out
    s_start, s_end = start[steps], end[steps]
    k = np.searchsorted(s_start, start, side="right") - 1
    inside = (k >= 0) & (start < s_end[np.maximum(k, 0)]) & ~gpu
    out[inside] = k[inside]
    launches = np.flatnonzero(launch & (correlation != es.MISSING))
    if launches.size:
        order = launches[np.argsort(correlation[launches], kind="stable")]
        keys = correlation[order]
        want = np.flatnonzero(gpu & (correlation != es.MISSING))
        pos = np.minimum(np.searchsorted(keys, correlation[want]), keys.size - 1)
        hit = keys[pos] == correlation[want]
        out[want[hit]] = out[order[pos[hit]]]
    return out


def _collective_args(src: np.ndarray, x: np.ndarray, comm: np.ndarray, external: np.ndarray
                     ) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """(process group code per row or -1, the groups, message bytes per row or -1), from the
    collective args of comm events; a kernel without them borrows those of the CPU op that launched
    it (same `External id`)."""
    n = x.shape[0]
    pg_code = np.full(n, -1, np.int64)
    size = np.full(n, -1, np.int64)
    groups: list[str | None] = []
    has_args = np.flatnonzero(comm & (x[:, es.COMM_ARGS] == 1))
    for r in has_args.tolist():
        args = orjson.loads(bytes(src[x[r, es.ARGS_LO] : x[r, es.ARGS_HI]]))
        name = args.get("Process Group Name")
        if name is not None:
            if str(name) not in groups:
                groups.append(str(name))
            pg_code[r] = groups.index(str(name))
        size[r] = message_bytes(args) or -1
    donors = has_args[external[has_args] != es.MISSING]
    takers = np.flatnonzero(comm & (x[:, es.COMM_ARGS] == 0) & (external != es.MISSING))
    if donors.size and takers.size:
        donors = donors[np.argsort(external[donors], kind="stable")]
        keys = external[donors]
        pos = np.minimum(np.searchsorted(keys, external[takers]), keys.size - 1)
        hit = keys[pos] == external[takers]
        pg_code[takers[hit]] = pg_code[donors[pos[hit]]]
        size[takers[hit]] = size[donors[pos[hit]]]
    return pg_code, groups, size


def _collective_ids(table: pl.DataFrame | None, names: list[str | None], name_code: np.ndarray,
                    start: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """(matched collective id per row or -1, process group per id) from the merge's collectives rows
    of this rank: same name, start within 2 ns (the table holds microseconds as floats)."""
    out = np.full(start.size, -1, np.int64)
    groups: dict[int, str] = {}
    if table is None or table.is_empty():
        return out, groups
    code_of = {n: k for k, n in enumerate(names) if n is not None}
    for (name,), rows in table.group_by(["name"]):
        code = code_of.get(str(name))
        if code is None:
            continue
        cand = np.flatnonzero(name_code == code)
        cand = cand[np.argsort(start[cand], kind="stable")]
        starts = start[cand]
        want = np.rint(rows["start_us"].to_numpy() * 1e3).astype(np.int64)
        pos = np.clip(np.searchsorted(starts, want), 1, max(starts.size - 1, 1))
        near = np.where(np.abs(starts[pos - 1] - want) <= np.abs(starts[np.minimum(pos, starts.size - 1)] - want),
                        pos - 1, np.minimum(pos, starts.size - 1))
        ok = np.abs(starts[near] - want) <= 2
        ids = rows["collective"].to_numpy()
        out[cand[near[ok]]] = ids[ok]
        for cid, pgname in zip(ids[ok].tolist(), rows["process_group"].to_numpy()[ok].tolist()):
            groups[cid] = pgname
    return out, groups


def annotate_ids(path: Path, src: np.ndarray, x: np.ndarray, collective: np.ndarray) -> None:
    """Rewrite `path` (an aligned trace, held in src) with `"magpie_collective": <id>` first in the
    args of every matched collective, so tools that pair collectives by order (TraceLens) or by hand
    can pair them by id instead. Everything else stays byte for byte."""
    rows = np.flatnonzero(collective >= 0)
    if not rows.size:
        return
    inserts: list[tuple[int, bytes]] = []
    for r in rows.tolist():
        at = int(x[r, es.ARGS_LO])
        if at >= 0 and src[at] == ord("{"):
            k = at + 1
            while int(src[k]) in b" \n\r\t":
                k += 1
            sep = b"" if src[k] == ord("}") else b", "
            inserts.append((at + 1, b'"magpie_collective": %d%s' % (collective[r], sep)))
        else:
            inserts.append((int(x[r, es.EV_LO]) + 1, b'"args": {"magpie_collective": %d}, ' % collective[r]))
    inserts.sort()
    tmp = temp_path_for(path)
    try:
        with igzip.open(tmp, "wb", compresslevel=LEVEL) as out:
            view = memoryview(src)
            last = 0
            for at, text in inserts:
                out.write(view[last:at])
                out.write(text)
                last = at
            out.write(view[last:])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build(source: RankSource) -> RankTables:
    """The tables of one aligned rank trace."""
    # room for the next file to be a little larger: a new 200 MB buffer costs as much as inflating into it
    _BUFFERS.inflate.at_least(size_hint(source.path) * 17 // 16)
    buf, size, _ = decompress(source.path, _BUFFERS.inflate)
    src = np.frombuffer(buf, dtype=np.uint8, count=size)
    x, meta = _scan_rows(src, size, source.path)
    threads = _thread_names(src, meta)
    name_code, names = _decode(src, x[:, es.NAME_LO], x[:, es.NAME_LEN], x[:, es.NAME_HASH], source.path)
    cat_code, cats = _decode(src, x[:, es.CAT_LO], x[:, es.CAT_LEN], x[:, es.CAT_HASH], source.path)
    pid_code, pids = _ids(x[:, es.PID_KIND], x[:, es.PID_VAL], x[:, es.PID_LO], x[:, es.PID_LEN], src)
    tid_code, tids = _ids(x[:, es.TID_KIND], x[:, es.TID_VAL], x[:, es.TID_LO], x[:, es.TID_LEN], src)

    pair_code, first = es.factorize(cat_code * len(names) + name_code)
    kinds = [category(cats[cat_code[f]], names[name_code[f]] or "") for f in first.tolist()]
    category_code = np.array([CATEGORIES.index(k) for k in kinds], np.int64)[pair_code]
    gpu = np.array([c in GPU_CATS for c in cats], bool)[cat_code]
    start, dur = x[:, es.TS].copy(), x[:, es.DUR].copy()
    end = start + dur
    external, correlation = x[:, es.EXTERNAL_ID].copy(), x[:, es.CORRELATION].copy()

    steps = step_windows(cats, names, cat_code, name_code, start, end)
    launch = category_code == CATEGORIES.index("runtime")
    step = assign_steps(steps, start, end, gpu, launch, correlation)
    comm = np.isin(category_code, [CATEGORIES.index("comm_kernel"), CATEGORIES.index("cpu_comm")])
    pg_code, groups, msg_bytes = _collective_args(src, x, comm, external)
    collective, table_pg = _collective_ids(source.collectives, names, name_code, start)
    if source.annotate:
        annotate_ids(source.path, src, x, collective)
    del x  # the rest works on the columns taken out above
    for r in np.flatnonzero((collective >= 0) & (pg_code < 0)).tolist():
        group = table_pg.get(int(collective[r]))
        if group:  # the merge's stream name ("" when the trace names no group)
            if group not in groups:
                groups.append(group)
            pg_code[r] = groups.index(group)

    track_key = (pid_code * len(tids) + tid_code) * 2 + gpu
    track_code, first = es.factorize(track_key)
    tracks = []
    for f in first.tolist():
        pid, tid = pids[pid_code[f]], tids[tid_code[f]]
        tracks.append(f"stream {tid}" if gpu[f] else threads.get((pid, tid), f"thread {tid}"))
    algorithms = [algorithm(n) if n else None for n in names]  # only NCCL/RCCL kernel names carry one

    n = start.size
    events = pl.DataFrame({
        "node": _strings([source.node], np.zeros(n, np.int64)),
        "rank": pl.repeat(source.rank, n, dtype=pl.Int32, eager=True),
        "label": _strings([source.label], np.zeros(n, np.int64)),
        "device": _strings(["cpu", "gpu"], gpu.astype(np.int64)),
        "pid": _strings(pids, pid_code),
        "tid": _strings(tids, tid_code),
        "track": _strings(tracks, track_code),
        "category": _strings(list(CATEGORIES), category_code),
        "cat": _strings(cats, cat_code),
        "name": _strings(names, name_code),
        "start_ns": start, "end_ns": end, "dur_ns": dur,
        "step": step, "collective": collective,
        "process_group": _strings([*groups, None], np.where(pg_code < 0, len(groups), pg_code)),
        "msg_bytes": msg_bytes, "algorithm": _strings(algorithms, name_code),
        "external_id": external, "correlation": correlation,
    }).with_columns(  # -1 / MISSING mark what the trace does not say
        *(pl.when(pl.col(c) >= 0).then(pl.col(c)).alias(c) for c in ("step", "collective", "msg_bytes")),
        *(pl.when(pl.col(c) != es.MISSING).then(pl.col(c)).alias(c) for c in ("external_id", "correlation")),
    ).cast(STORED)
    step_frame = pl.DataFrame({
        "node": [source.node] * steps.size, "rank": [source.rank] * steps.size,
        "step": np.arange(steps.size, dtype=np.int32), "name": [names[c] for c in name_code[steps].tolist()],
        "start_ns": start[steps], "end_ns": end[steps],
    }, schema=STEP_SCHEMA)
    gpu_domain = bool(np.isin(category_code, [CATEGORIES.index(c) for c in timeline.GPU_CLASSES]).any())
    classes = timeline.GPU_CLASSES if gpu_domain else timeline.CPU_CLASSES
    to_class = np.zeros(len(CATEGORIES), np.int64)
    for name, cls in classes.items():
        to_class[CATEGORIES.index(name)] = cls
    event_class = to_class[category_code]
    t0, t1, flags = timeline.segments(start, end, event_class, track_code)
    w0, w1 = timeline.step_windows(start, end, step, event_class > 0, steps.size)
    t0, t1, flags, seg_step = timeline.cut_at_steps(t0, t1, flags, w0, w1)
    segment_frame = pl.DataFrame({
        "rank": np.full(t0.size, source.rank, np.int32), "step": seg_step, "t0_ns": t0, "t1_ns": t1,
        "compute": (flags & 1) > 0, "comm": (flags & 2) > 0, "memcpy": (flags & 4) > 0,
    }).with_columns(pl.when(pl.col("step") >= 0).then(pl.col("step")).alias("step")).cast(SEGMENT_SCHEMA)
    return RankTables(events.select(list(SCHEMA)), step_frame, segment_frame, "gpu" if gpu_domain else "cpu")
