"""The clock probe: how far each node's engine clock is from ours, measured around every capture.

Right before a capture opens and after it closes, every node runs a tiny client (`clock_client`,
started through the backend with the node's environment, so it reads the clock the engine reads)
that makes COUNT timestamped UDP round trips with an echo here. As NTP does, only the round trips
with the least delay are kept: each bounds the offset to its stamps' midpoint +- half its round
trip, and their common interval is the measurement. Its uncertainty adds CLOCK_READ_ERROR_NS: the
engine's trace clock is not read by the probe itself (Kineto converts the CPU's cycle counter to
wall time per process, and two processes' conversions differ by up to ~0.1 ms).

Offsets here are against this machine's clock; the merge takes them relative to the reference
node's, so the controller's own clock cancels out. A probe that fails is reported and skipped: it
never fails the capture.
"""

from __future__ import annotations

import posixpath
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from magpie_trace import clock_client
from magpie_trace.backends.base import Backend
from magpie_trace.engines import get_engine
from magpie_trace.errors import MagpieError
from magpie_trace.fanout import on_nodes
from magpie_trace.plan import NodePlan, Plan
from magpie_trace.preflight import python_of

COUNT = 200  # round trips per node and probe
BEST = 10  # least-delay round trips kept
CLOCK_READ_ERROR_NS = 100_000
TIMEOUT_S = 30.0
_CLIENT_SOURCE = Path(clock_client.__file__).read_text()


@dataclass
class ProbeResult:
    """One probe of one node: node clock minus ours is offset_ns +- uncertainty_ns at our t_ns."""

    t_ns: int
    offset_ns: float
    uncertainty_ns: float
    rtt_min_ns: int
    samples: int
    when: str  # "before" | "after" the capture

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(samples: list[tuple[int, int, int, int]], when: str) -> ProbeResult:
    """From (t1 node send, t2 our receive, t3 our reply, t4 node receive) round trips."""
    scored = []
    for t1, t2, t3, t4 in samples:
        rtt = (t4 - t1) - (t3 - t2)
        if rtt >= 0:
            scored.append((rtt, ((t1 - t2) + (t4 - t3)) / 2, t2))
    if not scored:
        raise MagpieError("no complete round trip")
    scored.sort()
    best = scored[:BEST]
    lo = max(mid - rtt / 2 for rtt, mid, _ in best)
    hi = min(mid + rtt / 2 for rtt, mid, _ in best)
    if lo > hi:  # the round trips disagree (a clock stepped?): fall back to the single best one
        rtt, mid, _ = best[0]
        lo, hi = mid - rtt / 2, mid + rtt / 2
    return ProbeResult(t_ns=int(sorted(t for _, _, t in best)[len(best) // 2]), offset_ns=(lo + hi) / 2,
                       uncertainty_ns=(hi - lo) / 2 + CLOCK_READ_ERROR_NS, rtt_min_ns=int(best[0][0]),
                       samples=len(scored), when=when)


def _local_address(remote: str) -> str:
    """The address of this machine that packets to `remote` leave from (nothing is sent)."""
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((remote, 9))
        return str(probe.getsockname()[0])


def _echo(sock: socket.socket, token: str, count: int, deadline: float) -> list[tuple[int, int, int, int]]:
    """Answer the client's requests until it says it is done (or the deadline)."""
    sent: dict[int, tuple[int, int, int]] = {}  # k -> (t1, t2, t3)
    out: list[tuple[int, int, int, int]] = []
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(256)
        except socket.timeout:
            continue
        t2 = time.time_ns()
        words = data.split()
        if len(words) != 4 or words[0].decode(errors="replace") != token:
            continue  # not our client
        k, t1, t4_prev = int(words[1]), int(words[2]), int(words[3])
        if k - 1 in sent and t4_prev:
            out.append((*sent.pop(k - 1), t4_prev))
        if k >= count:
            break
        t3 = time.time_ns()
        sock.sendto(f"{token} {k}".encode(), peer)
        sent[k] = (t1, t2, t3)
    return out


def probe_node(plan: Plan, backend: Backend, node: NodePlan, when: str, count: int = COUNT) -> ProbeResult:
    """One probe of one node (see the module docstring)."""
    config = plan.node_config(node.index)
    engine = get_engine(plan.engine)
    local = _local_address(node.address)
    token = secrets.token_hex(8)
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((local, 0))
        sock.settimeout(0.2)
        port = sock.getsockname()[1]
        log = posixpath.join(posixpath.dirname(node.log_path), f"clock-probe-{when}.log")
        argv = [python_of(plan), "-c", _CLIENT_SOURCE, local, str(port), token, str(count),
                *engine.probe_clock_args(plan.config, node.index)]
        handle = backend.start(config, argv, dict(node.env), log)
        try:
            samples = _echo(sock, token, count, time.monotonic() + TIMEOUT_S)
        finally:
            if backend.alive(config, handle):
                backend.stop(config, handle, grace_s=2.0)
    try:
        return estimate(samples, when)
    except MagpieError as exc:
        raise MagpieError(f"{node.name}: clock probe: {exc} (is UDP from the node to {local} blocked?)") from None


def probe_all(plan: Plan, backend: Backend, when: str, say: Any = None) -> dict[str, dict[str, Any]]:
    """Probe every node at once: {node index: result}; a node whose probe fails is left out, with a
    line through `say`."""
    lock = threading.Lock()
    out: dict[str, dict[str, Any]] = {}
    by_name = {node.name: node for node in plan.nodes}

    def one(config: Any) -> None:
        node = by_name[config.name]
        try:
            result = probe_node(plan, backend, node, when)
        except (MagpieError, OSError) as exc:
            if say:
                say(f"{node.name}: clock probe {when} the capture failed: {exc}")
            return
        with lock:
            out[str(node.index)] = result.to_dict()

    on_nodes(one, plan.config.scheduler.nodes)
    return out
