"""Communication events ("anchors"): what each is, and the matched instances the clock fit reads.

Two kinds tie two ranks' clocks together:

* collectives (all-reduce, all-gather, ...): every rank of the group runs one, and none can end
  before every rank has started it;
* point-to-point transfers (pipeline stages' send/recv): a receive cannot end before its send
  started. NCCL's `SendRecv` kernels do not say which way they go; a pair of them is treated as a
  rendezvous (each overlaps the other), like a collective of two.

Which event on one rank is which on another is decided in `matching`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

GPU_COLLECTIVE = re.compile(
    r"nccl|rccl|cross_device_reduce|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|sendrecv|deep_?ep", re.I
)
_FAMILY = re.compile(r"all_?reduce|all_?gather|reduce_?scatter|all_?to_?allv?|broadcast|send_?recv|reduce|send|recv|"
                     r"barrier|gather|scatter", re.I)
P2P_FAMILIES = ("send", "recv", "sendrecv")
COLL, SEND, RECV, P2P = "coll", "send", "recv", "p2p"  # roles: P2P is a send or receive, direction unknown


@dataclass(slots=True)
class Anchor:
    """One communication event on one rank (ns, own clock)."""

    stream: tuple[str, str]  # (process group name or "", family)
    key: tuple[Any, ...] | None  # exact cross-rank key when the trace has one
    start: int
    end: int
    name: str
    gpu: bool
    nelems: int | None = None
    dtype: str | None = None
    role: str = COLL
    lane: str = ""  # CUDA stream of a kernel: one ordered sequence per lane
    peer: int | None = None  # the other global rank of a send/recv, when the trace says


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


def _int_arg(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def classify(ev: dict[str, Any], start: int, end: int) -> Anchor | None:
    """An Anchor for a GPU collective/p2p kernel or a CPU (gloo) communication event, else None.

    A CPU send is taken from the `c10d::send` call, not from `gloo:send`: gloo records its span only
    once the call has returned, which can be after the receiver already has the data (seen on real
    vLLM pipeline traces), while the data cannot leave before the call began."""
    name = ev.get("name", "")
    gpu = ev.get("cat") == "kernel" and _gpu_collective(name)
    if not gpu and not (name.startswith("gloo:") and name != "gloo:send") and name != "c10d::send":
        return None
    args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
    pg = str(args.get("Process Group Name", ""))
    fam = family(str(args.get("Collective name") or name))
    role = COLL
    peer = None
    if fam in P2P_FAMILIES:
        role = {"send": SEND, "recv": RECV}.get(fam, P2P)
        peer = _int_arg(args, "Dst Rank" if role == SEND else "Src Rank")
    name = sys.intern(name)  # one string for every anchor of that name
    key: tuple[Any, ...] | None = None
    if args.get("Comms Id") is not None:
        key = ("comms_id", str(args["Comms Id"]))
    elif args.get("Seq") is not None and pg:
        key = ("seq", pg, role != COLL, str(args["Seq"]))
    # GPU kernels: one sequence per CUDA stream. CPU events are not split by thread: one rank's
    # all-reduces run on two threads in real vLLM CPU traces, in proportions that differ per rank.
    lane = args.get("stream", ev.get("tid", "")) if gpu else ""
    return Anchor(_stream(pg, fam), key, start, end, name, gpu, _int_arg(args, "In msg nelems"),
                  str(args["dtype"]) if "dtype" in args else None, role, sys.intern(str(lane)), peer)


@dataclass
class Collective:
    """One matched instance across ranks: file index -> that rank's anchor (a collective, or the two
    sides of one transfer)."""

    stream: tuple[str, str]
    index: int
    members: dict[int, Anchor]


@dataclass
class Matched:
    """The matched instances as flat columns, one row per (instance, file), rows of one instance
    together: what the clock fit and the tables read (numpy over ~10^5 rows, not Python loops).
    `role` per row: 0 collective (or undirected transfer), 1 send, 2 receive."""

    collective: np.ndarray  # position of the row's instance in the list
    file: np.ndarray
    start: np.ndarray  # ns, own clock
    end: np.ndarray
    role: np.ndarray
    names: list[str]
    streams: list[tuple[str, str]]  # per instance
    indices: list[int]  # per instance: its number on its stream
    p2p: np.ndarray  # per instance: is it a point-to-point transfer

    @classmethod
    def of(cls, collectives: list[Collective]) -> Matched:
        sizes = [len(c.members) for c in collectives]
        members = [a for c in collectives for a in c.members.values()]
        n = len(members)
        codes = {COLL: 0, P2P: 0, SEND: 1, RECV: 2}
        return cls(
            np.repeat(np.arange(len(collectives), dtype=np.int64), sizes),
            np.fromiter((f for c in collectives for f in c.members), np.int64, n),
            np.fromiter((a.start for a in members), np.int64, n),
            np.fromiter((a.end for a in members), np.int64, n),
            np.fromiter((codes[a.role] for a in members), np.int64, n),
            [a.name for a in members], [c.stream for c in collectives], [c.index for c in collectives],
            np.array([any(a.role != COLL for a in c.members.values()) for c in collectives], dtype=bool),
        )
