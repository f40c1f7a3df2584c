"""The robust line through anchor differences that both the matching and the fit draw.

Theil-Sen (median of pairwise slopes) is equivariant: shifting or tilting every point by an offset
and a drift moves the line by exactly that, so the answer never depends on the size of the clock
error, and a few mismatched pairs do not tilt it.
"""

from __future__ import annotations

import numpy as np

MAX_DRIFT = 100_000.0  # ns per s (100 ppm): physical clocks do not drift more
PAIRS = 20_000  # slopes from at most this many deterministic point pairs
_MIN_DX_S = 1e-3  # points closer than 1 ms say little about a slope


def theil_sen(x_s: np.ndarray, y_ns: np.ndarray, fit_drift: bool, pairs: int = PAIRS) -> tuple[float, float]:
    """(ns at x = 0, slope in ns per s clamped to +-MAX_DRIFT) of y over x; slope 0 unless fit_drift.
    `pairs`: how many point pairs to draw slopes from (fewer where the line is drawn in a loop)."""
    if not fit_drift or len(x_s) < 2:
        return float(np.median(y_ns)), 0.0
    rng = np.random.default_rng(0)
    i = rng.integers(0, len(x_s), pairs)
    j = rng.integers(0, len(x_s), pairs)
    keep = np.abs(x_s[i] - x_s[j]) > _MIN_DX_S
    slopes = (y_ns[i][keep] - y_ns[j][keep]) / (x_s[i][keep] - x_s[j][keep])
    b = float(np.clip(np.median(slopes), -MAX_DRIFT, MAX_DRIFT)) if len(slopes) else 0.0
    return float(np.median(y_ns - b * x_s)), b
