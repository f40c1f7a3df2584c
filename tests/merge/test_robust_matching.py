"""Alignment that is right or says it cannot be, on real traces made imperfect as profilers make them.

The real pairs were recorded on one machine (one clock), so after any shift we inject the truth is
known. Every case must either recover it within the stated uncertainty or refuse with a reason;
never a wrong offset with a small uncertainty.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from magpie_trace.merge import MergeOptions, merge
from tests.merge.traces import load, save, shift, span, truth, vllm_rank

COMM = ("gloo:", "nccl", "c10d::")


def _sampled(doc: dict, keep: float, seed: int) -> dict:
    """A copy with a fraction 1 - keep of its timed events dropped at random (metadata kept)."""
    rng = random.Random(seed)
    events = [e for e in doc["traceEvents"] if e.get("ph") == "M" or rng.random() < keep]
    return dict(doc, traceEvents=events)


def _merge_pair(tmp_path: Path, ref: dict, other: dict, name: str = "node1-TP1", manifest: dict | None = None):
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    save(ref, inp / "node0-TP0.trace.json.gz")
    save(other, inp / f"{name}.trace.json.gz")
    if manifest is not None:
        import orjson

        (inp / "manifest.json").write_bytes(orjson.dumps(manifest))
    return merge(inp, tmp_path / "out", MergeOptions(outputs=("alignment",)))


def _error(node: dict, doc: dict, offset_ns: int, drift_ppm: float, t_ref: int) -> float:
    lo, hi = span(doc)
    clock = np.linspace(lo, hi, 200)
    recovered = node["offset_ns"] + node["drift_ppm"] * 1e-6 * (clock - node["t0_ns"])
    return float(np.abs(recovered - truth(offset_ns, drift_ppm, t_ref, clock)).max())


def _right_or_refused(node: dict, doc: dict, offset_ns: int, drift_ppm: float, t_ref: int) -> str:
    if not node["aligned"]:
        assert node["unaligned"], node
        return f"refused: {node['unaligned']}"
    error = _error(node, doc, offset_ns, drift_ppm, t_ref)
    assert error <= node["uncertainty_us"] * 1e3, f"wrong by {error / 1e3:.1f} us, claims +-{node['uncertainty_us']}"
    return f"recovered within {error / 1e3:.2f} us (+-{node['uncertainty_us']} us)"


@pytest.mark.parametrize("keep0,keep1", [(0.7, 0.4), (0.5, 0.6), (0.4, 0.4)])
def test_sampled_pair_on_one_clock_is_placed_at_zero(tmp_path, vllm_pair, keep0, keep1):
    """30-60% of every rank's events dropped at random, independently: still within 0.5 ms of the
    truth (zero), and the stated uncertainty covers it."""
    ref, other = _sampled(vllm_pair[0], keep0, 1), _sampled(vllm_pair[1], keep1, 2)
    node = _merge_pair(tmp_path, ref, other).nodes["node1"]
    assert node["aligned"], node
    error = _error(node, other, 0, 0.0, 0)
    print(f"keep {keep0}/{keep1}: {node['method']}, {node['n_anchors']} anchors, error {error / 1e3:.1f} us, "
          f"+-{node['uncertainty_us']} us")
    assert error <= 500_000
    assert error <= node["uncertainty_us"] * 1e3


OFFSETS_NS = (-2_000_000_000, -41_200_000, 7_300_000, 50_000_000, 51_400_000, 2_000_000_000)


def _equivariance(tmp_path: Path, ref: dict, other: dict, offset_ns: int, drift_ppm: float) -> tuple[float, dict]:
    """(worst distance between the recovery of the shifted pair and the unshifted recovery moved by
    the shift, over the trace; the shifted node's report)."""
    (tmp_path / "a").mkdir(parents=True)
    base = _merge_pair(tmp_path / "a", ref, other).nodes["node1"]
    t_ref = span(other)[0]
    (tmp_path / "b").mkdir()
    moved = shift(other, offset_ns, drift_ppm, t_ref)
    node = _merge_pair(tmp_path / "b", ref, moved).nodes["node1"]
    assert base["aligned"] and node["aligned"], (base, node)
    clock = np.linspace(*span(moved), 200)
    injected = truth(offset_ns, drift_ppm, t_ref, clock)
    recovered = node["offset_ns"] + node["drift_ppm"] * 1e-6 * (clock - node["t0_ns"])
    expected = injected + base["offset_ns"] + base["drift_ppm"] * 1e-6 * (clock - injected - base["t0_ns"])
    return float(np.abs(recovered - expected).max()), node


@pytest.mark.parametrize("offset_ns", OFFSETS_NS)
def test_any_offset_gives_the_same_answer_on_a_sampled_pair(tmp_path, nccl_pair, offset_ns):
    """Equivariance: the sampled GPU pair shifted by -2 s..+2 s comes back as the unshifted result
    moved by exactly the shift (within 5 us): nothing prefers small offsets."""
    ref, other = _sampled(nccl_pair[0], 0.6, 3), _sampled(nccl_pair[1], 0.55, 4)
    distance, _ = _equivariance(tmp_path, ref, other, offset_ns, 0.0)
    assert distance <= 5_000


@pytest.mark.parametrize("drift_ppm", (5.0, 13.0, 20.0))
@pytest.mark.parametrize("offset_ns", (-2_000_000_000, 51_400_000, 2_000_000_000))
def test_any_offset_and_drift_give_the_same_answer(tmp_path, nccl_pair, offset_ns, drift_ppm):
    """With drift too (0-20 ppm): the GPU pair's 21 kernels over 0.7 s, and the sampled pair's ~5
    common ones, come back as the unshifted result moved by the injected error, within 5 us: a
    drift is fitted from as few as 3 synchronous ends over 0.2 s, never assumed to be zero, and the
    stated uncertainty still covers the truth over the whole trace."""
    distance, _ = _equivariance(tmp_path / "full", *nccl_pair, offset_ns, drift_ppm)
    assert distance <= 5_000
    ref, other = _sampled(nccl_pair[0], 0.6, 3), _sampled(nccl_pair[1], 0.55, 4)
    distance, node = _equivariance(tmp_path / "sampled", ref, other, offset_ns, drift_ppm)
    moved = shift(other, offset_ns, drift_ppm, span(other)[0])
    error = _error(node, moved, offset_ns, drift_ppm, span(other)[0])
    print(f"sampled GPU pair, {offset_ns / 1e6:+.1f} ms {drift_ppm} ppm: {node['method']} {node['n_anchors']} anchors, "
          f"{distance / 1e3:.2f} us from the unshifted result, error {error / 1e3:.1f} us (+-{node['uncertainty_us']} us)")
    assert distance <= 5_000 and error <= node["uncertainty_us"] * 1e3


def test_a_load_shorter_than_the_window_still_places_the_node(tmp_path, vllm_pair):
    """The load ends after the first 15% of the capture (0.16 s of collectives), the window runs on
    to 1.1 s, node 1 drifting 20 ppm: still placed by its collectives, saying so and how many, and
    the stated uncertainty (too short a stretch to fit a drift: widened by the 100 ppm bound beyond
    the anchors) covers the error over the whole window."""
    def load_ends_early(doc: dict) -> dict:
        lo, hi = span(doc)
        cut = lo + (hi - lo) * 0.15
        return dict(doc, traceEvents=[e for e in doc["traceEvents"] if not e.get("name", "").startswith(COMM)
                                      or doc["baseTimeNanoseconds"] + e["ts"] * 1000 <= cut])
    ref, other = (load_ends_early(doc) for doc in vllm_pair)
    t_ref = span(other)[0]
    moved = shift(other, 3_000_000, 20.0, t_ref)
    node = _merge_pair(tmp_path, ref, moved).nodes["node1"]
    error = _error(node, moved, 3_000_000, 20.0, t_ref)
    print(f"short load: {node['method']} {node['placed_by']} {node['n_anchors']} anchors, error {error / 1e3:.1f} us, "
          f"+-{node['uncertainty_us']} us")
    assert node["aligned"] and node["placed_by"] == ["collectives"] and 0 < node["n_anchors"] < 200, node
    assert error <= node["uncertainty_us"] * 1e3


def test_real_sampled_sendrecv_pair_at_zero_and_at_any_offset(tmp_path, sendrecv_pair):
    """A real NCCL pair (both ranks recorded, one clock, sampled as HTA keeps it): its SendRecv
    kernels place rank 1 within 0.5 ms of zero and covered; shifted by -2 s..+2 s it comes back as
    the unshifted result moved by the shift, within 5 us."""
    ref, other = sendrecv_pair
    node = _merge_pair(tmp_path, ref, other).nodes["node1"]
    error = _error(node, other, 0, 0.0, 0)
    print(f"real SendRecv pair: {node['method']} {node['placed_by']} {node['n_anchors']} anchors, error "
          f"{error / 1e3:.2f} us, +-{node['uncertainty_us']} us")
    assert node["placed_by"] == ["send/recv"] and error <= 500_000 and error <= node["uncertainty_us"] * 1e3
    for k, offset_ns in enumerate(OFFSETS_NS):
        distance, moved = _equivariance(tmp_path / str(k), ref, other, offset_ns, 0.0)
        assert distance <= 5_000, (offset_ns, distance)


@pytest.mark.parametrize("offset_ns", (-2_000_000_000, 2_000_000_000))
def test_real_sampled_sendrecv_pair_with_drift_is_covered(tmp_path, sendrecv_pair, offset_ns):
    """With 20 ppm too: its 3 pairable kernels fit the drift (0.2 s apart), so the recovery is the
    unshifted result moved by the injected error within 5 us, and the stated uncertainty covers the
    truth over the whole trace."""
    ref, other = sendrecv_pair
    t_ref = span(other)[0]
    distance, node = _equivariance(tmp_path, ref, other, offset_ns, 20.0)
    moved = shift(other, offset_ns, 20.0, t_ref)
    assert distance <= 5_000, distance
    assert node["aligned"] and _error(node, moved, offset_ns, 20.0, t_ref) <= node["uncertainty_us"] * 1e3


@pytest.mark.parametrize("drift_ppm", (20.0, 0.0))
def test_a_drift_fitted_on_part_of_the_window_is_not_trusted_beyond_it(tmp_path, nccl_pair, drift_ppm):
    """GPU kernels only in the first half of the window (the load stopped), the window's other
    events running on: the 10 kernels fit a drift, but beyond them it is extrapolated, so the
    uncertainty grows there as fast as any drift the bounds allow differs from it (stated +-1.25 us
    before, wrong by 5.5 us at the window's end)."""
    def kernels_in_first_half(doc: dict) -> dict:
        lo, hi = span(doc)
        return dict(doc, traceEvents=[e for e in doc["traceEvents"] if not (
            e.get("cat") == "kernel" and "nccl" in e.get("name", "").lower()) or
            doc["baseTimeNanoseconds"] + e["ts"] * 1000 <= lo + (hi - lo) * 0.5])
    ref, other = (kernels_in_first_half(doc) for doc in nccl_pair)
    t_ref = span(other)[0]
    moved = shift(other, 3_000_000, drift_ppm, t_ref)
    node = _merge_pair(tmp_path, ref, moved).nodes["node1"]
    error = _error(node, moved, 3_000_000, drift_ppm, t_ref)
    print(f"GPU kernels in the first half, {drift_ppm} ppm: {node['method']} {node['n_anchors']} anchors, error "
          f"{error / 1e3:.2f} us, +-{node['uncertainty_us']} us")
    assert node["method"] == "ends" and error <= node["uncertainty_us"] * 1e3


def test_ranks_from_two_runs_are_refused_or_right(tmp_path, vllm_pair, nccl_pair):
    """Rank 0 of one run with rank 1 of another (here: the CPU run and the GPU run) never yields a
    confident offset."""
    node = _merge_pair(tmp_path, vllm_pair[0], nccl_pair[1]).nodes["node1"]
    assert not node["aligned"] and node["unaligned"]


def test_same_workload_from_another_run_is_refused(tmp_path, vllm_pair):
    """The same vLLM run's rank 1, its collectives' timing shuffled as another run of the same
    workload would have them (gaps permuted): no pairing is consistent, so it is refused."""
    other = load(vllm_rank(1))
    rng = random.Random(7)
    comm = sorted((e for e in other["traceEvents"] if e.get("name", "").startswith("gloo:")), key=lambda e: e["ts"])
    gaps = [b["ts"] - a["ts"] for a, b in zip(comm, comm[1:])]
    rng.shuffle(gaps)
    t = comm[0]["ts"] + 1_000_000.0
    for event, gap in zip(comm, [0.0, *gaps]):
        t += gap
        event["ts"] = t
    node = _merge_pair(tmp_path, vllm_pair[0], other).nodes["node1"]
    print(_right_or_refused(node, other, 0, 0.0, 0))
    if node["aligned"]:
        assert _error(node, other, 0, 0.0, 0) <= node["uncertainty_us"] * 1e3


def test_partial_windows_are_recovered_or_refused(tmp_path, vllm_pair):
    """Rank 0 keeps the first half of its window, rank 1 the last 55% (a 5% overlap), offset 30 ms."""
    ref, other = vllm_pair
    lo, hi = span(ref)
    first_half = dict(ref, traceEvents=[e for e in ref["traceEvents"] if e.get("ph") == "M" or
                                        ref["baseTimeNanoseconds"] + e["ts"] * 1000 <= lo + (hi - lo) * 0.5])
    lo1, hi1 = span(other)
    last = dict(other, traceEvents=[e for e in other["traceEvents"] if e.get("ph") == "M" or
                                    other["baseTimeNanoseconds"] + e["ts"] * 1000 >= lo1 + (hi1 - lo1) * 0.45])
    t_ref = span(last)[0]
    moved = shift(last, 30_000_000, 0.0, t_ref)
    node = _merge_pair(tmp_path, first_half, moved).nodes["node1"]
    print(_right_or_refused(node, moved, 30_000_000, 0.0, t_ref))


def _probe_manifest(offset_ns: float, uncertainty_ns: float, t_ns: tuple[int, int]) -> dict:
    """A manifest carrying a clock probe of node 1 (offset_ns against node 0, +-uncertainty) at the
    two instants t_ns (before and after)."""
    probe = {"0": [{"t_ns": t, "offset_ns": 0.0, "uncertainty_ns": uncertainty_ns / 2} for t in t_ns],
             "1": [{"t_ns": t, "offset_ns": offset_ns, "uncertainty_ns": uncertainty_ns / 2} for t in t_ns]}
    files = [{"file": "node0-TP0.trace.json.gz", "kind": "rank", "node": 0, "node_name": "node0",
              "global_rank": 0, "tp_rank": 0},
             {"file": "node1-TP1.trace.json.gz", "kind": "rank", "node": 1, "node_name": "node1",
              "global_rank": 1, "tp_rank": 1}]
    return {"schema": "magpie-trace/manifest/1", "files": files, "clock_probes": probe}


def test_probe_alone_places_a_node_whose_collectives_were_all_dropped(tmp_path, vllm_pair):
    """Node 1's collectives all dropped: placed by its probe (here 1.7 ms +- 150 us, measured as a
    real probe would report it) and says so."""
    ref, other = vllm_pair
    other = dict(other, traceEvents=[e for e in other["traceEvents"] if not e.get("name", "").startswith(COMM)])
    t_ref = span(other)[0]
    moved = shift(other, 1_700_000, 0.0, t_ref)
    lo, hi = span(ref)
    node = _merge_pair(tmp_path, ref, moved, manifest=_probe_manifest(1_720_000, 150_000, (lo, hi))).nodes["node1"]
    assert node["aligned"] and node["placed_by"] == ["probe"] and node["method"] == "probe"
    assert _error(node, moved, 1_700_000, 0.0, t_ref) <= node["uncertainty_us"] * 1e3


def test_a_node_placed_wider_than_the_median_collective_is_warned_about(tmp_path, vllm_pair):
    """node0 holds two ranks (their all-reduces take 328 us at the median); node1's collectives are
    all dropped and its probe says +-0.5 ms: placed, and the warning says gaps between it and the
    others shorter than that mean nothing."""
    ref, other = vllm_pair
    alone = dict(other, traceEvents=[e for e in other["traceEvents"] if not e.get("name", "").startswith(COMM)])
    moved = shift(alone, 1_700_000, 0.0, span(alone)[0])
    (tmp_path / "in").mkdir()
    save(dict(other, distributedInfo=dict(other["distributedInfo"], rank=2)), tmp_path / "in" / "node0-TP2.trace.json.gz")
    lo, hi = span(ref)
    result = _merge_pair(tmp_path, ref, moved, manifest=_probe_manifest(1_720_000, 500_000, (lo, hi)))
    node = result.nodes["node1"]
    assert node["placed_by"] == ["probe"] and node["uncertainty_us"] >= 500
    warning = next(w for w in node["warnings"] if "more than the median collective" in w)
    assert warning.startswith(f"node1: placed to +-{node['uncertainty_us']:.1f} us, more than the median collective (")
    assert warning in result.warnings


def test_a_capture_with_no_events_is_placed_by_the_probe_at_the_capture(tmp_path, vllm_pair):
    """The load ended before the capture opened: only metadata in every trace. The probe places
    node 1, and the fit's origin is the capture's time (the first probe), not the epoch."""
    ref, other = (dict(doc, traceEvents=[e for e in doc["traceEvents"] if e.get("ph") == "M"]) for doc in vllm_pair)
    lo, hi = span(vllm_pair[0])
    result = _merge_pair(tmp_path, ref, other, manifest=_probe_manifest(1_720_000, 150_000, (lo, hi)))
    node = result.nodes["node1"]
    assert node["placed_by"] == ["probe"] and node["t0_ns"] == lo
    assert abs(node["offset_ns"] - 1_720_000) <= 1 and node["uncertainty_us"] >= 150


def test_fit_agrees_with_the_probe_when_both_are_there(tmp_path, vllm_pair):
    ref, other = vllm_pair
    t_ref = span(other)[0]
    moved = shift(other, 1_700_000, 8.0, t_ref)
    lo, hi = span(ref)
    result = _merge_pair(tmp_path, ref, moved, manifest=_probe_manifest(1_690_000, 150_000, (lo, hi)))
    node = result.nodes["node1"]
    assert node["placed_by"] == ["collectives"], node
    at_t0 = node["offset_ns"]
    assert abs(at_t0 - 1_690_000) <= 150_000  # within the probe's uncertainty
    assert _error(node, moved, 1_700_000, 8.0, t_ref) <= node["uncertainty_us"] * 1e3


def test_a_probe_that_contradicts_the_anchors_is_not_papered_over(tmp_path, vllm_pair):
    """A probe 5 ms off: the anchors' placement is refused as disagreeing, the probe's used, and
    both are said."""
    ref, other = vllm_pair
    lo, hi = span(ref)
    result = _merge_pair(tmp_path, ref, other, manifest=_probe_manifest(5_000_000, 150_000, (lo, hi)))
    assert any("outside the clock probe's interval" in w for w in result.warnings), result.warnings
    assert result.nodes["node1"]["placed_by"] == ["probe"]
