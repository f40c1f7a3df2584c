"""Per-node clock offset and drift from matched collectives.

Model: node m's clock reads c = t + theta_m(c), theta_m(c) = a_m + b_m * (c - t0), with the reference
node's theta = 0. Two estimators per pair of nodes, and the tighter one wins:

* envelope: a collective cannot end on any rank before it started on every rank, so for nodes n, m
  `max start_m - min end_n <= theta_m - theta_n <= min end_m - max start_n`. Every collective gives
  such a two-sided bound; the fit is the line (offset + drift) that lies deepest inside all of them
  (maximum margin, found exactly: the margin is concave in the drift). This is what works on CPU
  collectives whose end times scatter by milliseconds.
* ends: a robust line (Theil-Sen, median with few anchors) through the differences of end times.
  GPU collective kernels end within microseconds of each other, so this is tighter there.

If the bounds contradict each other (mismatched anchors), the offset stabbed by the most bounds is
taken and the envelope is refit on the bounds that agree with it, with a warning. Pairs are fitted
between each node and the reference (or, failing that, the nodes it shares collectives with) and
combined into node offsets by weighted least squares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magpie_trace.merge.anchors import Matched

MIN_ANCHORS = 20  # fewer matched collectives than this between two nodes: warn
MIN_DRIFT_SPAN_NS = 200_000_000  # shorter than this: fit an offset only
MAX_DRIFT = 100_000.0  # ns per s (100 ppm): physical clocks do not drift more
_SEARCH_ITERS = 100


@dataclass
class PairFit:
    a: float  # ns at t0
    b: float  # ns per second
    method: str
    n: int
    uncertainty_ns: float  # envelope half-width, or robust spread of end differences
    warnings: list[str] = field(default_factory=list)


@dataclass
class ClockFit:
    """How to map one node's clock onto the reference clock."""

    node: str
    offset_ns: float  # theta at t0
    drift_ppm: float
    t0_ns: int
    method: str
    n_anchors: int
    uncertainty_ns: float
    reference: bool = False
    warnings: list[str] = field(default_factory=list)

    def theta(self, c: np.ndarray | float) -> np.ndarray | float:
        return self.offset_ns + self.drift_ppm * 1e-6 * (np.asarray(c, dtype=np.float64) - self.t0_ns)

    def correct(self, c: np.ndarray) -> np.ndarray:
        """Own-clock absolute ns -> reference-clock absolute ns (int64, exact rounding)."""
        c = np.asarray(c, dtype=np.int64)
        return c - np.rint(self.theta(c)).astype(np.int64)


def envelope(xl: np.ndarray, yl: np.ndarray, xu: np.ndarray, yu: np.ndarray, fit_drift: bool) -> tuple[float, float, float]:
    """The line a + b*x deepest inside `a + b*xl >= yl` and `a + b*xu <= yu`: (a, b, margin).

    margin(b) = (min(yu - b*xu) - max(yl - b*xl)) / 2 is concave, so a ternary search finds its
    maximum; a negative margin means the bounds cannot all hold."""

    def at(b: float) -> tuple[float, float]:
        lo = float(np.max(yl - b * xl))
        hi = float(np.min(yu - b * xu))
        return (hi - lo) / 2, (hi + lo) / 2

    if not fit_drift:
        margin, a = at(0.0)
        return a, 0.0, margin
    lo, hi = -MAX_DRIFT, MAX_DRIFT
    for _ in range(_SEARCH_ITERS):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if at(m1)[0] < at(m2)[0]:
            lo = m1
        else:
            hi = m2
    b = (lo + hi) / 2
    margin, a = at(b)
    return a, b, margin


def theil_sen(x: np.ndarray, y: np.ndarray, fit_drift: bool) -> tuple[float, float]:
    """Robust line; slopes from at most 20k deterministic point pairs."""
    if not fit_drift or len(x) < MIN_ANCHORS:
        return float(np.median(y)), 0.0
    n = len(x)
    rng = np.random.default_rng(0)
    i = rng.integers(0, n, 20_000)
    j = rng.integers(0, n, 20_000)
    keep = np.abs(x[i] - x[j]) > 1e-3
    slopes = (y[i][keep] - y[j][keep]) / (x[i][keep] - x[j][keep])
    b = float(np.clip(np.median(slopes), -MAX_DRIFT, MAX_DRIFT)) if len(slopes) else 0.0
    return float(np.median(y - b * x)), b


def _stab_point(lower: np.ndarray, upper: np.ndarray) -> float:
    """Middle of the region covered by the most intervals."""
    pts = np.concatenate([lower, upper])
    step = np.concatenate([np.ones(len(lower)), -np.ones(len(upper))])
    order = np.lexsort((-step, pts))
    depth = np.cumsum(step[order])
    k = int(np.argmax(depth))
    return float((pts[order][k] + pts[order][min(k + 1, len(pts) - 1)]) / 2)


def fit_pair(lower: np.ndarray, upper: np.ndarray, ends: np.ndarray, span_s: float, label: str) -> PairFit:
    """Fit theta_m - theta_n from per-collective rows (x_lower, lower, x_upper, upper) and (x_end, diff).

    x values are seconds since t0; y values ns."""
    xl, yl, xu, yu = lower[:, 0], lower[:, 1], upper[:, 0], upper[:, 1]
    xe, ye = ends[:, 0], ends[:, 1]
    n = len(ye)
    fit_drift = n >= MIN_ANCHORS and span_s * 1e9 >= MIN_DRIFT_SPAN_NS
    warnings: list[str] = []
    if n < MIN_ANCHORS:
        warnings.append(f"{label}: only {n} matched collectives (< {MIN_ANCHORS}); offset is not trustworthy")
    a_v, b_v, margin = envelope(xl, yl, xu, yu, fit_drift)
    method = "envelope"
    if margin < 0:
        point = _stab_point(yl - 0.0, yu - 0.0)
        keep = (yl <= point + 1.0) & (yu >= point - 1.0)
        dropped = int(n - keep.sum())
        warnings.append(f"{label}: {dropped} of {n} collectives contradict the others' causality bounds; "
                        "they were left out (mismatched anchors?)")
        a_v, b_v, margin = envelope(xl[keep], yl[keep], xu[keep], yu[keep], fit_drift and keep.sum() >= MIN_ANCHORS)
        method = "envelope-trimmed"
        if margin < 0:
            a_v, b_v, margin, method = point, 0.0, 0.0, "stab"
    a_e, b_e = theil_sen(xe, ye, fit_drift)
    resid = ye - (a_e + b_e * xe)
    spread = float(1.4826 * np.median(np.abs(resid - np.median(resid)))) if n else float("inf")
    inside = np.mean((a_e + b_e * xl >= yl - spread) & (a_e + b_e * xu <= yu + spread)) if n else 0.0
    if spread < margin and inside >= 0.99:
        return PairFit(a_e, b_e, "ends", n, spread, warnings)
    return PairFit(a_v, b_v, method, n, max(margin, 0.0), warnings)


@dataclass
class NodeTimes:
    """Per collective (rows) and node (columns): the extremes and median of its ranks' start and end
    times (own clock, ns after t0, so float64 keeps every ns; NaN where the node did not take part),
    computed once for all node pairs."""

    nodes: list[str]
    max_start: np.ndarray
    min_start: np.ndarray
    max_end: np.ndarray
    min_end: np.ndarray
    mid_end: np.ndarray

    @classmethod
    def build(cls, matched: Matched, node_of: dict[int, str], nodes: list[str], t0: int) -> NodeTimes:
        column = {n: k for k, n in enumerate(nodes)}
        node_col = np.zeros(max(node_of, default=-1) + 1, dtype=np.int64)  # file -> its node's column
        for f, node in node_of.items():
            node_col[f] = column[node]
        n_rows = len(matched.streams)
        arrays = [np.full((n_rows, len(nodes)), np.nan) for _ in range(5)]
        if len(matched.file):
            cell = matched.collective * len(nodes) + node_col[matched.file]
            start = (matched.start - t0).astype(np.float64)
            end = (matched.end - t0).astype(np.float64)
            order = np.lexsort((end, cell))  # cells together, ends ascending within each
            cell, start, end = cell[order], start[order], end[order]
            first = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
            count = np.diff(np.r_[first, len(cell)])
            at = np.unravel_index(cell[first], (n_rows, len(nodes)))
            arrays[0][at] = np.maximum.reduceat(start, first)
            arrays[1][at] = np.minimum.reduceat(start, first)
            arrays[2][at] = end[first + count - 1]
            arrays[3][at] = end[first]
            arrays[4][at] = (end[first + (count - 1) // 2] + end[first + count // 2]) / 2  # median
        return cls(nodes, *arrays)

    def pair(self, n: str, m: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (x in s since t0, y in ns) bounding theta_m - theta_n from below and above, and the
        end differences, for the collectives both nodes ran."""
        i, j = self.nodes.index(n), self.nodes.index(m)
        both = ~np.isnan(self.max_start[:, i]) & ~np.isnan(self.max_start[:, j])
        ms_m, me_m, mid_m = self.max_start[both, j], self.min_end[both, j], self.mid_end[both, j]
        lower = np.stack([ms_m / 1e9, ms_m - self.min_end[both, i]], axis=1)
        upper = np.stack([me_m / 1e9, me_m - self.max_start[both, i]], axis=1)
        ends = np.stack([mid_m / 1e9, mid_m - self.mid_end[both, i]], axis=1)
        return lower, upper, ends


def residuals(times: NodeTimes, fit: ClockFit, reference: str) -> dict[str, Any]:
    """After correcting `fit.node`, against the reference node: end skew percentiles and how many
    collectives still violate causality (end on one node before the start on the other)."""
    i, j = times.nodes.index(reference), times.nodes.index(fit.node)
    both = ~np.isnan(times.max_start[:, i]) & ~np.isnan(times.max_start[:, j])
    if fit.node == reference or not both.any():
        return {}

    def corrected(x: np.ndarray) -> np.ndarray:  # x: ns after t0 on the node's clock
        return x - (fit.offset_ns + fit.drift_ppm * 1e-6 * x)

    skew = corrected(times.mid_end[both, j]) - times.mid_end[both, i]
    bad = (corrected(times.min_end[both, j]) < times.max_start[both, i]) | (
        times.min_end[both, i] < corrected(times.max_start[both, j]))
    return {
        "collectives": int(both.sum()), "end_skew_median_us": round(float(np.median(skew)) / 1e3, 3),
        "end_skew_p05_us": round(float(np.percentile(skew, 5)) / 1e3, 3),
        "end_skew_p95_us": round(float(np.percentile(skew, 95)) / 1e3, 3),
        "causality_violations": int(bad.sum()),
    }


def solve(times: NodeTimes, reference: str, t0: int) -> tuple[dict[str, ClockFit], dict[tuple[str, str], PairFit], list[str]]:
    """Node clock fits relative to `reference` (t0: the time origin `times` was built with); nodes
    that share no collective with the rest are returned in the third value."""
    pairs: dict[tuple[str, str], PairFit] = {}
    nodes = times.nodes

    def fit(n: str, m: str) -> None:
        low, up, ends = times.pair(n, m)
        if len(ends):
            span = float(max(low[:, 0].max(), up[:, 0].max()) - min(low[:, 0].min(), up[:, 0].min()))
            pairs[(n, m)] = fit_pair(low, up, ends, span, f"{n}<->{m}")

    # Every node against the reference (a star); nodes that share nothing with it are linked through
    # the others, so the fits stay O(nodes) rather than O(nodes^2).
    for m in nodes:
        if m != reference:
            fit(reference, m)
    for m in nodes:
        if m != reference and (reference, m) not in pairs:
            for n in nodes:
                if n not in (reference, m) and (n, m) not in pairs and (m, n) not in pairs:
                    fit(n, m)
    connected = {reference}
    grew = True
    while grew:
        grew = False
        for n, m in pairs:
            if (n in connected) != (m in connected):
                connected |= {n, m}
                grew = True
    unknown = [n for n in nodes if n != reference and n in connected]
    index = {n: k for k, n in enumerate(unknown)}
    fits: dict[str, ClockFit] = {reference: ClockFit(reference, 0.0, 0.0, t0, "reference", 0, 0.0, reference=True)}
    if unknown:
        rows, rhs_a, rhs_b, weights = [], [], [], []
        for (n, m), p in pairs.items():
            if n not in connected:
                continue
            row = np.zeros(len(unknown))
            if m in index:
                row[index[m]] += 1
            if n in index:
                row[index[n]] -= 1
            rows.append(row)
            rhs_a.append(p.a)
            rhs_b.append(p.b)
            weights.append(1.0 / max(p.uncertainty_ns, 1.0))
        w = np.array(weights)[:, None]
        mat = np.array(rows) * w
        a = np.linalg.lstsq(mat, np.array(rhs_a) * w[:, 0], rcond=None)[0]
        b = np.linalg.lstsq(mat, np.array(rhs_b) * w[:, 0], rcond=None)[0]
        for node, k in index.items():
            used = [p for (n, m), p in pairs.items() if node in (n, m)]
            best = min(used, key=lambda p: p.uncertainty_ns)
            fits[node] = ClockFit(
                node, float(a[k]), float(b[k]) / 1e3, t0, best.method, sum(p.n for p in used), best.uncertainty_ns,
                warnings=[w for p in used for w in p.warnings],
            )
    missing = [n for n in nodes if n not in connected]
    return fits, pairs, missing
