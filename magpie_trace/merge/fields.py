"""Byte-level rewriting of `"ts"`, `"dur"`, `"pid"` and `"id"` values inside a Kineto event array.

Why bytes: building Python objects for millions of events is ~10x slower than the rest of the merge
and needs ~3x the trace's size in memory. Keys are found with one numpy pass over the colons; values
are parsed and formatted in vectorised integer arithmetic (exact nanoseconds, never floats).

Fast path: a trace writer prints most values of a key with one layout (e.g. ` 4531671060491.174`:
one space, 13 digits, 3 decimals), so values are read and written column by column for each layout
seen, and a new value with the same number of digits overwrites the old one in place. Anything else
(other layouts, strings, exponents, a value that grew a digit) takes the general path: parsed in a
fixed-width window and either written right-aligned over the old field (padded with JSON whitespace)
or spliced in when it no longer fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

WINDOW = 32  # bytes looked at after a key's colon by the general path
MAX_LAYOUTS = 12  # fast-path layouts tried per key and chunk before the rest goes the general way
_COLS = np.arange(WINDOW)
_POW10 = np.array([10**k for k in range(19)], dtype=np.int64)
_SPACE, _QUOTE, _MINUS, _DOT, _COLON = 32, 34, 45, 46, 58
_TERMINATORS = frozenset(b",}] \n\r\t")
_WS = (32, 10, 13, 9)


def find_keys(buf: np.ndarray, keys: tuple[bytes, ...]) -> dict[bytes, np.ndarray]:
    """Positions just after `"<key>":` for each key (keys of 2+ characters).

    Four bytes of the key (`"ts"`, `"id"`, `pid"`) are found by comparing the buffer as uint32 at its
    four alignments (a few fast passes instead of one Python object per match); the colon and the rest
    of the key are then checked. A key counts only when its opening quote follows `{`, `,` or
    whitespace: inside a JSON string quotes are escaped, so string content never matches."""
    n = buf.size
    out: dict[bytes, np.ndarray] = {}
    for key in keys:
        pattern = b'"' + key + b'":'
        tail, head = pattern[-5:-1], pattern[:-5]
        target = np.frombuffer(tail, dtype=np.uint32)[0]
        hits = [np.flatnonzero(np.frombuffer(buf, np.uint32, (n - off) // 4, off) == target) * 4 + off
                for off in range(4)]
        cand = np.sort(np.concatenate(hits))
        cand = cand[(cand >= len(head) + 1) & (cand + 4 < n)]
        cand = cand[buf[cand + 4] == _COLON]
        for i, ch in enumerate(reversed(head)):
            cand = cand[buf[cand - 1 - i] == ch]
        before = buf[cand - 1 - len(head)]
        ok = (before == 44) | (before == 123) | (before == 32) | (before == 10) | (before == 9) | (before == 13)
        out[key] = cand[ok] + 5
    return out


@dataclass
class _Layout:
    """One printed shape of a number: `ws` leading bytes, `nint` digits, then `.` and `nfrac` digits."""

    ws: bytes
    nint: int
    nfrac: int

    @property
    def width(self) -> int:
        return len(self.ws) + self.nint + (self.nfrac + 1 if self.nfrac else 0)

    def digit_columns(self) -> list[tuple[int, int]]:
        """(column, power of ten within the integer `int digits + frac digits`)."""
        f = len(self.ws)
        cols = [(f + j, self.nint - 1 - j + self.nfrac) for j in range(self.nint)]
        cols += [(f + self.nint + 1 + j, self.nfrac - 1 - j) for j in range(self.nfrac)]
        return cols

    def read(self, buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows printed in this layout, their values) from one gather of the rows' bytes."""
        block = buf[pos[:, None] + np.arange(self.width + 1)[None, :]]
        f = len(self.ws)
        cols = np.array([c for c, _ in self.digit_columns()])
        digits = block[:, cols] - np.uint8(48)
        ok = (digits < 10).all(axis=1)
        if f:
            ok &= (block[:, :f] == np.frombuffer(self.ws, dtype=np.uint8)[None, :]).all(axis=1)
        if self.nfrac:
            ok &= block[:, f + self.nint] == _DOT
        if self.nint > 1:
            ok &= block[:, f] != 48  # a leading zero is not this layout
        term = block[:, self.width]
        ok &= ((term - np.uint8(48)) >= 10) & (term != _DOT) & (term != 101) & (term != 69)
        powers = _POW10[[p for _, p in self.digit_columns()]]
        return ok, digits[ok].astype(np.int64) @ powers

    def fits(self, vals: np.ndarray) -> np.ndarray:
        """Values (same scale as parse) that print in this layout, with leading zeros as spaces."""
        return (vals >= 0) & (vals // _POW10[self.nfrac] < _POW10[self.nint])

    def write(self, out: np.ndarray, pos: np.ndarray, vals: np.ndarray) -> None:
        cols = np.array([c for c, _ in self.digit_columns()])
        powers = _POW10[[p for _, p in self.digit_columns()]]
        digits = (vals[:, None] // powers[None, :] % 10 + 48).astype(np.uint8)
        lead = powers > _POW10[self.nfrac]  # the units digit and fraction are always printed
        if lead.any():
            blank = (vals[:, None] < powers[None, :]) & lead[None, :]
            digits[blank] = _SPACE
        out[pos[:, None] + cols[None, :]] = digits


def _layout_at(buf: np.ndarray, p: int, decimals: int) -> _Layout | None:
    """The layout of the number at p, if it is a plain non-negative decimal with <= decimals places."""
    i = p
    while buf[i] in _WS:
        i += 1
    ws = buf[p:i].tobytes()
    j = i
    while 48 <= buf[j] <= 57:
        j += 1
    nint = j - i
    nfrac = 0
    if buf[j] in (101, 69):  # exponent: general path
        return None
    if buf[j] == _DOT:
        k = j + 1
        while 48 <= buf[k] <= 57:
            k += 1
        nfrac = k - j - 1
        if nfrac == 0:
            return None
    if nint == 0 or nfrac > decimals or len(ws) > 8:
        return None
    return _Layout(ws, nint, nfrac)


@dataclass
class Numbers:
    """Values read at `pos`: scaled integers (ns for decimals=3), how each was printed, and tokens of
    the values that are not numbers (e.g. string pids)."""

    pos: np.ndarray
    vals: np.ndarray
    group: np.ndarray  # index into layouts, or -1 for the general path
    width: np.ndarray  # bytes from pos to the end of the value
    isnum: np.ndarray
    layouts: list[_Layout]
    decimals: int


def read(buf: np.ndarray, pos: np.ndarray, decimals: int = 3) -> Numbers:
    """Parse the values after each key position; `buf` must be padded with WINDOW spaces."""
    n = len(pos)
    vals = np.zeros(n, dtype=np.int64)
    group = np.full(n, -1, dtype=np.int64)
    width = np.zeros(n, dtype=np.int64)
    isnum = np.ones(n, dtype=bool)
    layouts: list[_Layout] = []
    todo = np.arange(n)
    odd: list[int] = []  # rows whose own layout is not a plain number
    for _ in range(2 * MAX_LAYOUTS):
        if not len(todo) or len(layouts) == MAX_LAYOUTS:
            break
        layout = _layout_at(buf, int(pos[todo[0]]), decimals)
        if layout is None:
            odd.append(int(todo[0]))
            todo = todo[1:]
            continue
        hit, parsed = layout.read(buf, pos[todo])
        rows = todo[hit]
        vals[rows] = parsed * _POW10[decimals - layout.nfrac]
        group[rows] = len(layouts)
        width[rows] = layout.width
        layouts.append(layout)
        todo = todo[~hit]
    todo = np.concatenate([np.array(odd, dtype=np.int64), todo]).astype(np.int64)
    if len(todo):
        v, w, num = _read_general(buf, pos[todo], decimals)
        vals[todo], width[todo], isnum[todo] = v, w, num
    return Numbers(pos, vals, group, width, isnum, layouts, decimals)


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
    return start, np.where(isstr, str_end, num_end)


def _parse_window(win: np.ndarray, start: np.ndarray, end: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised parse of `[-]digits[.digits]` tokens; `ok` is False where Decimal must do it."""
    rows = np.arange(len(win))
    cols = _COLS[None, :]
    neg = win[rows, start] == _MINUS
    first = start + neg
    isdot = (win == _DOT) & (cols >= first[:, None]) & (cols < end[:, None])
    dot = np.where(isdot.any(axis=1), np.argmax(isdot, axis=1), end)
    place = np.where(cols < dot[:, None], dot[:, None] - 1 - cols + decimals, dot[:, None] + decimals - cols)
    digit = (win >= 48) & (win <= 57)
    inside = (cols >= first[:, None]) & (cols < end[:, None]) & (cols != dot[:, None])
    term = win[rows, np.minimum(end, WINDOW - 1)]
    ok = (end > first) & (end < WINDOW) & ~(inside & ~digit).any(axis=1) & ~(inside & (place < 0)).any(axis=1)
    ok &= (dot - first) <= 18 - decimals
    ok &= (term == 44) | (term == 125) | (term == 93) | (term == 32) | (term == 10) | (term == 13) | (term == 9)
    use = inside & digit & (place >= 0) & (place <= 18)
    vals = np.where(use, (win.astype(np.int64) - 48) * _POW10[np.clip(place, 0, 18)], 0).sum(axis=1)
    return np.where(neg, -vals, vals), ok


def _read_general(buf: np.ndarray, pos: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    win = _window(buf, pos)
    start, end = _token_bounds(win)
    isnum = win[np.arange(len(win)), start] != _QUOTE
    vals, ok = _parse_window(win, start, end, decimals)
    for i in np.flatnonzero(isnum & ~ok):
        lo = hi = int(pos[i] + start[i])
        while hi < buf.size and buf[hi] not in _TERMINATORS:
            hi += 1
        vals[i] = slow_parse(buf[lo:hi].tobytes(), decimals)
        end[i] = hi - pos[i]
    for i in np.flatnonzero(~isnum):  # strings: find the closing quote even past the window
        hi = int(pos[i] + start[i]) + 1
        while hi < buf.size and buf[hi] != _QUOTE:
            hi += 2 if buf[hi] == 92 else 1
        end[i] = hi + 1 - pos[i]
    return vals, end, isnum


def slow_parse(token: bytes, decimals: int) -> int:
    """Exact scaled integer for any JSON number (exponents, many decimals, signs)."""
    try:
        return int((Decimal(token.decode()) * (10**decimals)).to_integral_value())
    except (InvalidOperation, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not a number: {token[:40]!r}") from exc


def token(buf: np.ndarray, pos: int, width: int) -> bytes:
    """The value's bytes without leading whitespace (e.g. `"Spans"`)."""
    return bytes(buf[pos : pos + width].tobytes().lstrip(b" \n\r\t"))


def format_general(vals: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """Scaled integers -> right-aligned `[-]int[.frac]` (trailing zeros dropped) in WINDOW-wide rows."""
    neg = vals < 0
    mag = np.abs(vals)
    unit = _POW10[decimals]
    ip, fr = mag // unit, mag % unit
    fd = np.zeros(len(vals), dtype=np.int64)  # fraction digits kept
    for k in range(1, decimals + 1):
        fd = np.where(fr % _POW10[decimals - k + 1] != 0, np.maximum(fd, k), fd)
    number = ip * _POW10[fd] + fr // _POW10[decimals - fd]
    ndig = np.maximum(np.searchsorted(_POW10, ip, side="right"), 1)
    length = neg + ndig + np.where(fd > 0, fd + 1, 0)
    k = (WINDOW - 1 - _COLS)[None, :]  # distance from the right edge
    fdc = fd[:, None]
    kd = np.where((fdc > 0) & (k > fdc), k - 1, k)
    out = (number[:, None] // _POW10[np.clip(kd, 0, 18)]) % 10 + 48
    out = np.where((fdc > 0) & (k == fdc), _DOT, out)
    out = np.where(neg[:, None] & (k == length[:, None] - 1), _MINUS, out)
    out = np.where(k >= length[:, None], _SPACE, out)
    return out.astype(np.uint8), length


def write(outs: list[np.ndarray], nums: Numbers, rows: np.ndarray, new: np.ndarray) -> list[tuple[int, int, bytes]]:
    """Write new values for `rows` of `nums` into every array in `outs`; returns the splices
    (start, end, bytes) for values that no longer fit their field."""
    pos, group = nums.pos[rows], nums.group[rows]
    rest = np.ones(len(rows), dtype=bool)
    for g, layout in enumerate(nums.layouts):
        sel = group == g
        if not sel.any():
            continue
        v = new[sel] // _POW10[nums.decimals - layout.nfrac]
        ok = layout.fits(v) & (new[sel] % _POW10[nums.decimals - layout.nfrac] == 0)
        idx = np.flatnonzero(sel)[ok]
        for out in outs:
            layout.write(out, pos[idx], v[ok])
        rest[idx] = False
    if not rest.any():
        return []
    pos, new, width = pos[rest], new[rest], nums.width[rows][rest]
    text, length = format_general(new, nums.decimals)
    fits = length <= width
    p, w, r = pos[fits], width[fits], text[fits]
    mask = _COLS[None, :] < w[:, None]
    src = np.clip(WINDOW - w[:, None] + _COLS[None, :], 0, WINDOW - 1)
    vals = np.take_along_axis(r, src, axis=1)
    dest = (p[:, None] + _COLS[None, :])[mask]
    for out in outs:
        out[dest] = vals[mask]
    return [(int(pos[i]), int(pos[i] + width[i]), text[i, WINDOW - length[i] :].tobytes())
            for i in np.flatnonzero(~fits)]


def splice(data: bytes, splices: list[tuple[int, int, bytes]]) -> bytes:
    """Replace byte ranges (start, end, new bytes); a range inside an earlier one is dropped with it."""
    if not splices:
        return data
    parts, prev = [], 0
    for lo, hi, text in sorted(splices, key=lambda s: (s[0], -s[1])):
        if lo < prev:  # inside a range already replaced (e.g. a value in a dropped event)
            continue
        parts.append(data[prev:lo])
        parts.append(text)
        prev = hi
    parts.append(data[prev:])
    return b"".join(parts)
