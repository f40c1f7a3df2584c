"""The pair fit refuses rather than guesses, saying why: most anchors contradicting each other, a
drift beyond any clock's, bounds from one side only with no probe to close them. (The merge then
leaves the node on its probe, or unaligned: test_robust_matching, test_clock_domains.)"""

from __future__ import annotations

import numpy as np

from magpie_trace.merge.align import MAX_DRIFT, PairRows, fit_pair

X = np.linspace(0.0, 1.0, 30)  # s since t0: 30 instances over a second


def rows(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> PairRows:
    """Bounds lower <= theta <= upper at times x (both sides, as collectives give)."""
    return PairRows(np.c_[x, lower], np.c_[x, upper], np.zeros((0, 2)), len(x), ["collectives"])


def test_consistent_bounds_are_fitted():
    fit = fit_pair(rows(X, np.full(30, 4_000.0), np.full(30, 6_000.0)), None, "n0<->n1")
    assert fit.method == "envelope" and abs(fit.a - 5_000) <= 1 and fit.uncertainty_ns <= 1_000 + 1


def test_most_anchors_contradicting_each_other_is_refused():
    """Three equal clusters 1 ms apart (anchors of different runs, mismatched): one line agrees with
    a third of them only."""
    x = np.r_[X, X, X]
    centre = np.repeat([0.0, 1e6, 2e6], 30)
    fit = fit_pair(rows(x, centre - 500, centre + 500), None, "n0<->n1")
    assert fit.method == "refused"
    assert fit.warnings == ["n0<->n1: only 33% of 90 anchors agree with one offset (different runs, or windows "
                            "that barely overlap?)"]


def test_a_drift_beyond_any_clock_is_refused():
    """The bounds only fit lines steeper than 100 ppm (120 ppm +- 20 us over 1 s): the deepest line
    runs into the clamp."""
    slope = 1.2 * MAX_DRIFT
    fit = fit_pair(rows(X, slope * X - 20_000, slope * X + 20_000), None, "n0<->n1")
    assert fit.method == "refused" and "drift runs into its 100 ppm clamp" in fit.warnings[0]


def test_one_sided_bounds_without_a_probe_are_refused():
    """Receives only bound the offset from above; with nothing below it could be anything."""
    one_way = PairRows(np.zeros((0, 2)), np.c_[X, np.full(30, 9_000.0)], np.zeros((0, 2)), 30, ["send/recv"])
    fit = fit_pair(one_way, None, "n0<->n1")
    assert fit.method == "refused" and "from one side only" in fit.warnings[0] and "no clock probe" in fit.warnings[0]
    probe = np.array([[0.0, 7_000.0, 8_500.0], [1.0, 7_000.0, 8_500.0]])  # x, lower, upper
    closed = fit_pair(one_way, probe, "n0<->n1")
    assert closed.method == "envelope+probe" and closed.kinds == ["send/recv", "probe"]
    assert 7_000 <= closed.a <= 8_500
