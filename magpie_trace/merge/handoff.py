"""Clock anchors between groups that share no collective: the KV-cache handoffs from a prefill
group to a decode group, seen on both sides.

A handoff is an NTP exchange. The decode's span `kv_transfer.recv` runs from sending its pull (t1)
to receiving the KV (t4) on its clock; the prefill's `kv_transfer.send` from receiving that pull
(t2) to sending the KV (t3) on its own. In true time t1 <= t2 <= t3 <= t4, so with c = t + theta
the offset theta_P - theta_D lies in [t3 - t4, t2 - t1]: a two-sided bound per handoff, whatever
the transfer's own duration. The fit is the offset deepest inside every bound (the envelope of
align.py without drift), its uncertainty the half-width left, which covers the true error.
Handoffs whose bounds cannot all hold (no offset lies inside every one) vouch for nothing: they do
not place the group, and the clock probe does, with the contradiction in its warnings.

The events are read from one rank file per node (a node's ranks share its clock), only for a
deployment of groups, in a scan of their own: an extra inflate of those files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from magpie_trace.merge.align import ClockFit, envelope
from magpie_trace.merge.discover import TraceFile
from magpie_trace.merge.load import Scratch, decompress

_NAME = re.compile(rb'"name"\s*:\s*"kv_transfer\.(send|recv)"')
_SCRATCH = Scratch()
_EVENT_MAX = 4096  # bytes: one kv_transfer event is far shorter


@dataclass(frozen=True)
class Handoff:
    side: str  # "send" (prefill) | "recv" (decode)
    transfer_id: str
    start_ns: int  # absolute, the node's own clock
    end_ns: int


def read_handoffs(path: Path, base_ns: int | None) -> list[Handoff]:
    """Every kv_transfer.send/recv event of one trace file (ts/dur in us after base_ns)."""
    buffer, size, _ = decompress(path, _SCRATCH)
    base = base_ns or 0
    found = []
    decoder = json.JSONDecoder()
    try:
        for match in _NAME.finditer(buffer, 0, size):
            start = buffer.rfind(b"{", 0, match.start())  # no nested object precedes "name"
            window = bytes(buffer[start:min(start + _EVENT_MAX, size)]).decode("utf-8", "replace")
            try:
                event, _ = decoder.raw_decode(window)
                args = event.get("args") or {}
                ts, dur = float(event["ts"]), float(event["dur"])
                transfer_id = str(args["transfer_id"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            found.append(Handoff(match.group(1).decode(), transfer_id, base + round(ts * 1000),
                                 base + round((ts + dur) * 1000)))
    finally:
        _SCRATCH.release()
    return found


def launch_measurements(manifest: dict[str, Any] | None, files: list[TraceFile]
                        ) -> dict[str, tuple[float, float]]:
    """Per node name: its clock offset from the head as the launch's preflight measured it, and
    half the round trip (`clock_offsets_ns`, `clock_rtts_ns` in manifest.json): a coarse probe."""
    offsets = (manifest or {}).get("clock_offsets_ns") or {}
    rtts = (manifest or {}).get("clock_rtts_ns") or {}
    if not isinstance(offsets, dict) or not isinstance(rtts, dict):
        return {}
    out = {}
    for tf in files:
        key = str(tf.node)
        offset, rtt = offsets.get(key), rtts.get(key)
        if isinstance(offset, (int, float)) and isinstance(rtt, (int, float)) and rtt > 0:
            out[tf.node_name] = (float(offset), float(rtt) / 2)
    return out


def place_groups(group_fits: dict[str, dict[str, ClockFit]], handoffs: dict[str, list[Handoff]],
                 reference_group: str, probed: Callable[[str, str], tuple[float, float] | None] | None = None,
                 ) -> tuple[dict[str, ClockFit], dict[str, str]]:
    """Every node's fit to the reference group's reference clock.

    group_fits: per group, its nodes' fits to the group's own reference node (from its
    collectives). Each group moves as one rigid body, so the alignment inside it keeps the
    collectives' accuracy; its offset comes from every KV handoff between its nodes and an already
    placed group's, and its uncertainty adds to theirs. A group no consistent handoff reaches is
    placed by `probed(n, m)` (theta_m - theta_n and its uncertainty from the clock probe, between
    two groups' reference nodes), method "probe". Returns the fits and the groups still not placed
    (left out), each with why.
    """
    heads = {group: next(node for node, fit in fits.items() if fit.reference)
             for group, fits in group_fits.items()}
    group_of = {node: group for group, fits in group_fits.items() for node in fits}
    placed = {reference_group: (0.0, 0.0, 0, [], "reference")}  # offset, uncertainty, n, warnings, how
    pending = set(group_fits) - {reference_group}
    refused: dict[str, list[str]] = {}  # group -> why its handoffs did not place it
    while pending:
        best = None
        for group in sorted(pending):
            for other, (base, base_u, *_rest) in placed.items():
                bound = _group_bound(group_fits, handoffs, group_of, group, other)
                if isinstance(bound, str):
                    refused.setdefault(group, [])
                    if bound not in refused[group]:
                        refused[group].append(bound)
                elif bound is not None and (best is None or bound[1] + base_u < best[2]):
                    best = (group, base + bound[0], bound[1] + base_u, bound[2], [], "kv_transfer")
        if best is None and probed is not None:
            for group in sorted(pending):
                for other, (base, base_u, *_rest) in placed.items():
                    found = probed(heads[other], heads[group])
                    if found is not None and (best is None or found[1] + base_u < best[2]):
                        why = "its KV handoffs were not used" if group in refused else \
                            "no KV handoff with a placed group"
                        warning = (f"group {group}: {why}; placed by the clock probe "
                                   f"(+-{(found[1] + base_u) / 1e3:.0f} us)")
                        best = (group, base + found[0], found[1] + base_u, 0, [warning], "probe")
        if best is None:
            break
        group, offset, uncertainty, n, warnings, how = best
        placed[group] = (offset, uncertainty, n, [*refused.get(group, []), *warnings], how)
        pending.discard(group)
    fits: dict[str, ClockFit] = {}
    for group, (offset, uncertainty, n, warnings, how) in placed.items():
        for node, fit in group_fits[group].items():
            if group == reference_group or not fit.aligned:
                fits[node] = fit
                continue
            lo, hi = fit.interval_ns
            fits[node] = replace(
                fit, offset_ns=fit.offset_ns + offset,
                method=how if fit.reference else f"{how}+{fit.method}",
                n_anchors=fit.n_anchors + n, uncertainty_ns=fit.uncertainty_ns + uncertainty,
                reference=False, warnings=[*fit.warnings, *warnings],
                placed_by=[how] if fit.reference else [*fit.placed_by, how],
                interval_ns=(lo + offset - uncertainty, hi + offset + uncertainty))
    return fits, {group: f"{'; '.join(refused[group])}; and no clock probe placed it" if group in refused
                  else f"its group {group} shares no KV handoff with the other groups and its nodes "
                       "have no clock probe"
                  for group in sorted(pending)}


def _group_bound(group_fits: dict[str, dict[str, ClockFit]], handoffs: dict[str, list[Handoff]],
                 group_of: dict[str, str], group: str, other: str
                 ) -> tuple[float, float, int] | str | None:
    """(offset of `group`'s reference clock from `other`'s, half-width, handoffs) from every
    handoff between their nodes; None when they saw none; why not, when their bounds contradict
    each other (then no offset is inside every bound, and the envelope's would vouch for nothing)."""
    lower, upper = [], []
    for decode, events in handoffs.items():
        recvs = {h.transfer_id: h for h in events if h.side == "recv"}
        for prefill, others in handoffs.items():
            if {group_of.get(decode), group_of.get(prefill)} != {group, other}:
                continue
            d_fit, p_fit = group_fits[group_of[decode]][decode], group_fits[group_of[prefill]][prefill]
            if not (d_fit.aligned and p_fit.aligned):
                continue  # a node its own group could not place says nothing of the group's clock
            for send in others:
                recv = recvs.get(send.transfer_id) if send.side == "send" else None
                if recv is None:
                    continue
                # theta_P - theta_D in [t3 - t4, t2 - t1]; theta_X = group offset + its own fit.
                shift = float(d_fit.theta(recv.start_ns)) - float(p_fit.theta(send.start_ns))
                lo, hi = send.end_ns - recv.end_ns + shift, send.start_ns - recv.start_ns + shift
                if group_of[decode] == group:  # bounds on Delta_prefill - Delta_decode: flip
                    lo, hi = -hi, -lo
                lower.append(lo)
                upper.append(hi)
    if not lower:
        return None
    zero = np.zeros(len(lower))
    offset, _, margin = envelope(zero, np.array(lower), zero, np.array(upper), fit_drift=False)
    if margin < 0:
        return (f"group {group}: its {len(lower)} KV handoffs with group {other} contradict each other "
                f"by {-2 * margin / 1e3:.0f} us (a clock that stepped during the capture, or a "
                "group's own alignment off?): not used to place it")
    return float(offset), float(margin), len(lower)
