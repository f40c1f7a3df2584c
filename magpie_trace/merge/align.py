"""Per-node clock offset and drift from matched communication and the clock probe.

Model: node m's clock reads c = t + theta_m(c), theta_m(c) = a_m + b_m * (c - t0), with the reference
node's theta = 0. Every matched instance bounds theta_m - theta_n for the nodes n, m it spans:

* a collective (or an undirected transfer) cannot end on any rank before it started on every rank:
  `max start_m - min end_n <= theta_m - theta_n <= min end_m - max start_n`;
* a transfer from n to m cannot be received before it was sent: `theta_m - theta_n <= recv end_m -
  send start_n` (an upper bound only);
* the clock probe (round trips with the head before and after the capture) bounds theta_m - theta_n
  by the two nodes' measured offsets, +- their uncertainties.

Per pair of nodes the fit is the line (offset + drift) deepest inside all of those bounds (maximum
margin, found exactly: the margin is concave in the drift); its uncertainty is the margin. Where
end times are synchronous (GPU collective kernels end within microseconds of each other), a robust
line through the end differences is tighter and is used when it respects the bounds ("ends").
Pairs are combined into node offsets by weighted least squares over the graph of pairs, so a node
is placed through others (node 3 meets node 2, which meets node 0); a node that meets none is placed
by its probe alone. A pair is refused, never guessed, when most of its anchors contradict the rest,
when its drift runs into the clamp, when its bounds are one-sided with no probe to close them, or
when it disagrees with the probe.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from magpie_trace.merge.anchors import Matched
from magpie_trace.merge.lines import MAX_DRIFT, theil_sen

MIN_ANCHORS = 20  # fewer matched instances than this between two nodes: warn
MIN_ENDS_DRIFT = 3  # synchronous ends (a few us apart) fit a drift from this many over 0.2 s
MIN_DRIFT_SPAN_NS = 200_000_000  # shorter than this: fit an offset only
MIN_AGREEING = 0.5  # fewer of a pair's anchors than this agreeing with one line: refused
SAME_NODE_SLACK_NS = 200_000  # files of one node may disagree this much (each process converts its clock)
_SEARCH_ITERS = 100


@dataclass
class ProbePoint:
    """One probe of a node: theta(node) - theta(head's controller) was offset_ns +- uncertainty_ns
    at controller clock t_ns."""

    t_ns: int
    offset_ns: float
    uncertainty_ns: float


@dataclass
class PairFit:
    a: float  # ns at t0
    b: float  # ns per second
    method: str
    n: int  # anchors used
    uncertainty_ns: float  # half-width the method vouches for
    lo: float  # the bounds' interval for theta at t0 (ns; -inf/inf: open)
    hi: float
    kinds: list[str] = field(default_factory=list)  # what placed it: collectives, send/recv, probe
    warnings: list[str] = field(default_factory=list)
    x_lo: float = 0.0  # the time its anchors span (s since t0): the estimate holds there
    x_hi: float = 0.0
    drift_fitted: bool = False
    drifts: tuple[float, float] = (-MAX_DRIFT, MAX_DRIFT)  # the drifts its bounds allow (ns per s)

    def widened(self, lo_s: float, hi_s: float) -> PairFit:
        """The same fit with its uncertainty good over [lo_s, hi_s]: beyond the anchors' span the
        error may grow as fast as its drift differs from any drift the bounds allow (up to
        MAX_DRIFT either way when they allow any). A fitted drift is only as good as the stretch it
        was fitted on: a load shorter than the window leaves the rest to extrapolation."""
        if self.method == "probe":  # probes before and after the capture: the interval holds throughout
            return self
        beyond = max(0.0, self.x_lo - lo_s, hi_s - self.x_hi)
        extra = max(self.b - self.drifts[0], self.drifts[1] - self.b, 0.0) * beyond
        if not extra:
            return self
        return replace(self, uncertainty_ns=self.uncertainty_ns + extra, lo=self.lo - extra, hi=self.hi + extra)


@dataclass
class ClockFit:
    """How to map one node's clock onto the reference clock."""

    node: str
    offset_ns: float  # theta at t0
    drift_ppm: float
    t0_ns: int
    method: str  # reference, envelope, envelope-trimmed, ends, probe, unaligned
    n_anchors: int
    uncertainty_ns: float
    reference: bool = False
    warnings: list[str] = field(default_factory=list)
    placed_by: list[str] = field(default_factory=list)
    interval_ns: tuple[float, float] = (0.0, 0.0)  # hard bounds on the offset at t0, from causality/probe
    unaligned: str | None = None  # why the node could not be placed (it stays on its own clock)

    @classmethod
    def left_alone(cls, node: str, t0_ns: int, why: str) -> "ClockFit":
        """A node that cannot be placed: it stays on its own clock, and says why."""
        return cls(node, 0.0, 0.0, t0_ns, "unaligned", 0, float("inf"),
                   warnings=[f"{node}: left on its own clock: {why}"], unaligned=why,
                   interval_ns=(-np.inf, np.inf))

    @property
    def aligned(self) -> bool:
        return self.unaligned is None

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


def _band(xl: np.ndarray, yl: np.ndarray, xu: np.ndarray, yu: np.ndarray, slope: float) -> tuple[float, float]:
    """The offsets at t0 the bounds allow a line of this slope: (lowest, highest)."""
    return float(np.max(yl - slope * xl)), float(np.min(yu - slope * xu))


def feasible_drifts(xl: np.ndarray, yl: np.ndarray, xu: np.ndarray, yu: np.ndarray,
                    b: float) -> tuple[float, float] | None:
    """The interval of drifts (within +-MAX_DRIFT) some line the bounds allow has, around the
    feasible drift b (the set is an interval: the margin is concave); None if b is not feasible."""

    def ok(slope: float) -> bool:
        low, high = _band(xl, yl, xu, yu, slope)
        return high >= low

    if not ok(b):
        return None
    edges = []
    for limit in (-MAX_DRIFT, MAX_DRIFT):
        inside, outside = b, limit
        if ok(limit):
            edges.append(limit)
            continue
        for _ in range(40):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if ok(mid) else (inside, mid)
        edges.append(inside)
    return edges[0], edges[1]


def feasible_spread(xl: np.ndarray, yl: np.ndarray, xu: np.ndarray, yu: np.ndarray, a: float, b: float,
                    x_ends: tuple[float, float], drifts: tuple[float, float] | None) -> float:
    """How far any line the bounds allow (drift within `drifts`, from feasible_drifts) strays from
    a + b*x at the ends of x_ends: the honest uncertainty of the envelope's line, which is only the
    deepest of them."""
    if drifts is None:
        return 0.0
    worst = 0.0
    for slope in np.linspace(drifts[0], drifts[1], 33):
        low, high = _band(xl, yl, xu, yu, float(slope))
        for x in x_ends:
            worst = max(worst, abs(low + slope * x - (a + b * x)), abs(high + slope * x - (a + b * x)))
    return float(worst)


def _stab_point(lower: np.ndarray, upper: np.ndarray) -> tuple[float, int]:
    """Middle of the region covered by the most intervals, and how many cover it."""
    pts = np.concatenate([lower, upper])
    step = np.concatenate([np.ones(len(lower)), -np.ones(len(upper))])
    order = np.lexsort((-step, pts))
    depth = np.cumsum(step[order])
    k = int(np.argmax(depth))
    return float((pts[order][k] + pts[order][min(k + 1, len(pts) - 1)]) / 2), int(depth[k])


@dataclass
class PairRows:
    """Bounds on theta_m - theta_n: rows (x in s since t0, y in ns), and the end differences."""

    lower: np.ndarray  # (k, 2)
    upper: np.ndarray
    ends: np.ndarray
    n: int  # instances
    kinds: list[str]


def _refused(reason: str, n: int, kinds: list[str]) -> PairFit:
    return PairFit(0.0, 0.0, "refused", n, float("inf"), -np.inf, np.inf, kinds, [reason])


def fit_pair(rows: PairRows, probe: np.ndarray | None, label: str) -> PairFit:
    """Fit theta_m - theta_n from the anchors' rows, closed where they are one-sided by the probe
    rows (x, lower, upper), or from the probe alone."""
    xl, yl, xu, yu = rows.lower[:, 0], rows.lower[:, 1], rows.upper[:, 0], rows.upper[:, 1]
    xe, ye = rows.ends[:, 0], rows.ends[:, 1]
    kinds = list(rows.kinds)
    n = rows.n
    warnings: list[str] = []
    xs = np.r_[xl, xu]
    span_s = float(np.ptp(xs)) if len(xs) else 0.0
    fit_drift = len(yl) >= MIN_ANCHORS and len(yu) >= MIN_ANCHORS and span_s * 1e9 >= MIN_DRIFT_SPAN_NS
    if n and n < MIN_ANCHORS:
        warnings.append(f"{label}: only {n} matched anchors (< {MIN_ANCHORS}); offset is not trustworthy")
    if probe is not None and len(probe):
        px, plo, phi = probe[:, 0], probe[:, 1], probe[:, 2]
    else:
        px = plo = phi = np.zeros(0)
    method = "envelope"
    if len(yl) and len(yu):
        a_v, b_v, margin = envelope(xl, yl, xu, yu, fit_drift)
        if margin < 0:  # mismatched anchors: keep those that agree with the offset most agree with
            point, _ = _stab_point(yl, yu)
            keep_l, keep_u = yl <= point + 1.0, yu >= point - 1.0
            agreeing = min(keep_l.mean(), keep_u.mean())
            if agreeing < MIN_AGREEING:
                return _refused(f"{label}: only {agreeing:.0%} of {n} anchors agree with one offset "
                                "(different runs, or windows that barely overlap?)", n, kinds)
            warnings.append(f"{label}: {int((~keep_l).sum() + (~keep_u).sum())} of {len(yl) + len(yu)} bounds "
                            "contradict the others; left out (mismatched anchors?)")
            xl, yl, xu, yu = xl[keep_l], yl[keep_l], xu[keep_u], yu[keep_u]
            a_v, b_v, margin = envelope(xl, yl, xu, yu, fit_drift and min(len(yl), len(yu)) >= MIN_ANCHORS)
            method = "envelope-trimmed"
            if margin < 0:
                return _refused(f"{label}: the anchors' bounds contradict each other even after trimming", n, kinds)
    elif len(px):  # one-sided or no anchor bounds: the probe closes them
        a_v, b_v, margin = envelope(np.r_[xl, px], np.r_[yl, plo], np.r_[xu, px], np.r_[yu, phi], False)
        method = "probe" if not n else "envelope+probe"
        kinds.append("probe")
        if margin < 0:
            return _refused(f"{label}: the send/recv bounds contradict the clock probe by "
                            f"{-2 * margin / 1e3:.0f} us", n, kinds)
        if not n:  # each probe's interval holds the truth at its time; the line may sit anywhere in it
            margin = float(np.max(np.maximum(a_v - plo, phi - a_v)))
    else:
        return _refused(f"{label}: its anchors bound the offset from one side only (send/recv one way) and "
                        "there is no clock probe to close it", n, kinds)
    if fit_drift and abs(b_v) >= 0.99 * MAX_DRIFT:
        return _refused(f"{label}: the drift runs into its {MAX_DRIFT / 1e3:.0f} ppm clamp (anchors from "
                        "different runs?)", n, kinds)
    lo, hi = a_v - margin, a_v + margin
    uncertainty = max(margin, 0.0)
    drifts: tuple[float, float] = (-MAX_DRIFT, MAX_DRIFT)
    if method.startswith("envelope") and len(yl) and len(yu) and len(xs):
        ends = (float(np.min(xs)), float(np.max(xs)))
        allowed = feasible_drifts(xl, yl, xu, yu, b_v)
        drifts = allowed or drifts
        uncertainty = max(uncertainty, feasible_spread(xl, yl, xu, yu, a_v, b_v, ends, allowed))
        lo, hi = a_v - uncertainty, a_v + uncertainty
    if method == "envelope-trimmed" and len(ye):
        # Some bounds were left out as mismatched; the margin of the rest would vouch only for them.
        # The spread of every candidate's end difference around the line is the honest width.
        resid = ye - (a_v + b_v * xe)
        uncertainty = max(uncertainty, float(np.percentile(np.abs(resid), 95)))
        lo, hi = a_v - uncertainty, a_v + uncertainty
    span = np.r_[xs, px] if method in ("probe", "envelope+probe") else xs
    fit = PairFit(float(a_v), float(b_v), method, n, float(uncertainty), float(lo), float(hi), kinds, warnings,
                  float(np.min(span)), float(np.max(span)), bool(fit_drift), drifts)
    if len(ye) and len(yl) and len(yu):
        ends_drift = len(ye) >= MIN_ENDS_DRIFT and span_s * 1e9 >= MIN_DRIFT_SPAN_NS
        a_e, b_e = theil_sen(xe, ye, ends_drift)
        resid = ye - (a_e + b_e * xe)
        spread = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
        inside = np.mean(np.r_[a_e + b_e * xl >= yl - spread, a_e + b_e * xu <= yu + spread])
        if spread < margin and inside >= 0.99:
            fit = PairFit(a_e, b_e, "ends", n, spread, lo, hi, kinds, warnings, fit.x_lo, fit.x_hi, ends_drift,
                          drifts)
    if len(px) and method != "probe":
        at = fit.a + fit.b * px
        gap = float(np.max(np.r_[plo - at - fit.uncertainty_ns, at - phi - fit.uncertainty_ns]))
        if gap > 0:
            return _refused(f"{label}: the anchors place it {gap / 1e3:.0f} us outside the clock probe's "
                            "interval (mismatched anchors, or a bad probe?)", n, kinds)
    return fit


@dataclass
class NodeTimes:
    """Per instance (rows) and node (columns), own clock, ns after t0 (float64 keeps every ns; NaN
    where the node has no such member): the latest start every end must follow (`must_start`:
    collective members and senders), the earliest end that must follow every start (`must_end`:
    collective members and receivers), the median end, and the earliest start / latest end of the
    node's own members (for the same-node check). `sync` marks instances whose ends are synchronous
    (collectives and undirected transfers, not directed ones)."""

    nodes: list[str]
    must_start: np.ndarray
    must_end: np.ndarray
    mid_end: np.ndarray
    p2p: np.ndarray
    sync: np.ndarray
    own_gap: np.ndarray  # max start - min end among the node's own members (> 0: they cannot be one clock)

    @classmethod
    def build(cls, matched: Matched, node_of: dict[int, str], nodes: list[str], t0: int) -> NodeTimes:
        column = {n: k for k, n in enumerate(nodes)}
        node_col = np.zeros(max(node_of, default=-1) + 1, dtype=np.int64)
        for f, node in node_of.items():
            node_col[f] = column[node]
        n_rows = len(matched.streams)
        shape = (n_rows, len(nodes))
        must_start, must_end, mid_end, own_gap = (np.full(shape, np.nan) for _ in range(4))
        sync = np.ones(n_rows, bool)
        if len(matched.file):
            cell = matched.collective * len(nodes) + node_col[matched.file]
            start = (matched.start - t0).astype(np.float64)
            end = (matched.end - t0).astype(np.float64)
            role = matched.role
            flat = n_rows * len(nodes)
            ms = np.full(flat, -np.inf)
            np.maximum.at(ms, cell[role != 2], start[role != 2])
            me = np.full(flat, np.inf)
            np.minimum.at(me, cell[role != 1], end[role != 1])
            anyst = np.full(flat, -np.inf)
            np.maximum.at(anyst, cell, start)
            anyen = np.full(flat, np.inf)
            np.minimum.at(anyen, cell, end)
            order = np.lexsort((end, cell))
            c, e = cell[order], end[order]
            first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
            count = np.diff(np.r_[first, len(c)])
            med = np.full(flat, np.nan)
            med[c[first]] = (e[first + (count - 1) // 2] + e[first + count // 2]) / 2
            present = np.zeros(flat, bool)
            present[cell] = True
            must_start = np.where(np.isfinite(ms), ms, np.nan).reshape(shape)
            must_end = np.where(np.isfinite(me), me, np.nan).reshape(shape)
            mid_end = med.reshape(shape)
            own_gap = np.where(present, anyst - anyen, np.nan).reshape(shape)
            own_gap = np.where((np.bincount(cell, minlength=flat) > 1).reshape(shape), own_gap, np.nan)
            directed = np.zeros(n_rows, bool)
            directed[matched.collective[role != 0]] = True
            sync = ~directed
        return cls(nodes, must_start, must_end, mid_end, matched.p2p.copy() if len(matched.p2p) else np.zeros(n_rows, bool),
                   sync, own_gap)

    def pair(self, n: str, m: str, shift_m: float = 0.0) -> PairRows:
        """Rows (x in s since t0 on the reference clock, given node m's offset estimate shift_m; y in
        ns) bounding theta_m - theta_n from below and above, and the end differences of synchronous
        instances, for the instances both nodes took part in."""
        i, j = self.nodes.index(n), self.nodes.index(m)
        up = ~np.isnan(self.must_end[:, j]) & ~np.isnan(self.must_start[:, i])
        low = ~np.isnan(self.must_start[:, j]) & ~np.isnan(self.must_end[:, i])
        both = self.sync & ~np.isnan(self.mid_end[:, i]) & ~np.isnan(self.mid_end[:, j])
        shared = (up | low | both)
        upper = np.stack([(self.must_end[up, j] - shift_m) / 1e9, self.must_end[up, j] - self.must_start[up, i]], axis=1)
        lower = np.stack([(self.must_start[low, j] - shift_m) / 1e9, self.must_start[low, j] - self.must_end[low, i]], axis=1)
        ends = np.stack([(self.mid_end[both, j] - shift_m) / 1e9, self.mid_end[both, j] - self.mid_end[both, i]], axis=1)
        kinds = []
        if (shared & ~self.p2p).any():
            kinds.append("collectives")
        if (shared & self.p2p).any():
            kinds.append("send/recv")
        return PairRows(lower, upper, ends, int(shared.sum()), kinds)

    def same_node_conflict(self, node: str) -> tuple[int, int, float]:
        """(instances with several members on this node, how many of them no single clock explains,
        their median disagreement in ns)."""
        gap = self.own_gap[:, self.nodes.index(node)]
        gap = gap[~np.isnan(gap)]
        bad = gap[gap > SAME_NODE_SLACK_NS]
        return len(gap), len(bad), float(np.median(bad)) if len(bad) else 0.0


def two_clocks(times: NodeTimes) -> dict[str, str]:
    """Nodes whose files no single clock explains (their shared anchors violate causality between
    them), with the reason: such a node cannot be aligned, nor be the reference."""
    out = {}
    for node in times.nodes:
        total, bad, median = times.same_node_conflict(node)
        if bad and bad >= max(3, 0.1 * total):
            out[node] = (f"its files disagree with each other by {median / 1e6:.3f} ms in {bad} of {total} "
                         "shared anchors: two clocks under one node name (files of different hosts?)")
    return out


def residuals(times: NodeTimes, fit: ClockFit, reference: str) -> dict[str, Any]:
    """After correcting `fit.node`, against the reference node: end skew percentiles of synchronous
    instances and how many instances still violate causality."""
    i, j = times.nodes.index(reference), times.nodes.index(fit.node)
    if fit.node == reference:
        return {}

    def corrected(x: np.ndarray) -> np.ndarray:  # x: ns after t0 on the node's clock
        return x - (fit.offset_ns + fit.drift_ppm * 1e-6 * x)

    both = times.sync & ~np.isnan(times.mid_end[:, i]) & ~np.isnan(times.mid_end[:, j])
    up = ~np.isnan(times.must_end[:, j]) & ~np.isnan(times.must_start[:, i])
    low = ~np.isnan(times.must_start[:, j]) & ~np.isnan(times.must_end[:, i])
    if not (both.any() or up.any() or low.any()):
        return {}
    bad = int(np.sum(corrected(times.must_end[up, j]) < times.must_start[up, i])
              + np.sum(times.must_end[low, i] < corrected(times.must_start[low, j])))
    out: dict[str, Any] = {"collectives": int((both | up | low).sum()), "causality_violations": bad}
    if both.any():
        skew = corrected(times.mid_end[both, j]) - times.mid_end[both, i]
        out.update({"end_skew_median_us": round(float(np.median(skew)) / 1e3, 3),
                    "end_skew_p05_us": round(float(np.percentile(skew, 5)) / 1e3, 3),
                    "end_skew_p95_us": round(float(np.percentile(skew, 95)) / 1e3, 3)})
    return out


def probe_rows(probes: dict[str, list[ProbePoint]], n: str, m: str, t0: int, reference: str) -> np.ndarray | None:
    """Probe bounds on theta_m - theta_n, rows (x in s since t0 on the reference clock, lower,
    upper), from probes of both nodes taken together (before and after the capture)."""
    pn, pm = probes.get(n), probes.get(m)
    if not pn or not pm:
        return None
    pr = probes.get(reference) or [ProbePoint(p.t_ns, 0.0, 0.0) for p in pn]
    rows = []
    for a, b, r in zip(*(sorted(p, key=lambda q: q.t_ns) for p in (pn, pm, pr))):
        mid = b.offset_ns - a.offset_ns
        half = a.uncertainty_ns + b.uncertainty_ns
        rows.append(((b.t_ns + r.offset_ns - t0) / 1e9, mid - half, mid + half))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def solve(times: NodeTimes, reference: str, t0: int, probes: dict[str, list[ProbePoint]],
          all_nodes: list[str], horizon_s: tuple[float, float]) -> tuple[dict[str, ClockFit], list[str]]:
    """Node clock fits relative to `reference` (t0: the time origin `times` was built with), for every
    node of `all_nodes`, with uncertainties good over horizon_s (s since t0: the traces' extent);
    the second value lists warnings about refused pairs.

    Fitted twice: drift is a slope in time, and a node's clock reading is seconds away from the same
    instant on the reference when its offset is; the second pass puts every node's rows on the
    reference's time axis using the first pass's offsets."""
    fits, notes = _solve(times, reference, t0, probes, all_nodes, horizon_s, {})
    shifts = {n: f.offset_ns for n, f in fits.items() if f.aligned}
    if any(abs(v) > 1e6 for v in shifts.values()):  # more than 1 ms: worth it
        fits, notes = _solve(times, reference, t0, probes, all_nodes, horizon_s, shifts)
    return fits, notes


def _solve(times: NodeTimes, reference: str, t0: int, probes: dict[str, list[ProbePoint]], all_nodes: list[str],
           horizon_s: tuple[float, float], shifts: dict[str, float]) -> tuple[dict[str, ClockFit], list[str]]:
    nodes = times.nodes
    notes: list[str] = []
    edges: dict[tuple[str, str], PairFit] = {}
    conflict = two_clocks(times)
    for k, n in enumerate(nodes):
        for m in nodes[k + 1:]:
            if n in conflict or m in conflict:
                continue
            rows = times.pair(n, m, shifts.get(m, 0.0))
            if not rows.n:
                continue
            fit = fit_pair(rows, probe_rows(probes, n, m, t0, reference), f"{n}<->{m}")
            if fit.method == "refused":
                notes.extend(fit.warnings)
            else:
                edges[(n, m)] = fit.widened(*horizon_s)
    # Every node reachable through anchor edges is placed by them; the probe places the rest.
    reach = _reachable(reference, edges)
    for m in all_nodes:
        if m not in reach and m != reference and m not in conflict:
            rows = probe_rows(probes, reference, m, t0, reference)
            if rows is not None:
                empty = np.zeros((0, 2))
                edges[(reference, m)] = fit_pair(PairRows(empty, empty, empty, 0, []), rows, f"{reference}<->{m}")
    reach = _reachable(reference, edges)
    placed = [n for n in all_nodes if n in reach and n != reference]
    fits = {reference: ClockFit(reference, 0.0, 0.0, t0, "reference", 0, 0.0, reference=True,
                                placed_by=["reference"])}
    if reference in conflict:  # the others keep only what the probe says of its clock
        fits[reference].unaligned, fits[reference].method = conflict[reference], "unaligned"
        fits[reference].warnings.append(f"{reference}: left on its own clock: {conflict[reference]}")
    if placed:
        index = {n: k for k, n in enumerate(placed)}
        used = [(n, m, p) for (n, m), p in edges.items() if n in reach]
        mat = np.zeros((len(used), len(placed)))
        for r, (n, m, _p) in enumerate(used):
            if m in index:
                mat[r, index[m]] += 1
            if n in index:
                mat[r, index[n]] -= 1
        w = np.array([1.0 / max(p.uncertainty_ns, 1.0) for _n, _m, p in used])
        a = np.linalg.lstsq(mat * w[:, None], np.array([p.a for *_x, p in used]) * w, rcond=None)[0]
        b = np.linalg.lstsq(mat * w[:, None], np.array([p.b for *_x, p in used]) * w, rcond=None)[0]
        bound = _path_uncertainty(reference, edges)
        for node, k in index.items():
            mine = [p for n, m, p in used if node in (n, m)]
            best = min(mine, key=lambda p: p.uncertainty_ns)
            kinds = list(dict.fromkeys(kind for p in mine for kind in p.kinds))
            u, lo, hi = bound[node]
            offset = float(a[k]) - float(b[k]) * shifts.get(node, 0.0) / 1e9  # back to the node's own clock
            fits[node] = ClockFit(
                node, offset, float(b[k]) / 1e3, t0, best.method, sum(p.n for p in mine), u,
                warnings=[w for p in mine for w in p.warnings], placed_by=kinds,
                interval_ns=(offset - lo, offset + hi),
            )
    for node in all_nodes:
        if node not in fits:
            why = conflict.get(node) or ("no anchor ties it to the reference (none shared, or none matched or "
                                         "fitted: see the warnings) and it has no clock probe"
                                         if node in nodes or node not in probes else "no anchors")
            fits[node] = ClockFit.left_alone(node, t0, why)
    return fits, notes


def _reachable(start: str, edges: dict[tuple[str, str], PairFit]) -> set[str]:
    seen = {start}
    grew = True
    while grew:
        grew = False
        for n, m in edges:
            if (n in seen) != (m in seen):
                seen |= {n, m}
                grew = True
    return seen


def _path_uncertainty(start: str, edges: dict[tuple[str, str], PairFit]) -> dict[str, tuple[float, float, float]]:
    """Per node: the smallest sum of pair uncertainties over a path from `start`, and the hard
    interval's half-widths below and above along that path (errors add up along a chain)."""
    graph: dict[str, list[tuple[str, PairFit, int]]] = {}
    for (n, m), p in edges.items():
        graph.setdefault(n, []).append((m, p, 1))
        graph.setdefault(m, []).append((n, p, -1))
    best: dict[str, tuple[float, float, float]] = {start: (0.0, 0.0, 0.0)}
    heap = [(0.0, start)]
    while heap:
        u, node = heapq.heappop(heap)
        if u > best[node][0]:
            continue
        _, below, above = best[node]
        for nxt, p, sign in graph.get(node, []):
            lo, hi = p.a - p.lo, p.hi - p.a  # the pair's interval around its estimate
            cand = (u + p.uncertainty_ns, below + (lo if sign > 0 else hi), above + (hi if sign > 0 else lo))
            if nxt not in best or cand[0] < best[nxt][0]:
                best[nxt] = cand
                heapq.heappush(heap, (cand[0], nxt))
    return best
