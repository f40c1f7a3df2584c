"""The clock probe's estimate from timestamped round trips: the least-delay ones bound the offset, so
queueing delay (one-sided, heavy) on most round trips neither biases it nor escapes its uncertainty."""

from __future__ import annotations

import random

import pytest

from magpie_trace.clock_probe import BEST, CLOCK_READ_ERROR_NS, estimate
from magpie_trace.errors import MagpieError

THETA_NS = 250_000_000  # the node's clock minus ours


def _round_trip(true_ns: int, out_ns: int, back_ns: int) -> tuple[int, int, int, int]:
    """(t1 node send, t2 our receive, t3 our reply, t4 node receive), each read on its own clock."""
    t2 = true_ns + out_ns
    t3 = t2 + 5_000
    return true_ns + THETA_NS, t2, t3, t3 + back_ns + THETA_NS


def test_least_delay_round_trips_bound_the_offset_despite_one_sided_queueing():
    rng = random.Random(3)
    samples = [_round_trip(10**18 + k * 1_000_000, 20_000 + rng.randrange(8_000), 20_000 + rng.randrange(8_000))
               for k in range(40)]
    # 160 more whose request queued up to 5 ms on the way out: their midpoints lie up to 2.5 ms off.
    samples += [_round_trip(10**18 + k * 1_000_000, 20_000 + rng.randrange(5_000_000), 20_000)
                for k in range(40, 200)]
    found = estimate(samples, "before")
    print(f"offset error {found.offset_ns - THETA_NS:+.0f} ns, +-{found.uncertainty_ns:.0f} ns, "
          f"min rtt {found.rtt_min_ns} ns")
    assert found.samples == 200 and found.when == "before"
    assert 40_000 <= found.rtt_min_ns <= 48_000
    # The truth lies in the round trips' common interval itself, before the clock-read margin.
    assert abs(found.offset_ns - THETA_NS) <= found.uncertainty_ns - CLOCK_READ_ERROR_NS
    assert found.uncertainty_ns - CLOCK_READ_ERROR_NS <= found.rtt_min_ns / 2


def test_round_trips_that_went_backwards_are_skipped_and_none_is_an_error():
    good = _round_trip(10**18, 30_000, 30_000)
    backwards = (good[0], good[1], good[2], good[0] - 1)  # received before it was sent: not a round trip
    assert estimate([good, backwards] * BEST, "after").samples == BEST
    with pytest.raises(MagpieError, match="no complete round trip"):
        estimate([backwards], "after")
