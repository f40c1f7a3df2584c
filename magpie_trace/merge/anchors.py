"""Collective events ("anchors") and how one collective is found on every rank that ran it.

Keys, strongest first: `Comms Id`; (`Process Group Name`, `Seq`); else the order of the collective
on its (process group, family) stream. Profiling windows can start a few collectives apart on
different ranks, so the order key searches index shifts: the right shift is the one under which the
most per-collective causality intervals (a collective cannot end on one rank before it started on
the other) share a common clock offset.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

GPU_COLLECTIVE = re.compile(
    r"nccl|rccl|cross_device_reduce|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|sendrecv|deep_?ep", re.I
)
_FAMILY = re.compile(r"all_?reduce|all_?gather|reduce_?scatter|all_?to_?allv?|broadcast|send_?recv|reduce|send|recv|"
                     r"barrier|gather|scatter", re.I)
MAX_SHIFT = 32
SHIFT_SAMPLE = 4096  # pairs scored per candidate shift (evenly spaced): enough to tell shifts apart


@dataclass(slots=True)
class Anchor:
    """One collective on one rank: its stream, optional exact key, and start/end (ns, own clock)."""

    stream: tuple[str, str]  # (process group name or "", collective family)
    key: tuple[Any, ...] | None  # exact cross-rank key when the trace has one
    start: int
    end: int
    name: str
    gpu: bool
    nelems: int | None = None
    dtype: str | None = None


@lru_cache(maxsize=4096)
def family(name: str) -> str:
    """`ncclDevKernel_AllReduce_Sum_f32_RING_LL(...)`, `gloo:all_reduce`, `allreduce` -> `allreduce`
    (cached: a trace repeats a few names hundreds of thousands of times)."""
    if "cross_device_reduce" in name:
        return "allreduce"
    m = _FAMILY.search(name)
    return m.group().lower().replace("_", "") if m else name.split("(")[0]


@lru_cache(maxsize=4096)
def _gpu_collective(name: str) -> bool:
    return bool(GPU_COLLECTIVE.search(name))


@lru_cache(maxsize=4096)
def _stream(pg: str, fam: str) -> tuple[str, str]:
    """One shared tuple per stream (there are ~10^5 anchors and a handful of streams)."""
    return pg, fam


def classify(ev: dict[str, Any], start: int, end: int) -> Anchor | None:
    """An Anchor for a GPU collective kernel or a CPU (gloo) collective execution event, else None."""
    name = ev.get("name", "")
    gpu = ev.get("cat") == "kernel" and _gpu_collective(name)
    if not gpu and not name.startswith("gloo:"):
        return None
    args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
    pg = str(args.get("Process Group Name", ""))
    fam = family(str(args.get("Collective name") or name))
    name = sys.intern(name)  # one string for every anchor of that name
    key: tuple[Any, ...] | None = None
    if args.get("Comms Id") is not None:
        key = ("comms_id", str(args["Comms Id"]))
    elif args.get("Seq") is not None and pg:
        key = ("seq", pg, fam in ("send", "recv", "sendrecv"), str(args["Seq"]))
    nelems = args.get("In msg nelems")
    return Anchor(_stream(pg, fam), key, start, end, name, gpu, nelems if isinstance(nelems, int) else None,
                  str(args["dtype"]) if "dtype" in args else None)


def _max_overlap(lower: np.ndarray, upper: np.ndarray) -> int:
    """How many intervals [lower, upper] one point can lie in (sweep over sorted endpoints)."""
    ok = lower <= upper
    pts = np.concatenate([lower[ok], upper[ok]])
    step = np.concatenate([np.ones(ok.sum(), np.int64), -np.ones(ok.sum(), np.int64)])
    order = np.lexsort((-step, pts))
    return int(np.cumsum(step[order]).max()) if len(pts) else 0


def best_shift(ref: list[Anchor], other: list[Anchor], prior_ns: float = 0.0) -> tuple[int, int]:
    """Index shift s pairing ref[k] with other[k+s], and how many pairs it makes consistent."""
    rs = np.array([a.start for a in ref], np.int64)
    re_ = np.array([a.end for a in ref], np.int64)
    os_ = np.array([a.start for a in other], np.int64)
    oe = np.array([a.end for a in other], np.int64)
    limit = min(MAX_SHIFT, max(len(ref), len(other)) - 1)
    scored = []
    for s in range(-limit, limit + 1):
        k0, k1 = max(0, -s), min(len(ref), len(other) - s)
        if k1 - k0 < 1:
            continue
        step = -(-(k1 - k0) // SHIFT_SAMPLE)
        lower = os_[k0 + s : k1 + s : step] - re_[k0:k1:step]
        upper = oe[k0 + s : k1 + s : step] - rs[k0:k1:step]
        median_end = float(np.median(oe[k0 + s : k1 + s : step] - re_[k0:k1:step]))
        scored.append((_max_overlap(lower, upper) * step, abs(median_end - prior_ns), abs(s), s))
    if not scored:
        return 0, 0
    best = max(sc[0] for sc in scored)
    near = [sc for sc in scored if sc[0] >= 0.98 * best]
    choice = min(near, key=lambda sc: (sc[1], sc[2]))
    return choice[3], choice[0]


@dataclass
class Collective:
    """One collective instance matched across ranks: file index -> that rank's anchor."""

    stream: tuple[str, str]
    index: int
    members: dict[int, Anchor]


@dataclass
class Matched:
    """The matched collectives as flat columns, one row per (collective, file), rows of one collective
    together: what the clock fit and the tables read (numpy over ~10^5 rows, not Python loops)."""

    collective: np.ndarray  # position of the row's collective in the list
    file: np.ndarray
    start: np.ndarray  # ns, own clock
    end: np.ndarray
    names: list[str]
    streams: list[tuple[str, str]]  # per collective
    indices: list[int]  # per collective: its number on its stream

    @classmethod
    def of(cls, collectives: list[Collective]) -> Matched:
        sizes = [len(c.members) for c in collectives]
        members = [a for c in collectives for a in c.members.values()]
        n = len(members)
        return cls(
            np.repeat(np.arange(len(collectives), dtype=np.int64), sizes),
            np.fromiter((f for c in collectives for f in c.members), np.int64, n),
            np.fromiter((a.start for a in members), np.int64, n),
            np.fromiter((a.end for a in members), np.int64, n),
            [a.name for a in members], [c.stream for c in collectives], [c.index for c in collectives],
        )


def match(anchors: dict[int, list[Anchor]], group_of: dict[int, Any], priors: dict[int, float]) -> list[Collective]:
    """Match collectives across files. `group_of[file]` separates ranks whose unnamed streams are
    different collectives (e.g. TP groups of different DP replicas); `priors[file]` is the expected
    clock offset (ns) used only to break ties between equally consistent shifts."""
    out: list[Collective] = []
    keyed: dict[tuple[Any, ...], dict[int, Anchor]] = defaultdict(dict)
    streams: dict[tuple[Any, ...], dict[int, list[Anchor]]] = defaultdict(lambda: defaultdict(list))
    for f, items in anchors.items():
        for a in items:
            if a.key is not None:
                keyed[a.key][f] = a
            else:
                group = () if a.stream[0] else (group_of.get(f),)
                streams[(a.stream, *group)][f].append(a)
    for members in keyed.values():
        if len(members) > 1:
            first = next(iter(members.values()))
            out.append(Collective(first.stream, len(out), members))
    for skey, per_file in streams.items():
        files = sorted(per_file)
        if len(files) < 2:
            continue
        for f in files:
            per_file[f].sort(key=lambda a: a.start)
        ref = files[0]
        table: dict[int, dict[int, Anchor]] = defaultdict(dict)
        for k, a in enumerate(per_file[ref]):
            table[k][ref] = a
        for f in files[1:]:
            shift, _ = best_shift(per_file[ref], per_file[f], priors.get(f, 0.0) - priors.get(ref, 0.0))
            for k in range(len(per_file[ref])):
                j = k + shift
                if 0 <= j < len(per_file[f]):
                    table[k][f] = per_file[f][j]
        for k in sorted(table):
            if len(table[k]) > 1:
                out.append(Collective(skey[0], k, table[k]))
    return out
