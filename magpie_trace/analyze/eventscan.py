"""One compiled pass over a Kineto trace's bytes that lists its duration and metadata events as columns.

Why compiled: an aligned trace holds about a million events; decoding them into Python objects
(json/orjson) costs seconds per file, and even msgspec with typed structs plus building columns from
them is 2x slower than this. The scanner (numba, cached on disk after the first run) walks the event
array once, knows when it is inside a JSON string, and for every `X` (complete) and `M` (metadata)
event writes one row of integers: where its `cat`, `name` and string `pid`/`tid` are (byte offsets,
decoded later once per distinct value), a 64-bit hash of its name, its numeric `pid`/`tid`, `ts` and
`dur` as exact nanoseconds (Kineto writes microseconds with three decimals), the span of its `args`
object, the two args that link events (`External id`, `correlation`) and whether the args hold
collective metadata. Other events (flows,
instants, counters) are skipped.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from magpie_trace.merge.bytescan import _is_ws, _parse, _string_end

# Columns of a row.
PH, CAT_LO, CAT_LEN, NAME_LO, NAME_LEN, NAME_HASH = 0, 1, 2, 3, 4, 5
PID_KIND, PID_VAL, PID_LO, PID_LEN = 6, 7, 8, 9
TID_KIND, TID_VAL, TID_LO, TID_LEN = 10, 11, 12, 13
TS, DUR, ARGS_LO, ARGS_HI, EXTERNAL_ID, CORRELATION, EV_LO, EV_HI, CAT_HASH = 14, 15, 16, 17, 18, 19, 20, 21, 22
COMM_ARGS = 23  # 1 when args carry collective metadata (`Process Group Name`, `In msg nelems`)
N_COLUMNS = 24
MISSING = np.iinfo(np.int64).min  # an absent number
KIND_NONE, KIND_INT, KIND_STR = 0, 1, 2

_FNV_OFFSET = np.int64(-3750763034362895579)  # 14695981039346656037 as int64 (arithmetic wraps)
_FNV_PRIME = np.int64(1099511628211)

_K_PH = np.frombuffer(b"ph", dtype=np.uint8)
_K_TS = np.frombuffer(b"ts", dtype=np.uint8)
_K_CAT = np.frombuffer(b"cat", dtype=np.uint8)
_K_PID = np.frombuffer(b"pid", dtype=np.uint8)
_K_TID = np.frombuffer(b"tid", dtype=np.uint8)
_K_DUR = np.frombuffer(b"dur", dtype=np.uint8)
_K_NAME = np.frombuffer(b"name", dtype=np.uint8)
_K_ARGS = np.frombuffer(b"args", dtype=np.uint8)
_K_EXTERNAL = np.frombuffer(b"External id", dtype=np.uint8)
_K_CORRELATION = np.frombuffer(b"correlation", dtype=np.uint8)
_K_EVENTS = np.frombuffer(b"traceEvents", dtype=np.uint8)
_K_PG = np.frombuffer(b"Process Group Name", dtype=np.uint8)
_K_NELEMS = np.frombuffer(b"In msg nelems", dtype=np.uint8)


@njit(cache=True, nogil=True)
def _is(src: np.ndarray, lo: int, length: int, key: np.ndarray) -> bool:
    if length != key.size:
        return False
    for k in range(length):
        if src[lo + k] != key[k]:
            return False
    return True


@njit(cache=True, nogil=True)
def _ws(src: np.ndarray, i: int, n: int) -> int:
    while i < n and _is_ws(src[i]):
        i += 1
    return i


@njit(cache=True, nogil=True)
def _skip(src: np.ndarray, i: int, n: int) -> int:
    """Index after the JSON value that starts at i (-1 when it runs past n)."""
    c = src[i]
    if c == 34:
        k = _string_end(src, i, n)
        return k if src[k - 1] == 34 and k > i + 1 else -1
    if c == 123 or c == 91:
        depth = 0
        while i < n:
            c = src[i]
            if c == 34:
                i = _string_end(src, i, n)
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < n:
        c = src[i]
        if c == 44 or c == 125 or c == 93 or _is_ws(c):
            return i
        i += 1
    return i


@njit(cache=True, nogil=True)
def _hash(src: np.ndarray, lo: int, length: int) -> np.int64:
    h = _FNV_OFFSET
    for k in range(length):
        h = (h ^ np.int64(src[lo + k])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True)
def _id_value(src: np.ndarray, row: np.ndarray, kind: int, i: int, n: int) -> int:
    """A pid/tid (number or string) at i into row[kind:kind+4]; index after it."""
    if src[i] == 34:
        end = _skip(src, i, n)
        if end < 0:
            return -1
        row[kind], row[kind + 1], row[kind + 2], row[kind + 3] = KIND_STR, _hash(src, i + 1, end - i - 2), i + 1, end - i - 2
        return end
    ok, v, end = _parse(src, i, n, 0)
    if ok:
        row[kind], row[kind + 1] = KIND_INT, v
        return end
    return _skip(src, i, n)


@njit(cache=True, nogil=True)
def _args(src: np.ndarray, row: np.ndarray, i: int, n: int) -> int:
    """The args object at i: its span, and `External id` / `correlation`; index after it."""
    row[ARGS_LO] = i
    if src[i] != 123:
        end = _skip(src, i, n)
        row[ARGS_HI] = end
        return end
    i += 1
    while True:
        i = _ws(src, i, n)
        if i >= n:
            return -1
        c = src[i]
        if c == 125:
            row[ARGS_HI] = i + 1
            return i + 1
        if c == 44:
            i += 1
            continue
        if c != 34:
            return -1
        klo = i + 1
        i = _string_end(src, i, n)
        klen = i - 1 - klo
        i = _ws(src, i, n)
        if i >= n or src[i] != 58:
            return -1
        i = _ws(src, i + 1, n)
        if i >= n:
            return -1
        slot = -1
        if klen == 11 and src[klo] == 69 and _is(src, klo, klen, _K_EXTERNAL):
            slot = EXTERNAL_ID
        elif klen == 11 and src[klo] == 99 and _is(src, klo, klen, _K_CORRELATION):
            slot = CORRELATION
        elif _is(src, klo, klen, _K_PG) or _is(src, klo, klen, _K_NELEMS):
            row[COMM_ARGS] = 1
        if slot >= 0:
            ok, v, end = _parse(src, i, n, 0)
            if ok:
                row[slot] = v
                i = end
                continue
        i = _skip(src, i, n)
        if i < 0:
            return -1


@njit(cache=True, nogil=True)
def _event(src: np.ndarray, row: np.ndarray, i: int, n: int) -> int:
    """Fill row from the event object at i; index after it (-1: malformed)."""
    row[EV_LO] = i
    i += 1
    while True:
        i = _ws(src, i, n)
        if i >= n:
            return -1
        c = src[i]
        if c == 125:
            row[EV_HI] = i + 1
            return i + 1
        if c == 44:
            i += 1
            continue
        if c != 34:
            return -1
        klo = i + 1
        i = _string_end(src, i, n)
        klen = i - 1 - klo
        i = _ws(src, i, n)
        if i >= n or src[i] != 58:
            return -1
        i = _ws(src, i + 1, n)
        if i >= n:
            return -1
        if klen == 2 and _is(src, klo, klen, _K_PH):
            if src[i] == 34:
                row[PH] = src[i + 1]
            i = _skip(src, i, n)
        elif klen == 2 and _is(src, klo, klen, _K_TS):
            ok, v, end = _parse(src, i, n, 3)
            if ok:
                row[TS] = v
                i = end
            else:
                i = _skip(src, i, n)
        elif klen == 3 and _is(src, klo, klen, _K_DUR):
            ok, v, end = _parse(src, i, n, 3)
            if ok:
                row[DUR] = v
                i = end
            else:
                i = _skip(src, i, n)
        elif klen == 3 and _is(src, klo, klen, _K_CAT):
            end = _skip(src, i, n)
            if src[i] == 34 and end > 0:
                row[CAT_LO], row[CAT_LEN] = i + 1, end - i - 2
                row[CAT_HASH] = _hash(src, i + 1, end - i - 2)
            i = end
        elif klen == 3 and _is(src, klo, klen, _K_PID):
            i = _id_value(src, row, PID_KIND, i, n)
        elif klen == 3 and _is(src, klo, klen, _K_TID):
            i = _id_value(src, row, TID_KIND, i, n)
        elif klen == 4 and _is(src, klo, klen, _K_NAME):
            end = _skip(src, i, n)
            if src[i] == 34 and end > 0:
                row[NAME_LO], row[NAME_LEN] = i + 1, end - i - 2
                row[NAME_HASH] = _hash(src, i + 1, end - i - 2)
            i = end
        elif klen == 4 and _is(src, klo, klen, _K_ARGS):
            i = _args(src, row, i, n)
        else:
            i = _skip(src, i, n)
        if i < 0:
            return -1


@njit(cache=True, nogil=True)
def _clear(row: np.ndarray) -> None:
    row[:] = -1
    row[PH] = 0
    row[PID_KIND] = KIND_NONE
    row[TID_KIND] = KIND_NONE
    row[TS] = MISSING
    row[DUR] = 0
    row[NAME_HASH] = 0
    row[CAT_HASH] = 0
    row[COMM_ARGS] = 0
    row[EXTERNAL_ID] = MISSING
    row[CORRELATION] = MISSING


@njit(cache=True, nogil=True)
def scan(src: np.ndarray, i: int, hi: int, out: np.ndarray) -> tuple[int, int]:
    """Events of the array body src[i:hi] (i just after `[` or at an event boundary) into out's rows
    until it is full: (rows written, index to resume at; hi when done, -1 on malformed JSON)."""
    rows = 0
    cap = out.shape[0]
    while rows < cap:
        i = _ws(src, i, hi)
        if i >= hi or src[i] == 93:
            return rows, hi
        if src[i] == 44:
            i += 1
            continue
        if src[i] != 123:
            return rows, -1
        row = out[rows]
        _clear(row)
        i = _event(src, row, i, hi)
        if i < 0:
            return rows, -1
        ph = row[PH]
        if ph == 88 or ph == 77:  # X, M
            rows += 1
    return rows, i


@njit(cache=True, nogil=True)
def event_array(src: np.ndarray, n: int) -> int:
    """Index just after the `[` of the top-level `traceEvents` array (-1 if there is none); `scan`
    finds its end."""
    i = _ws(src, 0, n)
    if i >= n or src[i] != 123:
        return -1
    i += 1
    while True:
        i = _ws(src, i, n)
        if i >= n:
            return -1
        c = src[i]
        if c == 125:
            return -1
        if c == 44:
            i += 1
            continue
        if c != 34:
            return -1
        klo = i + 1
        i = _string_end(src, i, n)
        klen = i - 1 - klo
        i = _ws(src, i, n)
        if i >= n or src[i] != 58:
            return -1
        i = _ws(src, i + 1, n)
        if i >= n:
            return -1
        if _is(src, klo, klen, _K_EVENTS) and src[i] == 91:
            return i + 1
        i = _skip(src, i, n)
        if i < 0:
            return -1


@njit(cache=True, nogil=True)
def factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code per key, first position of each code) for int64 keys, in one pass through an
    open-addressing table: a file has ~10^6 events but only ~10^3 distinct names (a sort is 10x slower)."""
    size = 1024
    while size < 2 * keys.size and size < (1 << 26):
        size *= 2
    slots = np.full(size, -1, np.int64)
    codes = np.empty(keys.size, np.int64)
    first = np.empty(keys.size, np.int64)
    n_codes = 0
    mask = size - 1
    for k in range(keys.size):
        key = keys[k]
        h = (key ^ (key >> 29)) * np.int64(-4658895280553007687)
        j = (h >> 20) & mask
        while True:
            at = slots[j]
            if at < 0:
                slots[j] = n_codes
                first[n_codes] = k
                codes[k] = n_codes
                n_codes += 1
                break
            if keys[first[at]] == key:
                codes[k] = at
                break
            j = (j + 1) & mask
    return codes, first[:n_codes].copy()
