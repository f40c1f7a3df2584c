"""One compiled pass over a chunk of a Kineto event array that writes its aligned and merged versions.

Why compiled: the merge touches every event (its `ts`, and in the merged file its `pid`), millions per
file; Python objects per event, or even numpy passes per key, cost 10x the rest of the pipeline. This
scanner (numba, cached on disk after the first run) walks the bytes once, knows when it is inside a
JSON string, and rewrites the values of the keys `ts`, `dur` (when there is drift), `pid` and `id`:

- aligned output: `ts` mapped onto the reference clock, `dur` so that the end maps like the start;
  everything else byte-for-byte;
- merged output: the same, plus every pid replaced by a dense per-file integer (numbers and strings
  alike), flow ids made unique per file, and the given byte ranges (the file's own process metadata)
  left out.

Numbers are handled as exact integers (ns for timestamps): `ts`/`dur` are written like Kineto does,
microseconds with three decimals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

_KEY_TS, _KEY_DUR, _KEY_PID, _KEY_ID = 1, 2, 3, 4
_OUT_OF_RANGE = np.int64(-(2**63))  # _parse's value for a number no int64 holds
OUT_OF_RANGE = -2  # rewrite's third value when a ts or dur is out of range
# No clock reads beyond this either way (ns: the Unix epoch to 2100-01-01), absolute (base + ts) or
# as a duration. Checked before any sum, so nothing past it can wrap int64 into a plausible time.
MAX_CLOCK_NS = 4_102_444_800 * 10**9


def pid_table(capacity: int) -> np.ndarray:
    """The merged pids one file has handed out: row r ([0 number | 1 string hash, value]) is pid
    `pid_base + r + 1`. Kept across the chunks of a file. A file has a handful of pids, so a scan
    of this table beats a typed dict (which also costs 0.08 s of compiling per process)."""
    return np.zeros((capacity, 2), dtype=np.int64)


@njit(cache=True, nogil=True)
def _merged_pid(known: np.ndarray, pid_rows: np.ndarray, pid_base: int, new_pids: np.ndarray, n_new: int,
                kind: int, value: int, a: int, b: int) -> tuple[int, int]:
    """(merged pid of (kind, value), rows of new_pids filled). A pid not seen before gets the next
    row of `known` and is reported in new_pids as [pid, kind, a, b]; merged pid 0: no room left."""
    for r in range(pid_rows[0]):
        if known[r, 1] == value and known[r, 0] == kind:
            return pid_base + r + 1, n_new
    r = pid_rows[0]
    if r == known.shape[0] or n_new == new_pids.shape[0]:
        return 0, n_new
    known[r, 0], known[r, 1] = kind, value
    pid_rows[0] += 1
    new_pids[n_new, 0], new_pids[n_new, 1], new_pids[n_new, 2], new_pids[n_new, 3] = pid_base + r + 1, kind, a, b
    return pid_base + r + 1, n_new + 1


@njit(cache=True, nogil=True)
def _is_ws(c: int) -> bool:
    return c == 32 or c == 10 or c == 13 or c == 9


@njit(cache=True, nogil=True)
def _key_before(src: np.ndarray, i: int) -> int:
    """Which rewritten key ends at the colon src[i] (0: none). A key must be `"ts"`, `"dur"`, `"pid"`
    or `"id"` (optionally followed by whitespace) whose opening quote follows `{`, `,` or whitespace.
    Inside a JSON string a quote is escaped, so string content never looks like this."""
    k = i - 1
    while k > 0 and _is_ws(src[k]):
        k -= 1
    if k < 4 or src[k] != 34:
        return 0
    if src[k - 1] == 115 and src[k - 2] == 116 and src[k - 3] == 34:  # "ts"
        code, q = _KEY_TS, k - 3
    elif src[k - 1] == 100 and src[k - 2] == 105 and src[k - 3] == 34:  # "id"
        code, q = _KEY_ID, k - 3
    elif src[k - 1] == 100 and src[k - 2] == 105 and src[k - 3] == 112 and src[k - 4] == 34:  # "pid"
        code, q = _KEY_PID, k - 4
    elif src[k - 1] == 114 and src[k - 2] == 117 and src[k - 3] == 100 and src[k - 4] == 34:  # "dur"
        code, q = _KEY_DUR, k - 4
    else:
        return 0
    if q == 0:
        return code
    before = src[q - 1]
    return code if (before == 123 or before == 44 or _is_ws(before)) else 0


@njit(cache=True, nogil=True)
def key_colons(src: np.ndarray, found: np.ndarray) -> int:
    """How many colons in src end a key the rewrite changes (`_key_before`); the first found.size of
    their positions go into `found` (`positions` calls again with a larger one if there were more).
    Colons are found a word at a time inline, as in `find_names`: this and a rewrite over a quarter
    of the colons cost about 0.9x numpy's colon index and a rewrite over all of them."""
    n = src.size
    count = 0
    for at in range(0, n, 8):
        bits = _colon_bits(_load_u64(src, at) if at + 8 <= n else _tail(src, at, n))
        while bits:
            i = at + int(_trailing_zeros(bits) >> np.uint64(3))
            bits &= bits - np.uint64(1)
            if _key_before(src, i):
                if count < found.size:
                    found[count] = i
                count += 1
    return count


@njit(cache=True, nogil=True)
def _parse(src: np.ndarray, j: int, n: int, scale: int) -> tuple[bool, int, int]:
    """JSON number at j -> (ok, value * 10**scale rounded half up, end)."""
    k = j
    neg = False
    if k < n and src[k] == 45:
        neg = True
        k += 1
    m = 0
    nd = 0
    e = 0
    first = k
    while k < n and 48 <= src[k] <= 57:
        if nd < 18:
            m = m * 10 + (src[k] - 48)
            nd += 1
        else:
            e += 1
        k += 1
    if k == first:
        return False, 0, j
    if k < n and src[k] == 46:
        k += 1
        f0 = k
        while k < n and 48 <= src[k] <= 57:
            if nd < 18:
                m = m * 10 + (src[k] - 48)
                nd += 1
                e -= 1
            k += 1
        if k == f0:
            return False, 0, j
    if k < n and (src[k] == 101 or src[k] == 69):
        k += 1
        eneg = False
        if k < n and (src[k] == 43 or src[k] == 45):
            eneg = src[k] == 45
            k += 1
        ev = 0
        e0 = k
        while k < n and 48 <= src[k] <= 57:
            ev = ev * 10 + (src[k] - 48)
            k += 1
        if k == e0:
            return False, 0, j
        e += -ev if eneg else ev
    p = e + scale
    if p >= 0:
        for _ in range(p):
            if m > 922337203685477580:  # beyond int64 ns (1e300, ...): no clock reads that
                return True, _OUT_OF_RANGE, k
            m *= 10
    elif p > -19:
        div = 1
        for _ in range(-p):
            div *= 10
        q = m // div
        if 2 * (m % div) >= div:
            q += 1
        m = q
    else:
        m = 0
    return True, -m if neg else m, k


@intrinsic
def _memcpy(typingctx, dst, dst_at, src, src_at, count):  # type: ignore[no-untyped-def]
    """LLVM's memcpy between two uint8 arrays: numba's slice assignment copies a byte at a time, and
    the copies between edits are most of the rewrite (this made it 2.7x faster)."""
    sig = types.void(dst, dst_at, src, src_at, count)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        out = context.make_array(signature.args[0])(context, builder, args[0])
        inp = context.make_array(signature.args[2])(context, builder, args[2])
        cgutils.raw_memcpy(builder, builder.gep(out.data, [args[1]]), builder.gep(inp.data, [args[3]]), args[4], 1)

    return sig, codegen


@intrinsic
def _load_u64(typingctx, arr, at):  # type: ignore[no-untyped-def]
    """The 8 bytes of a uint8 array at any offset as one little-endian integer (an unaligned load)."""
    sig = types.uint64(arr, at)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return sig, codegen


def _zero_count(llvm_name: str) -> Any:
    """An intrinsic counting a uint64's zero bits from one end (LLVM's cttz / ctlz: one instruction)."""

    def count(typingctx, x):  # type: ignore[no-untyped-def]
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(64), [ir.IntType(64), ir.IntType(1)]), llvm_name)
            return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])

        return sig, codegen

    count.__name__ = count.__qualname__ = llvm_name.replace(".", "_")
    return intrinsic(count)


_trailing_zeros = _zero_count("llvm.cttz.i64")
_leading_zeros = _zero_count("llvm.ctlz.i64")  # the events scan's backward search


_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_COLONS = np.uint64(0x3A3A3A3A3A3A3A3A)


@njit(cache=True, nogil=True)
def _tail(src: np.ndarray, at: int, hi: int) -> np.uint64:
    """The last, short word: src[at:hi] (fewer than 8 bytes), zero-padded."""
    x = np.uint64(0)
    for k in range(hi - at):
        x |= np.uint64(src[at + k]) << np.uint64(8 * k)
    return x


@njit(cache=True, nogil=True)
def _colon_bits(x: np.uint64) -> np.uint64:
    """Bit 8k+7 set where byte k of the word is `:`, exactly (no carries between bytes)."""
    x ^= _COLONS
    return ~(((x & _LOW7) + _LOW7) | x | _LOW7)


@njit(cache=True, nogil=True)
def _copy(out: np.ndarray, o: int, src: np.ndarray, lo: int, hi: int) -> int:
    """src[lo:hi] -> out[o:] (callers size out for the worst case)."""
    if hi <= lo:
        return o
    _memcpy(out, o, src, lo, hi - lo)
    return o + hi - lo


@njit(cache=True, nogil=True)
def _flush(out: np.ndarray, o: int, src: np.ndarray, last: int, upto: int, cuts: np.ndarray,
           cm: int) -> tuple[int, int, int]:
    """Copy src[last:upto] to out, leaving out the cut ranges; returns (o, last, next cut index)."""
    while cm < cuts.shape[0] and cuts[cm, 0] < upto:
        o = _copy(out, o, src, last, cuts[cm, 0])
        last = max(last, cuts[cm, 1])
        cm += 1
    o = _copy(out, o, src, last, upto)
    return o, max(last, upto), cm


_PAIRS = np.frombuffer(b"".join(b"%02d" % k for k in range(100)), dtype=np.uint8)  # "00".."99"


@njit(cache=True, nogil=True)
def _put_int(out: np.ndarray, o: int, v: int) -> int:
    """Decimal digits of v, two at a time (half the divisions)."""
    if v < 0:
        out[o] = 45
        o += 1
        v = -v
    d = 1
    t = v
    while t >= 10:
        t //= 10
        d += 1
    p = o + d - 1
    while v >= 100:
        r = (v % 100) * 2
        v //= 100
        out[p] = _PAIRS[r + 1]
        out[p - 1] = _PAIRS[r]
        p -= 2
    if v >= 10:
        out[p] = _PAIRS[v * 2 + 1]
        out[p - 1] = _PAIRS[v * 2]
    else:
        out[p] = 48 + v
    return o + d


@njit(cache=True, nogil=True)
def _put_ns(out: np.ndarray, o: int, v: int) -> int:
    """ns -> `[-]us.fff`, as Kineto prints."""
    if v < 0:
        out[o] = 45
        o += 1
        v = -v
    o = _put_int(out, o, v // 1000)
    f = v % 1000
    out[o] = 46
    out[o + 1] = 48 + f // 100
    out[o + 2] = 48 + (f // 10) % 10
    out[o + 3] = 48 + f % 10
    return o + 4


@njit(cache=True, nogil=True)
def _to_output(v: int, base_in: int, base_out: int, offset: float, drift: float, t0: int) -> int:
    c = v + base_in
    return c - np.int64(np.rint(offset + drift * float(c - t0))) - base_out


@njit(cache=True, nogil=True)
def _string_end(src: np.ndarray, i: int, n: int) -> int:
    """Index after the string that opens at i."""
    k = i + 1
    while k < n and src[k] != 34:
        k += 2 if src[k] == 92 else 1
    return min(k + 1, n)


@njit(cache=True, nogil=True)
def rewrite(src: np.ndarray, colons: np.ndarray, out_a: np.ndarray, out_m: np.ndarray, want_a: bool, want_m: bool,
            base_in: int, base_out: int, offset: float, drift: float, t0: int, cuts: np.ndarray,
            known: np.ndarray, pid_base: int, pid_rows: np.ndarray, new_pids: np.ndarray,
            flow_mul: int, flow_add: int, last_ts: np.ndarray) -> tuple[int, int, int]:
    """Rewrite src into out_a (aligned) and/or out_m (merged); returns their lengths and how many
    rows of new_pids ([new pid, 0 number | 1 string, value | start, end]) were filled (-1: more
    pids than `known` holds; OUT_OF_RANGE: a ts or dur beyond MAX_CLOCK_NS). pid_rows[0] counts the rows of `known` (`pid_table`) in use.
    `drift` is ppm * 1e-6; cuts are sorted, disjoint [start, end) rows left out of out_m;
    last_ts[0] carries the latest `ts` across chunks (a `dur` may start the next chunk).

    `colons` are the positions of the colons that end a key to change (`key_colons`); the values
    there are rewritten and the bytes between them block-copied."""
    n = src.size
    i = 0
    oa = om = 0
    last_a = last_m = 0
    ci = cm = 0
    ncut = cuts.shape[0]
    n_new = 0
    fix_dur = drift != 0.0
    for colon in colons:
        if colon < i:  # inside a value already handled
            continue
        code = _key_before(src, colon)
        if code == 0:
            continue
        j = colon + 1
        while j < n and _is_ws(src[j]):
            j += 1
        i = j
        while ci < ncut and cuts[ci, 1] <= i:
            ci += 1
        m_on = want_m and not (ci < ncut and cuts[ci, 0] <= i)
        if code == _KEY_PID and i < n and src[i] == 34:  # a string pid, e.g. "Spans"
            end = _string_end(src, i, n)
            if m_on:
                h = np.int64(1469598103934665603)
                for q in range(i, end):
                    h = (h ^ np.int64(src[q])) * np.int64(1099511628211)
                pid, n_new = _merged_pid(known, pid_rows, pid_base, new_pids, n_new, 1, h, i, end)
                if pid == 0:
                    return oa, om, -1
                om, last_m, cm = _flush(out_m, om, src, last_m, i, cuts, cm)
                om = _put_int(out_m, om, pid)
                last_m = end
            i = end
            continue
        scale = 3 if code <= _KEY_DUR else 0
        ok, v, end = _parse(src, i, n, scale)
        if not ok:  # null, a string, ...: left as it is
            continue
        if code == _KEY_TS and not -MAX_CLOCK_NS - base_in <= v <= MAX_CLOCK_NS - base_in:
            return oa, om, OUT_OF_RANGE  # also _OUT_OF_RANGE: no int64 holds it
        if code == _KEY_DUR and not -MAX_CLOCK_NS <= v <= MAX_CLOCK_NS:
            return oa, om, OUT_OF_RANGE
        if code == _KEY_TS or (code == _KEY_DUR and fix_dur):
            if code == _KEY_TS:
                last_ts[0] = v
                new = _to_output(v, base_in, base_out, offset, drift, t0)
            else:
                new = (_to_output(last_ts[0] + v, base_in, base_out, offset, drift, t0)
                       - _to_output(last_ts[0], base_in, base_out, offset, drift, t0))
            if want_a:
                oa = _copy(out_a, oa, src, last_a, i)
                oa = _put_ns(out_a, oa, new)
                last_a = end
            if m_on:
                om, last_m, cm = _flush(out_m, om, src, last_m, i, cuts, cm)
                om = _put_ns(out_m, om, new)
                last_m = end
        elif m_on and (code == _KEY_PID or code == _KEY_ID):
            if code == _KEY_PID:
                new, n_new = _merged_pid(known, pid_rows, pid_base, new_pids, n_new, 0, v, v, 0)
                if new == 0:
                    return oa, om, -1
            else:
                new = v * flow_mul + flow_add
            om, last_m, cm = _flush(out_m, om, src, last_m, i, cuts, cm)
            om = _put_int(out_m, om, new)
            last_m = end
        i = end
    if want_a:
        oa = _copy(out_a, oa, src, last_a, n)
    if want_m:
        om, last_m, cm = _flush(out_m, om, src, last_m, n, cuts, cm)
    return oa, om, n_new


def positions(find: Callable[..., int], found: np.ndarray, *args: Any) -> tuple[np.ndarray, int]:
    """Run a scan that puts positions into its last argument and returns how many there were
    (`find_names`, `key_colons`); when `found` was too small, run it again with a large enough one.
    Returns the array holding them (`found` or the larger one) and their count."""
    count = find(*args, found)
    if count > found.size:
        found = np.empty(count, dtype=np.int64)
        find(*args, found)
    return found, count


def prefix_table(prefixes: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Prefixes as a zero-padded matrix and their lengths, for `find_names`."""
    width = max(len(p) for p in prefixes)
    table = np.zeros((len(prefixes), width), dtype=np.uint8)
    for k, p in enumerate(prefixes):
        table[k, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    return table, np.array([len(p) for p in prefixes], dtype=np.int64)


@njit(cache=True, nogil=True)
def find_names(src: np.ndarray, lo: int, hi: int, table: np.ndarray, lengths: np.ndarray, found: np.ndarray) -> int:
    """Pass 1's candidates: how many colons in src[lo:hi] end a `"name":` key whose string value
    starts with one of the prefixes; the first found.size of their positions go into `found`
    (`positions` calls again with a larger one if there were more: growing it here slows the loop 8x).

    The colons are found a word (8 bytes) at a time, inline (a helper that loads the word is not
    inlined, and is 4x slower): 1.7x numpy's `flatnonzero(src == 58)` plus a walk over its result."""
    count = 0
    for at in range(lo, hi, 8):
        bits = _colon_bits(_load_u64(src, at) if at + 8 <= hi else _tail(src, at, hi))
        while bits:
            i = at + int(_trailing_zeros(bits) >> np.uint64(3))
            bits &= bits - np.uint64(1)
            k = i - 1
            while k > 5 and _is_ws(src[k]):
                k -= 1
            if k < 6 or not (src[k] == 34 and src[k - 1] == 101 and src[k - 2] == 109 and src[k - 3] == 97
                             and src[k - 4] == 110 and src[k - 5] == 34):
                continue
            j = i + 1
            while j < hi and _is_ws(src[j]):
                j += 1
            if j >= hi or src[j] != 34:
                continue
            j += 1
            for p in range(table.shape[0]):
                size = lengths[p]
                if j + size > hi:
                    continue
                same = True
                for q in range(size):
                    if src[j + q] != table[p, q]:
                        same = False
                        break
                if same:
                    if count < found.size:
                        found[count] = i
                    count += 1
                    break
    return count


@njit(cache=True, nogil=True)
def event_bounds(src: np.ndarray, positions: np.ndarray, floor: int) -> np.ndarray:
    """For each position (inside an event), the [start, end) of the innermost JSON object around it
    that encloses it, found by matching braces outside strings; -1 where none is found quickly."""
    out = np.full((positions.size, 2), -1, dtype=np.int64)
    n = src.size
    for r in range(positions.size):
        p = positions[r]
        lo = p
        for _ in range(16):
            lo -= 1
            while lo >= floor and src[lo] != 123:
                lo -= 1
            if lo < floor:
                break
            depth = 0
            k = lo
            while k < n:
                c = src[k]
                if c == 34:
                    k += 1
                    while k < n and src[k] != 34:
                        k += 2 if src[k] == 92 else 1
                elif c == 123:
                    depth += 1
                elif c == 125:
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            if k > p and k < n:
                out[r, 0] = lo
                out[r, 1] = k + 1
                break
    return out


def compile_notice() -> str | None:
    """A line to show before a merge that will first compile these scanners (numba keeps them on
    disk, so only the first merge after an install or upgrade pays), else None."""
    for value in list(globals().values()):
        cache_file = getattr(getattr(value, "_cache", None), "_cache_file", None)
        if cache_file is None:
            continue
        try:
            cached = bool(cache_file._load_index())  # {} when absent or made from other sources
        except Exception:  # noqa: BLE001 - numba internals: assume it must compile
            cached = False
        if not cached:
            return ("merge: compiling the trace scanners for this machine first (numba, once after an "
                    "install or upgrade, about 15 s; cached after)")
    return None
