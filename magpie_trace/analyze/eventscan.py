"""Two compiled passes over a Kineto trace's bytes that list its duration and metadata events as columns.

Why compiled: an aligned trace holds about a million events; decoding them into Python objects
(json/orjson) costs seconds per file, and even msgspec with typed structs plus building columns from
them is 2x slower than this. Why two passes: a walk that looks at every byte decides, byte after
byte, whether it is in a string, and those unpredictable branches cost ~3 ns a byte (0.6 s for a
204 MB trace). Instead (the idea of simdjson's structural index):
  1. `masks`: per 64-byte block, which bytes are string quotes and which are `{}[]:` outside strings,
     from branch-free per-byte tests the compiler vectorises (0.1 s for 204 MB);
  2. `scan`: walks only those structural characters (~15 per event), tracking depth; a colon at an
     event's top level or in its `args` ends a key, and only the keys read below look at bytes.
For every `X` (complete) and `M` (metadata) event it writes one row of integers: where its `cat`,
`name` and string `pid`/`tid` are (byte offsets, decoded later once per distinct value), a 64-bit
hash of its name, its numeric `pid`/`tid`, `ts` and `dur` as exact nanoseconds (Kineto writes
microseconds with three decimals), the span of its `args` object, the two args that link events
(`External id`, `correlation`) and whether the args hold collective metadata. Other events (flows,
instants, counters) are skipped. The scanner is numba, cached on disk after the first run.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from magpie_trace.merge.bytescan import (
    _is_ws,
    _leading_zeros,
    _parse,
    _string_end,
    _trailing_zeros,
)

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


_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, nogil=True)
def _prefix_xor(x: np.uint64) -> np.uint64:
    """Bit k = xor of bits 0..k: with x the quotes of a block, the bits inside strings."""
    x ^= x << np.uint64(1)
    x ^= x << np.uint64(2)
    x ^= x << np.uint64(4)
    x ^= x << np.uint64(8)
    x ^= x << np.uint64(16)
    x ^= x << np.uint64(32)
    return x


@njit(cache=True, nogil=True)
def masks(src: np.ndarray, n: int, quotes: np.ndarray, structure: np.ndarray) -> None:
    """Fill quotes and structure (at least (n + 63) // 64 words): per 64-byte block of src[:n], bit
    k set where byte k is a quote that opens or closes a string (not an escaped one), resp. one of
    `{}[]:` outside every string.
    The per-byte tests are branch-free loops the compiler turns into vector instructions; only a
    block holding a backslash walks its bytes (escapes are rare in traces)."""
    blocks = (n + 63) // 64
    inside = np.uint64(0)  # all ones while a string is open across a block edge
    pending = False  # the previous block ended on an unescaped backslash
    for b in range(blocks):
        base = b * 64
        q = np.uint64(0)
        bs = np.uint64(0)
        st = np.uint64(0)
        if base + 64 <= n:
            for k in range(64):
                c = src[base + k]
                q |= np.uint64(c == 34) << np.uint64(k)
                bs |= np.uint64(c == 92) << np.uint64(k)
                st |= np.uint64((c == 123) | (c == 125) | (c == 91) | (c == 93) | (c == 58)) << np.uint64(k)
        else:
            for k in range(n - base):
                c = src[base + k]
                q |= np.uint64(c == 34) << np.uint64(k)
                bs |= np.uint64(c == 92) << np.uint64(k)
                st |= np.uint64((c == 123) | (c == 125) | (c == 91) | (c == 93) | (c == 58)) << np.uint64(k)
        if bs != 0 or pending:
            escaped = np.uint64(0)
            for k in range(64):
                if pending:
                    escaped |= _ONE << np.uint64(k)
                    pending = False
                elif (bs >> np.uint64(k)) & _ONE:
                    pending = True
            q &= ~escaped
        strings = _prefix_xor(q) ^ inside
        inside = np.uint64(0) - (strings >> np.uint64(63))
        quotes[b] = q
        structure[b] = st & ~strings


@njit(cache=True, nogil=True)
def _next_quote(quotes: np.ndarray, i: int) -> int:
    """Position of the first string quote after i (-1: none)."""
    w = i >> 6
    bits = quotes[w] & ((_ALL << np.uint64(i & 63)) << _ONE)
    while bits == 0:
        w += 1
        if w >= quotes.size:
            return -1
        bits = quotes[w]
    return (w << 6) + int(_trailing_zeros(bits))


@njit(cache=True, nogil=True)
def _prev_quote(quotes: np.ndarray, i: int) -> int:
    """Position of the last string quote before i (-1: none)."""
    w = i >> 6
    bits = quotes[w] & ((_ONE << np.uint64(i & 63)) - _ONE)
    while bits == 0:
        w -= 1
        if w < 0:
            return -1
        bits = quotes[w]
    return (w << 6) + 63 - int(_leading_zeros(bits))


@njit(cache=True, nogil=True)
def _string_id(src: np.ndarray, quotes: np.ndarray, row: np.ndarray, kind: int, i: int, n: int) -> None:
    """A pid/tid (number or string) at i into row[kind:kind+4]."""
    if src[i] == 34:
        end = _next_quote(quotes, i)
        if end > i:
            row[kind], row[kind + 1], row[kind + 2], row[kind + 3] = KIND_STR, _hash(src, i + 1, end - i - 1), i + 1, end - i - 1
        return
    ok, v, _ = _parse(src, i, n, 0)
    if ok:
        row[kind], row[kind + 1] = KIND_INT, v


@njit(cache=True, nogil=True)
def _string(src: np.ndarray, quotes: np.ndarray, row: np.ndarray, lo: int, length: int, hash_: int, i: int) -> None:
    """A string value at i: where its text is and its hash, into the row's columns lo, length, hash_."""
    if src[i] == 34:
        end = _next_quote(quotes, i)
        row[lo], row[length] = i + 1, end - i - 1
        row[hash_] = _hash(src, i + 1, end - i - 1)


@njit(cache=True, nogil=True)
def _event_key(src: np.ndarray, quotes: np.ndarray, row: np.ndarray, colon: int, n: int) -> bool:
    """Read the value of the event's key that ends at `colon` into row; True when it is `args` and
    its value an object (the next `{` opens it)."""
    k = colon - 1
    while k > 0 and _is_ws(src[k]):
        k -= 1
    klo = _prev_quote(quotes, k) + 1
    klen = k - klo
    i = _ws(src, colon + 1, n)
    if i >= n or klen < 2 or klen > 4:
        return False
    if klen == 2 and _is(src, klo, klen, _K_PH):
        if src[i] == 34:
            row[PH] = src[i + 1]
    elif klen == 2 and _is(src, klo, klen, _K_TS):
        ok, v, _ = _parse(src, i, n, 3)
        if ok:
            row[TS] = v
    elif klen == 3 and _is(src, klo, klen, _K_DUR):
        ok, v, _ = _parse(src, i, n, 3)
        if ok:
            row[DUR] = v
    elif klen == 3 and _is(src, klo, klen, _K_CAT):
        _string(src, quotes, row, CAT_LO, CAT_LEN, CAT_HASH, i)
    elif klen == 3 and _is(src, klo, klen, _K_PID):
        _string_id(src, quotes, row, PID_KIND, i, n)
    elif klen == 3 and _is(src, klo, klen, _K_TID):
        _string_id(src, quotes, row, TID_KIND, i, n)
    elif klen == 4 and _is(src, klo, klen, _K_NAME):
        _string(src, quotes, row, NAME_LO, NAME_LEN, NAME_HASH, i)
    elif klen == 4 and _is(src, klo, klen, _K_ARGS):
        row[ARGS_LO] = i
        row[ARGS_HI] = i
        return src[i] == 123
    return False


@njit(cache=True, nogil=True)
def _args_key(src: np.ndarray, quotes: np.ndarray, row: np.ndarray, colon: int, n: int) -> None:
    """`External id` / `correlation` (numbers) and whether the args hold collective metadata."""
    k = colon - 1
    while k > 0 and _is_ws(src[k]):
        k -= 1
    klo = _prev_quote(quotes, k) + 1
    klen = k - klo
    if klen == 11 and src[klo] == 69 and _is(src, klo, klen, _K_EXTERNAL):
        slot = EXTERNAL_ID
    elif klen == 11 and src[klo] == 99 and _is(src, klo, klen, _K_CORRELATION):
        slot = CORRELATION
    else:
        if _is(src, klo, klen, _K_PG) or _is(src, klo, klen, _K_NELEMS):
            row[COMM_ARGS] = 1
        return
    ok, v, _ = _parse(src, _ws(src, colon + 1, n), n, 0)
    if ok:
        row[slot] = v


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
def scan(src: np.ndarray, i: int, hi: int, out: np.ndarray, meta: np.ndarray, n_meta: np.ndarray,
         quotes: np.ndarray, structure: np.ndarray) -> tuple[int, int]:
    """Events of the array body src[i:hi] (i just after `[` or after an event), walking only the
    structural characters (`masks`): each timed X event into out's rows until it is full, each M
    event's span into meta (n_meta[0] counts them, also past meta's size): (rows written, index to
    resume at; hi when done, -1 on malformed JSON)."""
    rows = 0
    cap = out.shape[0]
    if cap == 0:
        return 0, i
    row = out[0]
    depth = 0  # 0: between events, 1: in an event, 2: in its args or another value, ...
    args_next = False  # the event's `args` value is an object: the next `{` opens it
    in_args = False
    w = i >> 6
    if w >= structure.size:
        return 0, -1
    bits = structure[w] & (_ALL << np.uint64(i & 63))
    while True:
        while bits == 0:
            w += 1
            if w >= structure.size:
                return rows, -1
            bits = structure[w]
        p = (w << 6) + int(_trailing_zeros(bits))
        bits &= bits - _ONE
        if p >= hi:
            return rows, -1
        c = src[p]
        if c == 58:  # :
            if depth == 1:
                args_next = _event_key(src, quotes, row, p, hi)
            elif depth == 2 and in_args:
                _args_key(src, quotes, row, p, hi)
        elif c == 123 or c == 91:  # { [
            if depth == 0:
                if c == 91:
                    return rows, -1
                _clear(row)
                row[EV_LO] = p
                args_next = False
            elif depth == 1:
                in_args = args_next and c == 123
                args_next = False
            depth += 1
        else:  # } ]
            depth -= 1
            if depth < 0:
                return (rows, hi) if c == 93 else (rows, -1)
            if depth == 1 and in_args:
                row[ARGS_HI] = p + 1
                in_args = False
            elif depth == 0:
                if c != 125:
                    return rows, -1
                row[EV_HI] = p + 1
                if row[PH] == 88 and row[TS] != MISSING:  # X
                    rows += 1
                    if rows == cap:
                        return rows, p + 1
                    row = out[rows]
                elif row[PH] == 77:  # M
                    if n_meta[0] < meta.shape[0]:
                        meta[n_meta[0], 0], meta[n_meta[0], 1] = row[EV_LO], row[EV_HI]
                    n_meta[0] += 1


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
