"""Which communication event on one rank is which on another.

Exact keys first (`Comms Id`, or (`Process Group Name`, `Seq`)). Otherwise each rank's events are
split into ordered sequences per (kind, process group, family, lane: CUDA stream or thread), and a
sequence is matched against its counterpart on another rank by content (name, sizes, dtype) and
time. The clock offset between the two ranks is found from the data alone: candidate offsets are
the densest end-time differences between the two sequences over their whole overlap, and each is
scored by how many pairs it makes consistent (the two sides of a collective overlap in time; a
receive ends after its send started). So dropped events (sampling, windows cut at different
instants) cost only their own pairs, and the answer does not depend on how large the offset is:
shift one trace and the pairs stay the same.

Periodic traces can be consistent at two offsets (one period apart). The clock probe's measurement
decides when it tells them apart; otherwise the sequence is refused, with the reason.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magpie_trace.merge.anchors import COLL, P2P, RECV, SEND, Anchor, Collective
from magpie_trace.merge.lines import theil_sen

SAMPLE = 64  # events of one sequence whose end differences propose offsets
PEAKS = 8  # candidate offsets scored in full
NEIGHBOURS = 16  # events of one rank that may overlap one event of the other
MIN_PAIRS = 3
MIN_LINE_PAIRS = 20  # the pairs' line follows a drift from this many; fewer: an offset only
LINE_SLOPES = 4000  # slopes per refinement of that line (it is redrawn up to 6 times per candidate)
MIN_COVERAGE = 0.2  # consistent pairs / events of the shorter sequence inside the overlap
AMBIGUOUS = 0.75  # a second offset at least this good, elsewhere: the pairing is not determined


@dataclass(frozen=True)
class Place:
    """Where a file sits: its clock domain and its coordinates in the layout (None: unknown)."""

    node: str
    dp: int | None = None
    pp: int | None = None
    tp: int | None = None
    rank: int | None = None


@dataclass(frozen=True)
class Prior:
    """theta(other) - theta(first) lies in [lo, hi] (ns), as the clock probe measured it."""

    lo: float
    hi: float


class Seq:
    """One ordered sequence of one rank's events, as arrays."""

    def __init__(self, anchors: list[Anchor], codes: dict[tuple[Any, ...], int]) -> None:
        self.anchors = sorted(anchors, key=lambda a: a.start)
        n = len(self.anchors)
        self.s = np.fromiter((a.start for a in self.anchors), np.int64, n)
        self.e = np.fromiter((a.end for a in self.anchors), np.int64, n)
        self.code = np.fromiter((codes.setdefault((a.name, a.nelems, a.dtype), len(codes)) for a in self.anchors),
                                np.int64, n)

    def __len__(self) -> int:
        return len(self.anchors)


@dataclass
class PairMatch:
    """The pairs (index in a, index in b) found between two sequences, or why there are none."""

    ia: np.ndarray
    ib: np.ndarray
    theta: float = 0.0  # theta(b) - theta(a) the pairing implies, ns
    consistent: int = 0
    reason: str | None = None


@dataclass
class MatchResult:
    collectives: list[Collective]
    refused: list[str] = field(default_factory=list)  # sequences left unmatched, and why


def _stab(lower: np.ndarray, upper: np.ndarray) -> tuple[int, float, float]:
    """(how many intervals the deepest point lies in, that region's lo and hi)."""
    ok = lower <= upper
    if not ok.any():
        return 0, 0.0, 0.0
    pts = np.concatenate([lower[ok], upper[ok]])
    step = np.concatenate([np.ones(ok.sum(), np.int64), -np.ones(ok.sum(), np.int64)])
    order = np.lexsort((-step, pts))
    depth = np.cumsum(step[order])
    k = int(np.argmax(depth))
    return int(depth[k]), float(pts[order][k]), float(pts[order][min(k + 1, len(pts) - 1)])


def _nearest(a: Seq, b: Seq, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each event of b paired, under the offset theta (per event of b), with one of a's events of the
    same content: among the few whose ends are nearest, one that overlaps it in time (as the two
    sides of one collective do) first, else the nearest if nearer than half the gap to a's
    neighbours (farther: its partner was dropped). Each event of a is used at most once."""
    order = np.argsort(a.e, kind="stable")
    ends = a.e[order]
    target = b.e - theta
    pos = np.searchsorted(ends, target)
    half = np.full(len(ends), np.inf)
    if len(ends) > 1:
        gaps = np.diff(ends.astype(np.float64))
        half[0], half[-1] = gaps[0] / 2, gaps[-1] / 2
        half[1:-1] = np.minimum(gaps[:-1], gaps[1:]) / 2
    best = np.full(len(b), -1, np.int64)
    rank = np.full(len(b), np.inf)  # overlapping: distance; else distance + a large penalty
    for cand in (pos - 2, pos - 1, pos, pos + 1):
        ok = (cand >= 0) & (cand < len(ends))
        c = np.where(ok, cand, 0)
        ia = order[c]
        d = np.abs(ends[c] - target)
        overlap = (b.s - theta <= a.e[ia]) & (a.s[ia] <= b.e - theta)
        score = np.where(overlap, d, np.where(d <= half[c], d + 1e18, np.inf))
        better = ok & (a.code[ia] == b.code) & (score < rank)
        best = np.where(better, ia, best)
        rank = np.where(better, score, rank)
    ib = np.flatnonzero(best >= 0)
    ia = best[ib]
    keep = np.lexsort((rank[ib], ia))  # per event of a, the best-ranked first
    ia, ib = ia[keep], ib[keep]
    first = np.r_[True, ia[1:] != ia[:-1]] if len(ia) else np.zeros(0, bool)
    ia, ib = ia[first], ib[first]
    back = np.argsort(ib, kind="stable")
    return ia[back], ib[back]


def _chain(a: Seq, b: Seq, c0: float, slope: float, origin: int) -> tuple[np.ndarray, np.ndarray]:
    """The most pairs (i, j), in order on both ranks, of same-content events that overlap in time
    when b's clock is mapped by the line theta = c0 + slope * (b.e - origin): a longest increasing
    subsequence over every overlapping pair, so order settles what timing alone cannot (CPU
    collectives end up to a millisecond apart, closer than their spacing)."""
    theta = c0 + slope * (b.e - origin).astype(np.float64)
    order = np.argsort(a.s, kind="stable")
    hi = np.searchsorted(a.s[order], b.e - theta, side="right")  # a's events starting before b's ends
    found_j, found_i = [], []
    for back_step in range(1, NEIGHBOURS + 1):  # of those, the last few: the ones that can still overlap
        k = hi - back_step
        ok = k >= 0
        ia = order[np.where(ok, k, 0)]
        ok &= (a.e[ia] >= b.s - theta) & (a.code[ia] == b.code)
        found_j.append(np.flatnonzero(ok))
        found_i.append(ia[ok])
    pj, pi = np.concatenate(found_j), np.concatenate(found_i)
    if not len(pj):
        return pi, pj
    sort = np.lexsort((-pi, pj))  # j ascending, i descending: one pair per j in any chain
    pj, pi = pj[sort], pi[sort]
    tails: list[int] = []  # smallest last i of a chain of each length
    tail_at: list[int] = []
    back = np.full(len(pi), -1, np.int64)
    for k, i in enumerate(pi.tolist()):
        pos = bisect.bisect_left(tails, i)
        if pos == len(tails):
            tails.append(i)
            tail_at.append(k)
        else:
            tails[pos] = i
            tail_at[pos] = k
        back[k] = tail_at[pos - 1] if pos else -1
    chain = []
    k = tail_at[-1] if tail_at else -1
    while k >= 0:
        chain.append(k)
        k = back[k]
    chain.reverse()
    return pi[chain], pj[chain]


def _width(a: Seq, b: Seq) -> float:
    """A typical event's length (2 us .. 2 ms): how far two ranks' ends of one event may differ."""
    return float(np.clip(np.median(np.r_[a.e - a.s, b.e - b.s]), 2_000.0, 2_000_000.0))


def _candidates(a: Seq, b: Seq, prior: Prior | None) -> list[float]:
    """Offsets at which many end differences pile up: from SAMPLE events of b against every event of
    a with the same content, binned at the events' typical duration. Periodic events pile up every
    period, so with a clock probe the densest offsets inside its interval are added: the right
    one is always scored, however far the offset is from where the two windows overlap most."""
    idx = np.unique(np.linspace(0, len(b) - 1, min(len(b), SAMPLE)).astype(np.int64))
    same = b.code[idx][:, None] == a.code[None, :]
    diffs = (b.e[idx][:, None] - a.e[None, :])[same].astype(np.float64)
    width = _width(a, b)
    out = _peaks(diffs, width)
    if prior is not None:
        inside = diffs[(diffs >= prior.lo - width) & (diffs <= prior.hi + width)]
        out += [c for c in _peaks(inside, width) if c not in out]
    return out


def _peaks(diffs: np.ndarray, width: float) -> list[float]:
    """The PEAKS densest offsets among `diffs` (binned at `width`), each the median of its bins."""
    if not len(diffs):
        return []
    q = np.floor((diffs - diffs.min()) / width).astype(np.int64)
    span = int(q.max()) + 1
    if span > 20_000_000:  # absurd spread: keep only the occupied bins
        keys, inverse = np.unique(q, return_inverse=True)
        counts = np.bincount(inverse)
    else:
        keys, counts = np.arange(span), np.bincount(q, minlength=span)
    dense = np.convolve(counts, np.ones(5), mode="same") if len(keys) == span else counts.astype(np.float64)
    out: list[float] = []
    taken = np.zeros(len(dense), bool)
    for k in np.argsort(-dense, kind="stable"):
        if len(out) == PEAKS or dense[k] < 2:
            break
        if taken[max(0, k - 4) : k + 5].any():
            continue
        taken[k] = True
        lo, hi = keys[max(0, k - 2)], keys[min(len(keys) - 1, k + 2)]
        near = diffs[(q >= lo) & (q <= hi)]
        out.append(float(np.median(near)))
    return out


def _pair_directed(a: Seq, b: Seq, prior: Prior | None) -> PairMatch:
    """Sends of a with receives of b, in order (transfers between two ranks are FIFO). A receive ends
    after its send started, so pairing it with a later send than its own can contradict that, and
    pairing it with an earlier one only loosens the bound: the right shift is the tightest one that
    the clock probe does not contradict. Without a probe the bounds would be one-sided anyway."""
    empty = np.zeros(0, np.int64)
    if prior is None:
        return PairMatch(empty, empty, reason="sends and receives bound the offset from one side only, and "
                                               "there is no clock probe to pair them with")
    best: tuple[float, int] | None = None
    mid = len(a) // 2  # the probe says roughly where; the search covers SAMPLE transfers either side
    guess = int(np.searchsorted(np.sort(b.e), a.s[mid] + (prior.lo + prior.hi) / 2)) - mid
    for shift in range(max(-(len(a) - 1), guess - SAMPLE), min(len(b), guess + SAMPLE + 1)):
        # receive k + shift pairs with send k
        k0, k1 = max(0, -shift), min(len(a), len(b) - shift)
        if k1 - k0 < max(MIN_PAIRS, MIN_COVERAGE * min(len(a), len(b))):
            continue
        bound = float(np.min(b.e[k0 + shift : k1 + shift] - a.s[k0:k1]))
        if bound >= prior.lo and (best is None or bound < best[0]):
            best = (bound, shift)
    if best is None:
        return PairMatch(empty, empty, reason="no pairing of sends and receives agrees with the clock probe")
    shift = best[1]
    ia = np.arange(max(0, -shift), min(len(a), len(b) - shift))
    return PairMatch(ia, ia + shift, best[0], len(ia))


def pair_sequences(a: Seq, b: Seq, directed: bool, prior: Prior | None) -> PairMatch:
    """Pair the events of two sequences (see the module docstring); directed: a sends, b receives."""
    empty = np.zeros(0, np.int64)
    if len(a) == 0 or len(b) == 0:
        return PairMatch(empty, empty, reason="an empty sequence")
    if directed:
        return _pair_directed(a, b, prior)
    scored = []
    width = _width(a, b)
    for theta in _candidates(a, b, prior):
        ia, ib = _nearest(a, b, np.full(len(b), theta))
        if len(ia) < MIN_PAIRS:
            continue
        # Refine: the line through the pairs' end differences (it follows drift, so pairs far from
        # the middle stay), then the ordered pairs under it, until they stop changing.
        origin = int(b.e[0])
        for _ in range(6):
            x = (b.e[ib] - origin).astype(np.float64)
            c0, slope = theil_sen(x / 1e9, (b.e[ib] - a.e[ia]).astype(np.float64), len(x) >= MIN_LINE_PAIRS,
                                  LINE_SLOPES)
            slope /= 1e9
            new_a, new_b = _chain(a, b, c0, slope, origin)
            if len(new_a) < MIN_PAIRS or (len(new_a) == len(ia) and np.array_equal(new_a, ia) and np.array_equal(new_b, ib)):
                break
            ia, ib = new_a, new_b
        if len(ia) < MIN_PAIRS:
            continue
        lower = (b.s[ib] - a.e[ia]).astype(np.float64)
        upper = (b.e[ib] - a.s[ia]).astype(np.float64)
        _, lo, hi = _stab(lower, upper)
        # Score: pairs whose ends agree with the line to within a typical event's length. Pairing
        # each event with its neighbour's partner (one collective off) also overlaps in time when
        # events are long and dense (CPU), but its ends scatter by the spacing.
        resid = (b.e[ib] - a.e[ia]) - (c0 + slope * (b.e[ib] - origin))
        depth = int(np.sum((lower <= upper) & (np.abs(resid - np.median(resid)) <= width)))
        scored.append((depth, lo, hi, float(np.median(b.e[ib] - a.e[ia])), ia, ib))
    if not scored:
        return PairMatch(empty, empty, reason="no events of the same content at any common offset")
    scored.sort(key=lambda s: -s[0])
    if prior is not None:  # the probe decides between near-equals, never against a clearly better pairing
        fits = [s for s in scored if s[2] >= prior.lo and s[1] <= prior.hi]
        if fits and fits[0][0] >= AMBIGUOUS * scored[0][0]:
            scored = fits
    depth, lo, hi, theta, ia, ib = scored[0]
    rivals = [s for s in scored[1:] if s[0] >= AMBIGUOUS * depth and (s[1] > hi or s[2] < lo)]
    if rivals:
        return PairMatch(empty, empty, reason=(
            f"equally consistent at offsets {theta / 1e6:+.3f} ms and {rivals[0][3] / 1e6:+.3f} ms (periodic events; "
            + ("no clock probe to tell them apart)" if prior is None else "the clock probe does not tell them apart)")))
    inside_a = np.sum((a.e >= b.s.min() - theta) & (a.s <= b.e.max() - theta))
    inside_b = np.sum((b.e >= a.s.min() + theta) & (b.s <= a.e.max() + theta))
    shorter = max(1, min(int(inside_a), int(inside_b)))
    if depth < MIN_PAIRS or depth < MIN_COVERAGE * shorter:
        return PairMatch(empty, empty, reason=(
            f"only {depth} of {shorter} events consistent at the best offset (different runs or windows?)"))
    return PairMatch(ia, ib, theta, depth)


def _sequences(anchors: list[Anchor], codes: dict[tuple[Any, ...], int]) -> dict[tuple[Any, ...], Seq]:
    """A file's unkeyed events as sequences per (kind, process group, family, lane ordinal); lanes
    numbered by how many events they hold (most first), so a rank's busiest all-reduce lane meets
    the other rank's busiest one whatever their stream ids."""
    by_lane: dict[tuple[Any, ...], dict[str, list[Anchor]]] = defaultdict(lambda: defaultdict(list))
    for a in anchors:
        if a.key is None:
            by_lane[(a.role, *a.stream)][a.lane].append(a)
    out: dict[tuple[Any, ...], Seq] = {}
    for key, lanes in by_lane.items():
        for k, (_lane, items) in enumerate(sorted(lanes.items(), key=lambda kv: (-len(kv[1]), kv[0]))):
            out[(*key, k)] = Seq(items, codes)
    return out


def _pp_next(p: Place, q: Place, pp_size: int) -> bool:
    """Is q the next pipeline stage after p (same replica and TP rank; the last stage wraps)?"""
    if None in (p.pp, q.pp, p.tp, q.tp) or p.dp != q.dp or p.tp != q.tp or pp_size < 2:
        return False
    return q.pp == (p.pp + 1) % pp_size  # type: ignore[operator]


def match(anchors: dict[int, list[Anchor]], places: dict[int, Place],
          priors: dict[tuple[int, int], Prior]) -> MatchResult:
    """Match events across files. `places[file]` separates groups whose unnamed streams are different
    collectives (TP groups of different stages or replicas) and says which ranks are neighbouring
    pipeline stages; `priors[(f, g)]` bounds theta(g) - theta(f) where the clock probe measured both."""
    out: list[Collective] = []
    refused: list[str] = []
    keyed: dict[tuple[Any, ...], dict[int, Anchor]] = defaultdict(dict)
    for f, items in anchors.items():
        for a in items:
            if a.key is not None:
                keyed[a.key][f] = a
    for members in keyed.values():
        if len(members) > 1:
            first = next(iter(members.values()))
            out.append(Collective(first.stream, len(out), members))
    codes: dict[tuple[Any, ...], int] = {}
    seqs = {f: _sequences(items, codes) for f, items in anchors.items()}

    def pair(f: int, g: int, key_f: tuple[Any, ...], key_g: tuple[Any, ...], directed: bool) -> PairMatch:
        found = pair_sequences(seqs[f][key_f], seqs[g][key_g], directed, priors.get((f, g)))
        if found.reason:
            refused.append(f"{places[f].node}/{places[g].node} files {f},{g} {key_f[1] or key_f[2]} "
                           f"{key_f[2]}: {found.reason}")
        return found

    # Collectives: per group (process group name, else the TP group: same replica and stage), each
    # file against the file with the most events on that sequence.
    # Without pipeline stages, undirected transfer kernels (NCCL SendRecv) are between the ranks of
    # one group and are matched the same way.
    pp_size = 1 + max((p.pp for p in places.values() if p.pp is not None), default=0)
    as_group = (COLL, P2P) if pp_size < 2 else (COLL,)
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for f, per in seqs.items():
        for key in per:
            if key[0] in as_group:
                place = places[f]
                groups[(key, () if key[1] else (place.dp, place.pp))].append(f)
    for (key, _group), files in groups.items():
        if len(files) < 2:
            continue
        hub = max(files, key=lambda f: (len(seqs[f][key]), -f))
        table: dict[int, dict[int, Anchor]] = defaultdict(dict)
        for k, a in enumerate(seqs[hub][key].anchors):
            table[k][hub] = a
        for f in files:
            if f == hub:
                continue
            found = pair(hub, f, key, key, False)
            for i, j in zip(found.ia.tolist(), found.ib.tolist()):
                table[i][f] = seqs[f][key].anchors[j]
        for k in sorted(table):
            if len(table[k]) > 1:
                out.append(Collective(key[1:3], k, table[k]))
    # Transfers: a's sends with b's receives where a sends to b (the trace names the peer, else the
    # next pipeline stage), and undirected transfer kernels between neighbouring stages.
    done: set[frozenset[int]] = set()
    for f, per_f in seqs.items():
        for g, per_g in seqs.items():
            if f == g:
                continue
            neighbours = _pp_next(places[f], places[g], pp_size)
            for key in per_f:
                if key[0] == SEND:
                    told = next((a.peer for a in seqs[f][key].anchors if a.peer is not None), None)
                    if not (places[g].rank == told if told is not None else neighbours):
                        continue
                    other = (RECV, key[1], "recv", key[3])
                elif key[0] == P2P and neighbours and frozenset((f, g)) not in done:
                    other = key
                else:
                    continue
                if other not in per_g:
                    continue
                found = pair(f, g, key, other, key[0] == SEND)
                for i, j in zip(found.ia.tolist(), found.ib.tolist()):
                    out.append(Collective(key[1:3], i, {f: seqs[f][key].anchors[i], g: seqs[g][other].anchors[j]}))
            if neighbours:
                done.add(frozenset((f, g)))
    return MatchResult(out, refused)
