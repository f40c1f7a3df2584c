"""Placing groups that share no collective: by their KV handoffs (NTP exchanges), else by the
launch's clock measurement, else not at all."""

from __future__ import annotations

import random

from magpie_trace.merge.align import ClockFit
from magpie_trace.merge.handoff import Handoff, place_groups

T0 = 1_000_000_000_000


def fits(nodes: dict[str, float], reference: str) -> dict[str, ClockFit]:
    """A group's own fits: each node's offset from the group's reference node (ns)."""
    return {node: ClockFit(node, offset, 0.0, T0, "reference" if node == reference else "ends", 10,
                           0.0 if node == reference else 1_000.0, reference=node == reference)
            for node, offset in nodes.items()}


def handoffs(theta: dict[str, float], pairs: list[tuple[str, str]], count: int) -> dict[str, list[Handoff]]:
    """`count` handoffs from each prefill node to each decode node, with random one-way delays;
    times as each node's clock (true + theta) reads them."""
    rng = random.Random(0)
    out: dict[str, list[Handoff]] = {node: [] for node in theta}
    for k in range(count):
        for prefill, decode in pairs:
            t1 = T0 + k * 10_000_000
            t2 = t1 + rng.randrange(20_000, 400_000)
            t3 = t2 + 4_000_000
            t4 = t3 + rng.randrange(20_000, 400_000)
            tid = f"{prefill}-{decode}-{k}"
            out[decode].append(Handoff("recv", tid, round(t1 + theta[decode]), round(t4 + theta[decode])))
            out[prefill].append(Handoff("send", tid, round(t2 + theta[prefill]), round(t3 + theta[prefill])))
    return out


def test_a_group_is_placed_by_its_handoffs_and_keeps_its_inner_offsets():
    theta = {"n0": 0.0, "n1": 1_500_000.0, "n2": -2_000_000.0, "n3": 700_000.0}
    group_fits = {"prefill": fits({"n0": 0.0, "n1": 1_500_000.0}, "n0"),
                  "decode": fits({"n2": 0.0, "n3": 2_700_000.0}, "n2")}
    seen = handoffs(theta, [(p, d) for p in ("n0", "n1") for d in ("n2", "n3")], 40)
    placed, unplaced = place_groups(group_fits, seen, "prefill")
    assert unplaced == {}
    for node, fit in placed.items():
        error = abs(fit.offset_ns - theta[node])
        assert error <= fit.uncertainty_ns, (node, error, fit.uncertainty_ns)
        assert error < 100_000  # ns
    assert placed["n3"].offset_ns - placed["n2"].offset_ns == 2_700_000.0  # rigid body
    assert (placed["n2"].method, placed["n3"].method) == ("kv_transfer", "kv_transfer+ends")
    assert placed["n0"].reference and not placed["n2"].reference


def test_without_handoffs_the_clock_probe_places_a_group_and_says_so():
    group_fits = {"prefill": fits({"n0": 0.0}, "n0"), "decode": fits({"n2": 0.0}, "n2")}
    probe = {("n0", "n2"): (-2_100_000.0, 700_000.0)}
    placed, unplaced = place_groups(group_fits, {}, "prefill", lambda n, m: probe.get((n, m)))
    assert unplaced == {}
    assert placed["n2"].offset_ns == -2_100_000.0 and placed["n2"].uncertainty_ns == 700_000.0
    assert placed["n2"].method == "probe" and "no KV handoff" in placed["n2"].warnings[0]
    _, unplaced = place_groups(group_fits, {}, "prefill", lambda n, m: None)
    assert list(unplaced) == ["decode"] and "shares no KV handoff" in unplaced["decode"]


def test_handoffs_that_contradict_each_other_place_nothing():
    """The decode group's own fit puts n3 250 ms off (its collectives matched wrongly, say): its
    handoffs and n2's cannot all hold. No offset is then vouched for (the envelope's middle would
    be 125 ms off with a zero uncertainty): the clock probe places the group, saying why; without a
    probe the group is left out, saying why."""
    theta = {"n0": 0.0, "n2": 250_000_000.0, "n3": 250_700_000.0}
    group_fits = {"prefill": fits({"n0": 0.0}, "n0"),
                  "decode": fits({"n2": 0.0, "n3": 700_000.0 - 250_000_000.0}, "n2")}
    seen = handoffs(theta, [("n0", "n2"), ("n0", "n3")], 20)
    probe = {("n0", "n2"): (250_100_000.0, 300_000.0)}
    placed, unplaced = place_groups(group_fits, seen, "prefill", lambda n, m: probe.get((n, m)))
    assert unplaced == {}
    fit = placed["n2"]
    assert fit.method == "probe" and abs(fit.offset_ns - theta["n2"]) <= fit.uncertainty_ns
    assert fit.warnings[0].startswith("group decode: its 40 KV handoffs with group prefill contradict "
                                      "each other by "), fit.warnings
    assert "its KV handoffs were not used; placed by the clock probe" in fit.warnings[1]

    _, unplaced = place_groups(group_fits, seen, "prefill", lambda n, m: None)
    assert list(unplaced) == ["decode"]
    assert "contradict each other" in unplaced["decode"] and "no clock probe placed it" in unplaced["decode"]
