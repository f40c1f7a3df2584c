"""Open and close a torch.profiler capture on every rank of a running server, and find its files.

Arming happens at launch (the planner passes each engine its profiler switches and a trace dir per
node); here a capture is opened and closed over HTTP, tagged with a profile id that goes into
every rank's file name (vLLM `profile_prefix`, SGLang `profile_id`) so two captures never mix.
The ranks write on their own nodes, so "done" is decided by looking there: every rank the plan
puts on a node must have exactly one file of this capture, a complete gzip whose size held still
between two looks. A file is matched to its rank by the plan, its name and its `distributedInfo`;
any disagreement between those is an error naming the node and rank, never a guess.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from magpie_trace import clock_probe, trace_probe
from magpie_trace.backends.base import Backend
from magpie_trace.engines import get_engine
from magpie_trace.engines.base import Engine, HttpCall, TraceName
from magpie_trace.errors import ConfigError, MagpieError, NodeError, TraceError
from magpie_trace.fanout import on_nodes
from magpie_trace.fsutil import atomic_write_bytes
from magpie_trace.nodewatch import NodeGuard
from magpie_trace.plan import NodePlan, Plan
from magpie_trace.preflight import python_of
from magpie_trace.progress import count, silent
from magpie_trace.rundir import RunDir
from magpie_trace.topology import Layout, Rank

CAPTURES_SCHEMA = "magpie-trace/captures/1"
Progress = Callable[[str], None]
# Safe in every engine's file names: vLLM's profile_prefix rule minus nothing, and no `_` (vLLM
# ends the prefix at the first one) or `/`.
_PROFILE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,127}\Z")
_PROBE_SOURCE = Path(trace_probe.__file__).read_text()
POLL_S = 0.5


@dataclass
class FoundTrace:
    """One complete trace file of a capture, on its node, matched to its rank (None: API server)."""

    node: int
    node_name: str
    host: str
    path: str
    name: str
    kind: str  # "rank" | "api_server"
    rank: Rank | None
    size: int
    sha256: str
    distributed_rank: int | None = None
    distributed_world_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rank"] = self.rank.to_dict() if self.rank else None
        return data


@dataclass
class Capture:
    """One profiling window: its id, when it was opened and closed, the files it produced."""

    profile_id: str
    urls: list[str]
    started_at: float
    stopped_at: float | None = None
    traces: list[FoundTrace] = field(default_factory=list)
    clock_probes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # node index -> probes

    def add_probes(self, probes: dict[str, dict[str, Any]]) -> None:
        for node, result in probes.items():
            self.clock_probes.setdefault(node, []).append(result)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile_id": self.profile_id,
            "urls": self.urls,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "traces": [trace.to_dict() for trace in self.traces],
            "clock_probes": self.clock_probes,
        }


# --------------------------------------------------------------------------------------------
# Profile ids and the run's record of captures


def check_profile_id(profile_id: str) -> str:
    if not _PROFILE_ID.match(profile_id):
        raise ConfigError(
            f"profile id {profile_id!r}: use 1-128 letters, digits, '.' or '-', starting with a "
            "letter or digit (it becomes part of every trace file name)"
        )
    return profile_id


def captures_path(run_dir: RunDir) -> Path:
    return run_dir.root / "captures.json"


def load_captures(run_dir: RunDir) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(captures_path(run_dir).read_bytes())
    except FileNotFoundError:
        return []
    except orjson.JSONDecodeError as exc:
        raise MagpieError(f"{captures_path(run_dir)}: unreadable ({exc})") from None
    return list(data.get("captures", []))


def record_capture(run_dir: RunDir, capture: Capture) -> None:
    """Add (or replace, by profile id) the capture in <run>/captures.json, atomically."""
    captures = [c for c in load_captures(run_dir) if c.get("profile_id") != capture.profile_id]
    captures.append(capture.to_dict())
    data = {"schema": CAPTURES_SCHEMA, "captures": captures}
    atomic_write_bytes(captures_path(run_dir), orjson.dumps(data, option=orjson.OPT_INDENT_2))


def new_profile_id(run_dir: RunDir) -> str:
    """`<run id>-p<n>`: the run's n-th capture (characters a file name cannot carry become '-')."""
    base = re.sub(r"[^A-Za-z0-9.\-]", "-", run_dir.run_id).strip("-.")[:100] or "run"
    if not base[0].isalnum():
        base = "r" + base
    return check_profile_id(f"{base}-p{len(load_captures(run_dir)) + 1}")


def latest_profile_id(run_dir: RunDir) -> str:
    captures = load_captures(run_dir)
    if not captures:
        raise MagpieError(
            f"{run_dir.root}: no capture recorded (run `magpie-trace profile` first, "
            "or pass --profile-id)"
        )
    return str(captures[-1]["profile_id"])


# --------------------------------------------------------------------------------------------
# Opening and closing the window over HTTP


def _armed(plan: Plan) -> None:
    if any(node.trace_dir is None for node in plan.nodes):
        raise ConfigError(
            f"{plan.config.source}: profile.enabled is false, so the server was launched without "
            "its profiler armed (set profile.enabled: true and launch again)"
        )


def _send(url: str, call: HttpCall, timeout_s: float) -> None:
    data = None if call.body is None else orjson.dumps(call.body)
    request = urllib.request.Request(url + call.path, data=data, method=call.method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace").strip().replace("\n", " ")
        if exc.code == 404:
            raise MagpieError(
                f"{url}{call.path}: 404: the server has no profiler endpoints (was it launched "
                "with profile.enabled: true?)"
            ) from None
        if exc.code == 409:
            raise MagpieError(
                f"{url}{call.path}: 409: a capture is already open on this server ({detail})"
            ) from None
        raise MagpieError(f"{url}{call.path}: HTTP {exc.code}: {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MagpieError(f"{url}{call.path}: no answer ({reason})") from None


def _send_all(
    plan: Plan, urls: list[str], call: HttpCall, timeout_s: float
) -> tuple[list[str], list[MagpieError]]:
    """Send call to every URL at once: (the URLs that accepted it, the failures, each naming
    the node that serves the URL)."""
    done: list[str] = []
    errors: list[MagpieError] = []
    lock = threading.Lock()

    def one(url: str) -> None:
        try:
            _send(url, call, timeout_s)
            with lock:
                done.append(url)
        except MagpieError as exc:
            node = plan.node_serving(url)
            with lock:
                errors.append(exc if node is None else NodeError(node.name, str(exc)))

    threads = [threading.Thread(target=one, args=(url,), daemon=True) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done, errors


def start_profile(plan: Plan, profile_id: str, timeout_s: float = 60.0) -> list[str]:
    """Open the capture on every API server that must be called (one through the head arms every
    rank; vLLM's hybrid/external DP load balancing needs each node's). Returns the URLs called.
    If one server refuses, the ones that accepted are closed again before the error is raised."""
    _armed(plan)
    check_profile_id(profile_id)
    engine = get_engine(plan.engine)
    urls = engine.profile_urls(plan)
    done, errors = _send_all(plan, urls, engine.start_profile_call(plan.config.profile, profile_id), timeout_s)
    if errors:
        if done:
            _send_all(plan, done, engine.stop_profile_call(), plan.config.profile.timeout_s)
        raise errors[0]
    return urls


def stop_profile(plan: Plan, timeout_s: float | None = None) -> None:
    """Close the capture. vLLM (and the sim) answer once every rank has written its file; SGLang
    answers before, and after a num_steps window there is nothing to close."""
    engine = get_engine(plan.engine)
    if not engine.stop_needed(plan.config.profile):
        return
    timeout_s = plan.config.profile.timeout_s if timeout_s is None else timeout_s
    _done, errors = _send_all(plan, engine.profile_urls(plan), engine.stop_profile_call(), timeout_s)
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------------------------
# Finding a capture's files on every node


@dataclass
class _Seen:
    """A file of the capture as one look at its node found it."""

    path: str
    name: str
    parsed: TraceName
    size: int
    mtime: float
    probe: dict[str, Any] | None = None  # trace_probe.probe() once the size held still


@dataclass
class NodeScan:
    """What one look at one node found: matched files, and the problems that still stand."""

    node: NodePlan
    traces: list[FoundTrace] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # missing or not (yet) complete
    fatal: list[str] = field(default_factory=list)  # conflicts and duplicates: waiting won't help


def rank_label(rank: Rank, layout: Layout) -> str:
    parts = [f"TP{rank.tp}"]
    if layout.dp > 1:
        parts.append(f"DP{rank.dp}")
    if layout.pp > 1:
        parts.append(f"PP{rank.pp}")
    return f"rank {rank.global_rank} ({' '.join(parts)})"


def _name_fits(parsed: TraceName, rank: Rank, layout: Layout) -> bool:
    """Does every rank field the name carries agree with this rank? (Absent fields agree.)"""
    if parsed.tp is not None and parsed.tp != rank.tp:
        return False
    if parsed.pp is not None and parsed.pp != rank.pp:
        return False
    if parsed.dp is not None and parsed.dp != rank.dp:
        return False
    if parsed.rank_in_dp is not None:
        return parsed.rank_in_dp == rank.global_rank - rank.dp * layout.replica_size
    return True


def _info_fits(rank_value: int, world: int | None, rank: Rank, layout: Layout) -> bool:
    """torch's distributedInfo numbers ranks over the whole world (vLLM) or one DP replica
    (SGLang); its world_size says which."""
    if world == layout.world_size and rank_value == rank.global_rank:
        return True
    in_replica = rank.global_rank - rank.dp * layout.replica_size
    return world == layout.replica_size and rank_value == in_replica


def _match(plan: Plan, node: NodePlan, seen: _Seen, where: str) -> tuple[Rank | None, str | None]:
    """The rank this complete file belongs to, or (None, why not). Ranks are numbered per group."""
    layout = node.layout
    probe = seen.probe or {}
    by_name = [rank for rank in node.ranks if _name_fits(seen.parsed, rank, layout)]
    if not by_name:
        group = [r for n in plan.nodes if n.group == node.group for r in n.ranks]
        elsewhere = [r for r in group if r.node != node.index and _name_fits(seen.parsed, r, layout)]
        if elsewhere:
            other = plan.nodes[elsewhere[0].node].name
            return None, (
                f"{where} is named as {rank_label(elsewhere[0], layout)}, which the plan puts "
                f"on {other}, not here"
            )
        return None, f"{where} is named as a rank this layout does not have"
    info_rank, info_world = probe.get("rank"), probe.get("world_size")
    if info_rank is None:
        if len(by_name) > 1:
            labels = ", ".join(rank_label(r, layout) for r in by_name)
            return None, f"{where} could be any of {labels} and has no distributedInfo to tell"
        return by_name[0], None
    fits = [rank for rank in by_name if _info_fits(info_rank, info_world, rank, layout)]
    if len(fits) == 1:
        return fits[0], None
    if not fits:
        return None, (
            f"{where}: its name says {rank_label(by_name[0], layout)} but its "
            f"distributedInfo says rank {info_rank} of {info_world}"
        )
    labels = ", ".join(rank_label(r, layout) for r in fits)
    return None, f"{where} could be any of {labels}"


def judge_node(plan: Plan, node: NodePlan, seen: list[_Seen]) -> NodeScan:
    """Match one node's files to the ranks the plan puts there; say what is missing or wrong.

    A rank whose file is incomplete or in conflict is reported through that file only, not again
    as missing."""
    scan = NodeScan(node)
    claimed: dict[object, _Seen] = {}
    reported: set[Rank] = set()
    for item in seen:
        where = f"{node.name}: {item.path}"
        probe = item.probe
        named = [r for r in node.ranks if _name_fits(item.parsed, r, node.layout)]
        if probe is None or not probe.get("complete"):
            if probe is not None and probe.get("error") == "missing":
                continue  # gone since it was listed: judged as absent
            state = "still being written" if probe is None else probe["error"]
            if item.parsed.kind == "api_server":
                where = f"{node.name}: the API server: {item.path}"
            elif len(named) == 1:
                where = f"{node.name}: {rank_label(named[0], node.layout)}: {item.path}"
                reported.add(named[0])
            scan.pending.append(f"{where} is {state}")
            continue
        if item.parsed.stage is not None:
            scan.fatal.append(f"{where} is a per-stage trace ({item.parsed.stage}); "
                              "profile without profile_by_stage")
            reported.update(named)
            continue
        if item.parsed.kind == "api_server":
            key: object = "api_server"
            rank = None
        else:
            rank, problem = _match(plan, node, item, where)
            if problem:
                scan.fatal.append(problem)
                reported.update(named)
                continue
            key = rank
        if key in claimed:
            what = "the API server" if rank is None else rank_label(rank, node.layout)
            scan.fatal.append(
                f"{node.name}: {what} has two traces: {claimed[key].path} and {item.path}"
            )
            continue
        claimed[key] = item
        scan.traces.append(
            FoundTrace(
                node=node.index, node_name=node.name, host=node.host, path=item.path,
                name=item.name, kind=item.parsed.kind, rank=rank, size=int(probe["size"]),
                sha256=str(probe["sha256"]), distributed_rank=probe.get("rank"),
                distributed_world_size=probe.get("world_size"),
            )
        )
    for rank in node.ranks:
        if rank not in claimed and rank not in reported:
            scan.pending.append(f"{node.name}: no trace for {rank_label(rank, node.layout)}")
    return scan


class NodeFiles:
    """How a node's trace dir is read: through the backend, or directly when it is on
    scheduler.shared_dir (mounted here too)."""

    def __init__(self, plan: Plan, backend: Backend) -> None:
        self.plan = plan
        self.backend = backend
        shared = plan.config.scheduler.shared_dir
        self.shared = bool(shared) and all(
            node.trace_dir is not None and _under(node.trace_dir, shared) for node in plan.nodes
        )

    def list(self, node: NodePlan, patterns: list[str]) -> list[tuple[str, int, float]]:
        """(path, size, mtime) of the files matching any pattern in the node's trace dir."""
        assert node.trace_dir is not None
        if self.shared:
            directory = Path(node.trace_dir)
            found = {p for pattern in patterns for p in directory.glob(pattern) if p.is_file()}
            out = []
            for path in sorted(found):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                out.append((str(path), stat.st_size, stat.st_mtime))
            return out
        config = self.plan.node_config(node.index)
        files = {f.path: f for pattern in patterns
                 for f in self.backend.listdir(config, node.trace_dir, pattern)}
        return [(f.path, f.size, f.mtime) for f in sorted(files.values(), key=lambda f: f.path)]

    def probe(self, node: NodePlan, paths: list[str], total_bytes: int) -> dict[str, dict[str, Any]]:
        """trace_probe.probe() of each path, run on the node (or here, for a shared dir)."""
        if not paths:
            return {}
        if self.shared:
            return {path: trace_probe.probe(path) for path in paths}
        config = self.plan.node_config(node.index)
        python = python_of(self.plan)
        timeout = 60.0 + total_bytes / 20e6  # a slow node still reads 20 MB/s
        result = self.backend.run(config, [python, "-c", _PROBE_SOURCE, *paths], timeout_s=timeout)
        out: dict[str, dict[str, Any]] = {}
        for line in result.stdout.splitlines():
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            out[item["path"]] = item
        if result.returncode != 0 or len(out) != len(paths):
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise TraceError(f"{node.name}: cannot check trace files with {python}: {detail}")
        return out


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") + "/"
    return path.startswith(root)


class Scanner:
    """Looks at every node's trace dir; probes each file once its size held still."""

    def __init__(self, plan: Plan, backend: Backend, profile_id: str) -> None:
        _armed(plan)
        self.plan = plan
        self.engine: Engine = get_engine(plan.engine)
        self.profile_id = check_profile_id(profile_id)
        self.files = NodeFiles(plan, backend)
        self._last: dict[str, tuple[int, float]] = {}
        self._probed: dict[tuple[str, int, float], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def look(self, settle: bool) -> list[NodeScan]:
        """One look at every node at once. settle: probe only files whose size and mtime are the
        same as at the previous look (a file still being written is left for later)."""
        by_name = {node.name: node for node in self.plan.nodes}
        results = on_nodes(
            lambda config: self._look_node(by_name[config.name], settle),
            self.plan.config.scheduler.nodes,
        )
        return list(results.values())

    def _look_node(self, node: NodePlan, settle: bool) -> NodeScan:
        seen: list[_Seen] = []
        for path, size, mtime in self.files.list(node, self.engine.trace_patterns(self.profile_id)):
            name = path.rsplit("/", 1)[-1]
            parsed = self.engine.parse_trace_name(name)
            if parsed is None or parsed.profile_id != self.profile_id:
                continue
            seen.append(_Seen(path, name, parsed, size, mtime))
        to_probe = []
        with self._lock:
            for item in seen:
                key = (item.path, item.size, item.mtime)
                previous = self._last.get(item.path)
                self._last[item.path] = (item.size, item.mtime)
                if key in self._probed:
                    item.probe = self._probed[key]
                elif not settle or previous == (item.size, item.mtime):
                    to_probe.append(item)
        results = self.files.probe(node, [i.path for i in to_probe], sum(i.size for i in to_probe))
        with self._lock:
            for item in to_probe:
                item.probe = results[item.path]
                if item.probe.get("complete"):
                    self._probed[(item.path, item.size, item.mtime)] = item.probe
        return judge_node(self.plan, node, seen)


def _one_line(problems: list[str], prefix: str = "") -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return prefix + problems[0] + more


def _ordered(plan: Plan, scans: list[NodeScan]) -> list[FoundTrace]:
    traces = [trace for scan in scans for trace in scan.traces]
    return sorted(traces, key=lambda t: (t.node, t.kind != "rank",
                                         t.rank.global_rank if t.rank else 0))


@dataclass
class Missing:
    """A rank with no complete file in a partial capture (collect --allow-missing)."""

    node: NodePlan
    rank: Rank

    def to_dict(self, layout: Layout) -> dict[str, Any]:
        return {"node": self.node.index, "node_name": self.node.name,
                "global_rank": self.rank.global_rank, "rank": rank_label(self.rank, layout)}


def find_traces(
    plan: Plan, backend: Backend, profile_id: str, allow_missing: bool = False
) -> tuple[list[FoundTrace], list[Missing], list[str]]:
    """Every rank's file of this capture, checked now: (the complete files, the ranks without
    one, what is wrong with them). One TraceError line naming node and rank for a duplicate or
    conflicting file, and, unless allow_missing, for the first missing or incomplete one."""
    scans = Scanner(plan, backend, profile_id).look(settle=False)
    fatal = [problem for scan in scans for problem in scan.fatal]
    pending = [problem for scan in scans for problem in scan.pending]
    if fatal or (pending and not allow_missing):
        raise TraceError(_one_line(fatal + pending, f"capture {profile_id}: "))
    missing = []
    for scan in scans:
        found = {trace.rank for trace in scan.traces}
        missing += [Missing(scan.node, rank) for rank in scan.node.ranks if rank not in found]
    if allow_missing and not any(trace.kind == "rank" for scan in scans for trace in scan.traces):
        raise TraceError(_one_line(pending, f"capture {profile_id}: no rank has a trace: "))
    return _ordered(plan, scans), missing, pending


def wait_for_traces(
    plan: Plan,
    backend: Backend,
    profile_id: str,
    timeout_s: float | None = None,
    poll_s: float = POLL_S,
    progress: Progress | None = None,
    guard: NodeGuard | None = None,
) -> list[FoundTrace]:
    """Wait until every rank's file of this capture is complete on every node (a valid gzip whose
    size held still between two looks), and no other file of the capture is still being written.
    Raises TraceError at once for duplicates and conflicts, and at timeout_s (default
    profile.timeout_s) naming the missing or incomplete ranks and their nodes; NodeLost as soon
    as the guard sees a node's engine gone (its files will never come)."""
    guard = guard or NodeGuard()
    timeout_s = plan.config.profile.timeout_s if timeout_s is None else timeout_s
    scanner = Scanner(plan, backend, profile_id)
    deadline = time.monotonic() + timeout_s
    say = progress or silent
    expected = len(plan.ranks)
    last_count = -1
    while True:
        guard.raise_if_tripped()
        scans = scanner.look(settle=True)
        fatal = [problem for scan in scans for problem in scan.fatal]
        if fatal:
            raise TraceError(_one_line(fatal, f"capture {profile_id}: "))
        pending = [problem for scan in scans for problem in scan.pending]
        complete = sum(1 for scan in scans for trace in scan.traces if trace.kind == "rank")
        if not pending:
            count(say, "rank traces complete", expected, expected)
            return _ordered(plan, scans)
        # Written but not yet settled (its size must hold still between two looks) counts as not yet.
        count(say, "rank traces complete", complete, expected, line=complete != last_count)
        last_count = complete
        if time.monotonic() >= deadline:
            raise TraceError(
                _one_line(pending, f"capture {profile_id}: after {timeout_s:g} s: ")
            )
        guard.wait(poll_s)


# --------------------------------------------------------------------------------------------
# The whole capture


def capture(
    plan: Plan,
    backend: Backend,
    run_dir: RunDir | None = None,
    profile_id: str | None = None,
    duration_s: float | None = None,
    progress: Progress | None = None,
    guard: NodeGuard | None = None,
) -> Capture:
    """Open a capture, keep it open for duration_s (default profile.duration_s) or, when a step
    window is configured and no duration is given, until the window has closed on every rank;
    close it; wait until every rank's file is complete. Recorded in <run>/captures.json (from
    the moment it opens). With a guard watching the nodes, a lost node ends every wait at once
    (NodeLost naming it) instead of at profile.timeout_s."""
    say = progress or (lambda _msg: None)
    guard = guard or NodeGuard()
    profile = plan.config.profile
    if profile_id is None:
        if run_dir is None:
            raise MagpieError("capture: give a profile id or a run folder to number captures in")
        profile_id = new_profile_id(run_dir)
    engine = get_engine(plan.engine)
    by_window = duration_s is None and engine.has_step_window(profile)
    before = clock_probe.probe_all(plan, backend, "before", say)
    urls = guard.call(lambda: start_profile(plan, profile_id))
    record = Capture(profile_id=profile_id, urls=urls, started_at=time.time())
    record.add_probes(before)
    if run_dir is not None:  # recorded now, so a failed capture's id is never handed out again
        record_capture(run_dir, record)
    say(f"capture {profile_id} open on {', '.join(urls)}")
    try:
        if by_window:
            say("waiting for the step window to close on every rank")
            wait_for_traces(plan, backend, profile_id, progress=say, guard=guard)
        else:
            guard.wait(profile.duration_s if duration_s is None else duration_s)
    except BaseException:
        if guard.tripped is None:  # a server that lost a node cannot close it: it is torn down
            _close_quietly(plan, say)
        raise
    say("closing the capture (the ranks write their traces)")
    guard.call(lambda: stop_profile(plan))
    record.stopped_at = time.time()
    record.add_probes(clock_probe.probe_all(plan, backend, "after", say))
    record.traces = wait_for_traces(plan, backend, profile_id, progress=say, guard=guard)
    if run_dir is not None:
        record_capture(run_dir, record)
    return record


def _close_quietly(plan: Plan, say: Progress) -> None:
    """Close a capture that is being abandoned (Ctrl-C, timeout) so the server can open another;
    the error that made us abandon it is the one to report."""
    try:
        stop_profile(plan)
    except MagpieError as exc:
        say(f"could not close the capture: {exc}")
