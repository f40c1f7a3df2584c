"""Byte-level rewriting of `"ts"`, `"dur"`, `"pid"` and `"id"` values inside a Kineto event array.

Why bytes: building Python objects for millions of events is ~10x slower than the rest of the merge
and needs ~3x the trace's size in memory. Every value is located with numpy, parsed and formatted in
vectorised integer arithmetic (exact nanoseconds, never floats), and written back in place,
right-aligned and padded with JSON whitespace. A value that no longer fits its field is spliced in
instead, which is slower but rare for timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import numpy as np

WINDOW = 40  # bytes looked at after a key's colon: whitespace + the longest value we rewrite
_COLS = np.arange(WINDOW)
_POW10 = np.array([10**k for k in range(19)], dtype=np.int64)
_SPACE, _QUOTE, _MINUS, _DOT = 32, 34, 45, 46
_TERMINATORS = frozenset(b",}] \n\r\t")


def find_keys(buf: np.ndarray, keys: tuple[bytes, ...]) -> dict[bytes, np.ndarray]:
    """Positions just after `"<key>":` for each key, found in one vectorised pass over the bytes.

    A key is accepted only when the quote before it follows `{`, `,` or whitespace, so text inside
    a JSON string (where quotes are escaped) never matches.
    """
    n = buf.size
    quotes = np.flatnonzero(buf[: max(n - 6, 0)] == _QUOTE)
    before = buf[np.maximum(quotes - 1, 0)]
    quotes = quotes[(before == 44) | (before == 123) | (before == 32) | (before == 10) | (before == 9) | (before == 13)]
    out: dict[bytes, np.ndarray] = {}
    for key in keys:
        cand = quotes
        k = len(key)
        for i, ch in enumerate(key):
            cand = cand[buf[cand + 1 + i] == ch]
        cand = cand[(buf[cand + 1 + k] == _QUOTE) & (buf[cand + 2 + k] == 58)]
        out[key] = cand + k + 3
    return out


def _window(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    idx = pos[:, None] + _COLS[None, :]
    np.minimum(idx, buf.size - 1, out=idx)
    return buf[idx]


def _token_bounds(win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (first non-whitespace column) and end (first column after the value) of each row."""
    ws = (win == 32) | (win == 10) | (win == 13) | (win == 9)
    start = np.argmax(~ws, axis=1)
    isstr = win[np.arange(len(win)), start] == _QUOTE
    after = _COLS[None, :] > start[:, None]
    num_stop = after & ~(((win >= 48) & (win <= 57)) | (win == _DOT) | (win == _MINUS))
    num_end = np.where(num_stop.any(axis=1), np.argmax(num_stop, axis=1), WINDOW)
    str_stop = after & (win == _QUOTE)
    str_end = np.where(str_stop.any(axis=1), np.argmax(str_stop, axis=1) + 1, WINDOW)
    end = np.where(isstr, str_end, num_end)
    return start, end


def parse_ns(win: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Microsecond decimals -> exact integer nanoseconds; `ok` is False where slow parsing is needed."""
    rows = np.arange(len(win))
    neg = win[rows, start] == _MINUS
    first = start + neg
    isdot = (win == _DOT) & (_COLS[None, :] >= first[:, None]) & (_COLS[None, :] < end[:, None])
    has_dot = isdot.any(axis=1)
    dot = np.where(has_dot, np.argmax(isdot, axis=1), end)
    cols = _COLS[None, :]
    place = np.where(cols < dot[:, None], dot[:, None] + 2 - cols, dot[:, None] + 3 - cols)
    digit = (win >= 48) & (win <= 57)
    inside = (cols >= first[:, None]) & (cols < end[:, None]) & (cols != dot[:, None])
    ok = (end > first) & ~(inside & ~digit).any(axis=1) & ~(inside & (place < 0)).any(axis=1)
    ok &= (dot - first) <= 15
    term = win[rows, np.minimum(end, WINDOW - 1)]
    ok &= (end < WINDOW) & ((term == 44) | (term == 125) | (term == 93) | (term == 32) | (term == 10) | (term == 13) | (term == 9))
    use = inside & digit & (place >= 0)
    vals = np.where(use, (win.astype(np.int64) - 48) * _POW10[np.clip(place, 0, 18)], 0).sum(axis=1)
    return np.where(neg, -vals, vals), ok


def format_ns(vals: np.ndarray, decimals: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Integers scaled by 10**decimals (ns for decimals=3) -> right-aligned `[-]int[.frac]` with trailing
    zeros dropped, in WINDOW-wide rows; also the lengths."""
    neg = vals < 0
    mag = np.abs(vals)
    unit = _POW10[decimals]
    ip, fr = mag // unit, mag % unit
    fd = np.zeros(len(vals), dtype=np.int64)
    for k in range(decimals, 0, -1):  # fraction digits left after dropping trailing zeros
        fd = np.where((fd == 0) & (fr % _POW10[decimals - k + 1 - 1] == 0) & (fr % _POW10[decimals - k + 1] != 0), k, fd)
    number = ip * _POW10[fd] + fr // _POW10[decimals - fd]
    ndig = np.maximum(np.searchsorted(_POW10, ip, side="right"), 1)
    length = neg + ndig + np.where(fd > 0, fd + 1, 0)
    k = (WINDOW - 1 - _COLS)[None, :]  # distance from the right edge
    fdc = fd[:, None]
    is_dot = (fdc > 0) & (k == fdc)
    kd = np.where((fdc > 0) & (k > fdc), k - 1, k)
    digits = (number[:, None] // _POW10[np.clip(kd, 0, 18)]) % 10 + 48
    out = np.where(is_dot, _DOT, digits)
    out = np.where(neg[:, None] & (k == length[:, None] - 1), _MINUS, out)
    out = np.where(k >= length[:, None], _SPACE, out)
    return out.astype(np.uint8), length


def format_ints(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return format_ns(vals.astype(np.int64), decimals=0)


class Edits:
    """Replacements of value fields in one chunk, applied together in one pass."""

    def __init__(self) -> None:
        self.pos: list[np.ndarray] = []  # field start (just after the colon)
        self.width: list[np.ndarray] = []  # bytes from field start to the end of the old value
        self.rows: list[np.ndarray] = []  # right-aligned new values
        self.length: list[np.ndarray] = []

    def add(self, pos: np.ndarray, width: np.ndarray, rows: np.ndarray, length: np.ndarray) -> None:
        if len(pos):
            self.pos.append(pos)
            self.width.append(width)
            self.rows.append(rows)
            self.length.append(length)

    def copy(self) -> Edits:
        other = Edits()
        other.pos, other.width, other.rows, other.length = [*self.pos], [*self.width], [*self.rows], [*self.length]
        return other

    def apply(self, chunk: bytes, cuts: list[tuple[int, int]] | None = None) -> bytes:
        """The chunk with every edit made; `cuts` are byte ranges to drop (e.g. replaced metadata)."""
        if not self.pos and not cuts:
            return chunk
        out = np.frombuffer(chunk, dtype=np.uint8).copy()
        splices: list[tuple[int, int, bytes]] = []
        if self.pos:
            pos = np.concatenate(self.pos)
            width = np.concatenate(self.width)
            rows = np.concatenate(self.rows)
            length = np.concatenate(self.length)
            fits = length <= width
            p, w, r = pos[fits], width[fits], rows[fits]
            mask = _COLS[None, :] < w[:, None]
            src = np.clip(WINDOW - w[:, None] + _COLS[None, :], 0, WINDOW - 1)
            vals = np.take_along_axis(r, src, axis=1)
            out[(p[:, None] + _COLS[None, :])[mask]] = vals[mask]
            for i in np.flatnonzero(~fits):
                text = rows[i, WINDOW - length[i] :].tobytes()
                splices.append((int(pos[i]), int(pos[i] + width[i]), text))
        for lo, hi in cuts or ():
            splices.append((lo, hi, b""))
        if not splices:
            return out.tobytes()
        splices.sort()
        data = out.tobytes()
        parts, prev = [], 0
        for lo, hi, text in splices:
            parts.append(data[prev:lo])
            parts.append(text)
            prev = hi
        parts.append(data[prev:])
        return b"".join(parts)


def slow_parse_ns(token: bytes) -> int:
    """Exact ns for a value the vectorised parser declined (exponents, >3 decimals)."""
    try:
        return int((Decimal(token.decode()) * 1000).to_integral_value())
    except (InvalidOperation, UnicodeDecodeError) as exc:
        raise ValueError(f"not a number: {token[:40]!r}") from exc


def read_numbers(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ns values, field widths, is-number) for the values that start at `pos`."""
    win = _window(buf, pos)
    start, end = _token_bounds(win)
    vals, ok = parse_ns(win, start, end)
    isnum = win[np.arange(len(win)), start] != _QUOTE
    for i in np.flatnonzero(~ok & isnum):
        lo = hi = int(pos[i] + start[i])
        while hi < buf.size and buf[hi] not in _TERMINATORS:
            hi += 1
        vals[i] = slow_parse_ns(buf[lo:hi].tobytes())
        end[i] = hi - pos[i]
    return vals, end, isnum


def tokens(buf: np.ndarray, pos: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """Raw value tokens (e.g. pids: `123`, `"Spans"`) and field widths."""
    win = _window(buf, pos)
    start, end = _token_bounds(win)
    return [win[i, start[i] : end[i]].tobytes() for i in range(len(win))], end


def map_tokens(buf: np.ndarray, pos: np.ndarray, mapping: Callable[[bytes], int]) -> tuple[np.ndarray, np.ndarray]:
    """New integer per token through `mapping`, vectorised over distinct tokens; returns (values, widths)."""
    win = _window(buf, pos)
    start, end = _token_bounds(win)
    rows = np.arange(len(win))
    src = np.clip(start[:, None] + _COLS[None, :], 0, WINDOW - 1)
    aligned = np.take_along_axis(win, src, axis=1)
    aligned = np.where(_COLS[None, :] < (end - start)[:, None], aligned, 0).astype(np.uint8)
    keys = np.ascontiguousarray(aligned).view(np.dtype((np.void, WINDOW))).ravel()
    uniq, inverse = np.unique(keys, return_inverse=True)
    table = np.array([mapping(bytes(u).rstrip(b"\0")) for u in uniq], dtype=np.int64)
    del rows
    return table[inverse.ravel()], end
