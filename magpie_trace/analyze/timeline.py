"""Each rank's timeline cut into segments, each saying what ran during it: compute, communication,
copies, or nothing (idle). The breakdown tables are sums over these segments (sql/breakdown*.sql).

What counts depends on the rank: a rank with GPU activity is measured on its GPU (compute kernels,
communication kernels, memcpy/memset, as TraceLens does); a CPU-only rank (the vLLM CPU build) on its
CPU ops and CPU collectives.

Two sweeps over the events' start/end points:
  1. per track (a GPU stream or a CPU thread): what the track is doing, innermost first: a collective
     hides the CPU op around it on the same thread (that op is waiting, not computing);
  2. per rank, over the tracks' pieces: whether any track computes, communicates or copies.
Adjacent segments that say the same are joined; the gaps between the first start and the last end
are idle segments. Segments are then cut at the rank's step windows and carry their step, so a
per-step breakdown is a plain GROUP BY.

Why compiled and not SQL: the same two sweeps as duckdb window queries cost ~3 CPU s per million
events here (two sorts of 2N points with running sums); numpy's sorts plus a compiled linear pass
cost ~0.1 s.
"""

from __future__ import annotations

import numpy as np
from numba import njit

COMPUTE, COMM, MEMCPY = 1, 2, 3  # event classes; in segment flags: 1 << (class - 1)
GPU_CLASSES = {"compute_kernel": COMPUTE, "comm_kernel": COMM, "memcpy": MEMCPY}
CPU_CLASSES = {"cpu_op": COMPUTE, "cpu_comm": COMM}


@njit(cache=True, nogil=True)
def _track_pieces(track: np.ndarray, t: np.ndarray, d: np.ndarray, cls: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points sorted by (track, t) -> pieces (t0, t1, class) where the track does one thing."""
    n = t.size
    t0 = np.empty(n, np.int64)
    t1 = np.empty(n, np.int64)
    pc = np.empty(n, np.int64)
    m = 0
    counts = np.zeros(4, np.int64)
    i = 0
    while i < n:
        tr = track[i]
        counts[:] = 0
        cur = 0
        since = 0
        while i < n and track[i] == tr:
            ti = t[i]
            while i < n and track[i] == tr and t[i] == ti:
                counts[cls[i]] += d[i]
                i += 1
            new = COMM if counts[COMM] > 0 else MEMCPY if counts[MEMCPY] > 0 else COMPUTE if counts[COMPUTE] > 0 else 0
            if new != cur:
                if cur != 0:
                    t0[m], t1[m], pc[m] = since, ti, cur
                    m += 1
                cur, since = new, ti
    return t0[:m], t1[:m], pc[:m]


@njit(cache=True, nogil=True)
def _rank_segments(t: np.ndarray, d: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points sorted by t -> segments (t0, t1, flags) from the first point to the last."""
    n = t.size
    t0 = np.empty(n, np.int64)
    t1 = np.empty(n, np.int64)
    flags = np.empty(n, np.int64)
    m = 0
    counts = np.zeros(4, np.int64)
    i = 0
    cur = -1
    since = 0
    while i < n:
        ti = t[i]
        while i < n and t[i] == ti:
            counts[cls[i]] += d[i]
            i += 1
        new = 0
        for c in range(1, 4):
            if counts[c] > 0:
                new |= 1 << (c - 1)
        if new != cur:
            if cur >= 0:
                t0[m], t1[m], flags[m] = since, ti, cur
                m += 1
            cur, since = new, ti
    return t0[:m], t1[:m], flags[:m]


def segments(start: np.ndarray, end: np.ndarray, cls: np.ndarray, track: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t0, t1, flags) of one rank: events [start, end) of class `cls` (0: not counted) on `track`."""
    keep = (cls > 0) & (end > start)
    start, end, cls, track = start[keep], end[keep], cls[keep], track[keep]
    if not start.size:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    # start and end points; +1/-1 and the class as int8 (2N points: this sweep is analyze's peak memory)
    n = start.size
    t = np.concatenate([start, end])
    d = np.repeat(np.array([1, -1], np.int8), n)
    c = np.concatenate([cls, cls]).astype(np.int8)
    tr = np.concatenate([track, track]).astype(np.int64)
    span = int(t.max() - t.min()) + 1
    if span < (1 << 52) and int(tr.max()) < (1 << 10):  # one int64 key: a plain sort, twice as fast as lexsort
        order = np.argsort((tr << 52) | (t - t.min()), kind="stable")
    else:
        order = np.lexsort((t, tr))
    p0, p1, pc = _track_pieces(tr[order], t[order], d[order], c[order])
    del t, d, c, tr, order
    t = np.concatenate([p0, p1])
    d = np.repeat(np.array([1, -1], np.int8), p0.size)
    c = np.concatenate([pc, pc]).astype(np.int8)
    del p0, p1, pc
    order = np.argsort(t, kind="stable")
    return _rank_segments(t[order], d[order], c[order])


@njit(cache=True, nogil=True)
def _cut(t0: np.ndarray, t1: np.ndarray, flags: np.ndarray, w0: np.ndarray, w1: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments (sorted, disjoint) cut at the windows' edges (sorted, disjoint): (t0, t1, flags, step)
    with step the window's index or -1 outside every window."""
    cap = t0.size + 2 * w0.size + 1
    o0 = np.empty(cap, np.int64)
    o1 = np.empty(cap, np.int64)
    of = np.empty(cap, np.int64)
    os_ = np.empty(cap, np.int64)
    m = 0
    k = 0
    for i in range(t0.size):
        a, b = t0[i], t1[i]
        while a < b:
            while k < w0.size and w1[k] <= a:
                k += 1
            if k < w0.size and w0[k] <= a:
                end, step = min(b, w1[k]), k
            elif k < w0.size:
                end, step = min(b, w0[k]), -1
            else:
                end, step = b, -1
            o0[m], o1[m], of[m], os_[m] = a, end, flags[i], step
            m += 1
            a = end
    return o0[:m], o1[:m], of[:m], os_[:m]


def step_windows(start: np.ndarray, end: np.ndarray, step: np.ndarray, counted: np.ndarray, n_steps: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per step, first start to last end of its counted events; a window that runs into the next one
    ends where the next begins (that time belongs to the later step). Steps without events: empty."""
    w0 = np.full(n_steps, np.iinfo(np.int64).max, np.int64)
    w1 = np.full(n_steps, np.iinfo(np.int64).min, np.int64)
    sel = counted & (step >= 0)
    np.minimum.at(w0, step[sel], start[sel])
    np.maximum.at(w1, step[sel], end[sel])
    empty = w0 > w1
    w0[empty], w1[empty] = 0, 0
    for k in range(n_steps - 1):
        if w1[k] > w0[k + 1] and not empty[k + 1]:
            w1[k] = max(w0[k], w0[k + 1])
    return w0, w1


def cut_at_steps(t0: np.ndarray, t1: np.ndarray, flags: np.ndarray, w0: np.ndarray, w1: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_cut` over the non-empty windows, steps numbered as given."""
    keep = np.flatnonzero(w1 > w0)
    order = keep[np.argsort(w0[keep], kind="stable")]
    c0, c1, cf, cs = _cut(t0, t1, flags, w0[order], w1[order])
    step = np.where(cs >= 0, order[np.maximum(cs, 0)], -1)
    return c0, c1, cf, step
