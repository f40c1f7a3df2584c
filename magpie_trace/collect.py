"""Bring every rank's trace of a capture into the run folder, verified, under a name that says
where it came from: `node<N>-TP<R>[-DP<d>][-PP<p>][-<group>].trace.json.gz`, plus `manifest.json`.
N numbers the nodes across the whole deployment; a deployment of several groups adds the group's
name (lower case, so it never reads as a rank part), whose ranks are numbered within the group.

Every node is read at once, through the backend (or directly when the trace dirs are on
scheduler.shared_dir: a hard link, no copy, where the filesystem allows it). Each copy is checked
against the source's size and sha256, computed on the node, before it takes its final name, so a
collection cut short leaves only whole, verified files, and running it again fetches only what is
missing or different. Sources are only ever read.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from magpie_trace import trace_probe
from magpie_trace.backends.base import Backend
from magpie_trace.errors import MagpieError, TraceError
from magpie_trace.fanout import NodesFailed, on_nodes
from magpie_trace.fsutil import atomic_write_bytes, temp_path_for
from magpie_trace.plan import GroupPlan, NodePlan, Plan
from magpie_trace.progress import Tally
from magpie_trace.profile import (
    FoundTrace,
    NodeFiles,
    find_traces,
    latest_profile_id,
    load_captures,
    rank_label,
)
from magpie_trace.rundir import RunDir
from magpie_trace.topology import Layout

MANIFEST_SCHEMA = "magpie-trace/manifest/1"
MANIFEST_NAME = "manifest.json"
TRACELENS_REPORT = "TraceLens_generate_multi_rank_collective_report_pytorch"
Progress = Callable[[str], None]


@dataclass
class Collected:
    """The outcome of a collection: where, what, and how much had to move."""

    traces_dir: Path
    manifest: dict[str, Any]
    fetched: int
    reused: int

    @property
    def manifest_path(self) -> Path:
        return self.traces_dir / MANIFEST_NAME


def output_name(trace: FoundTrace, layout: Layout, group: str | None = None) -> str:
    """node<N>-TP<R>.trace.json.gz, -DP<d>/-PP<p> only when that size is above 1, then -<group>
    in a deployment of groups; the API server's own trace is node<N>-api-server[-<group>]."""
    suffix = f"-{group}" if group else ""
    if trace.rank is None:
        return f"node{trace.node}-api-server{suffix}.trace.json.gz"
    name = f"node{trace.node}-TP{trace.rank.tp}"
    if layout.dp > 1:
        name += f"-DP{trace.rank.dp}"
    if layout.pp > 1:
        name += f"-PP{trace.rank.pp}"
    return name + suffix + ".trace.json.gz"


def collect(
    plan: Plan,
    backend: Backend,
    run_dir: RunDir,
    profile_id: str | None = None,
    progress: Progress | None = None,
    allow_missing: bool = False,
) -> Collected:
    """Find (every rank, every node, checked), fetch what is not already here, verify, name,
    write manifest.json. profile_id defaults to the run's latest capture. Raises TraceError with
    one line naming node and rank for a missing, truncated, duplicate or conflicting file; with
    allow_missing, ranks without a complete file are left out and listed in the manifest
    (`missing`, `problems`) instead."""
    say = progress or (lambda _msg: None)
    profile_id = profile_id or latest_profile_id(run_dir)
    say(f"looking for capture {profile_id} on {len(plan.nodes)} node(s)")
    traces, missing, problems = find_traces(plan, backend, profile_id, allow_missing)
    node_at = {node.index: node for node in plan.nodes}
    names = {id(t): output_name(t, node_at[t.node].layout, node_at[t.node].group) for t in traces}
    _refuse_clashes(traces, names, plan)
    target = run_dir.traces
    target.mkdir(parents=True, exist_ok=True)
    files = NodeFiles(plan, backend)
    by_node: dict[str, list[FoundTrace]] = {node.name: [] for node in plan.nodes}
    for trace in traces:
        by_node[trace.node_name].append(trace)
    total = sum(trace.size for trace in traces)
    say(f"bringing {len(traces)} trace(s), {total / 1e6:.1f} MB, into {target}")

    node_of = {node.name: node for node in plan.nodes}
    brought = Tally(say, "traces brought home", len(traces), total)

    def bring_node(config: Any) -> tuple[int, int]:
        node = node_of[config.name]
        fetched = reused = 0
        for trace in by_node[node.name]:
            if _bring(files, plan, node, trace, target / names[id(trace)]):
                fetched += 1
            else:
                reused += 1
            brought.add(trace.size)
        return fetched, reused

    try:
        counts = on_nodes(bring_node, [plan.node_config(node.index) for node in plan.nodes])
    except NodesFailed as exc:  # a full disk here is no node's fault: name it alone
        full = [failure for failure in exc.failures.values() if isinstance(failure, DiskFull)]
        if full:
            raise full[0] from None
        raise
    manifest = build_manifest(plan, run_dir, traces, names, profile_id)
    manifest["missing"] = [m.to_dict(m.node.layout) for m in missing]
    manifest["problems"] = problems
    atomic_write_bytes(target / MANIFEST_NAME, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return Collected(
        traces_dir=target,
        manifest=manifest,
        fetched=sum(f for f, _ in counts.values()),
        reused=sum(r for _, r in counts.values()),
    )


def _refuse_clashes(traces: list[FoundTrace], names: dict[int, str], plan: Plan) -> None:
    """Two files must never get one name (a layout the naming rule cannot tell apart)."""
    seen: dict[str, FoundTrace] = {}
    for trace in traces:
        name = names[id(trace)]
        if name in seen:
            layout = plan.nodes[trace.node].layout
            what = rank_label(trace.rank, layout) if trace.rank else "the API server"
            raise TraceError(
                f"{trace.node_name}: {what}: {trace.path} and {seen[name].path} would both be "
                f"named {name}"
            )
        seen[name] = trace


def _bring(files: NodeFiles, plan: Plan, node: NodePlan, trace: FoundTrace, dest: Path) -> bool:
    """Put a verified copy of trace at dest; False when an identical one is already there."""
    same_size = dest.is_file() and dest.stat().st_size == trace.size
    if same_size and trace_probe.sha256_file(dest) == trace.sha256:
        return False
    staging = temp_path_for(dest)
    label = rank_label(trace.rank, node.layout) if trace.rank else "the API server"
    try:
        try:
            if files.shared:
                _link_or_copy(Path(trace.path), staging)
            else:
                files.backend.fetch(plan.node_config(node.index), trace.path, str(staging))
        except (MagpieError, OSError) as exc:
            _refuse_if_disk_full(staging, trace, node, label)
            if isinstance(exc, OSError):
                raise TraceError(f"{dest}: cannot write the copy of {node.name}'s {label} trace: "
                                 f"{exc.strerror or exc}") from None
            raise
        size = staging.stat().st_size
        digest = trace_probe.sha256_file(staging)
        if size != trace.size or digest != trace.sha256:
            _refuse_if_disk_full(staging, trace, node, label)
            raise TraceError(
                f"{node.name}: {label}: the copy of {trace.path} differs from the source "
                f"({size} bytes, sha256 {digest[:12]}; the source has {trace.size} bytes, "
                f"sha256 {trace.sha256[:12]}); was it changed while collecting?"
            )
        os.replace(staging, dest)
    finally:
        if staging.exists():
            staging.unlink()
    return True


class DiskFull(TraceError):
    """This machine's disk filled while a copy was written."""


def _refuse_if_disk_full(staging: Path, trace: FoundTrace, node: NodePlan, label: str) -> None:
    """A short copy on a full disk is the disk's fault, not the source's: say so (a transport
    may report it as its own failure, or not at all: an ssh client drops what it cannot write)."""
    written = staging.stat().st_size if staging.exists() else 0
    stats = os.statvfs(staging.parent)
    free = stats.f_bavail * stats.f_frsize
    if written < trace.size and free < trace.size - written:
        raise DiskFull(
            f"{staging.parent}: no space left on device: {written} of {trace.size} bytes of "
            f"{node.name}'s {label} trace ({trace.path}) written, {free} bytes free; make room "
            "and run collect again (complete copies are kept)"
        )


def _link_or_copy(source: Path, staging: Path) -> None:
    """A hard link where source and target share a filesystem (no bytes move), else a copy."""
    staging.unlink()
    try:
        os.link(source, staging)
    except OSError:
        shutil.copyfile(source, staging)


def build_manifest(
    plan: Plan, run_dir: RunDir, traces: list[FoundTrace], names: dict[int, str], profile_id: str | None = None
) -> dict[str, Any]:
    """manifest.json (schema magpie-trace/manifest/1), read by the merge stage."""
    layout = plan.layout
    preflight = _read_preflight(run_dir)
    offsets_by_name = preflight.get("clock_offsets_ns") or {}
    index_of = {node.name: node.index for node in plan.nodes}
    head_check = next(iter(preflight.get("nodes") or []), {}) or {}
    return {
        "schema": MANIFEST_SCHEMA,
        "run_id": plan.run_id,
        "engine": plan.engine,
        "engine_version": head_check.get("engine_version"),
        "gpus_per_node": plan.config.scheduler.gpus_per_node,
        "world_size": layout.world_size,
        "tp": layout.tp,
        "pp": layout.pp,
        "dp": layout.dp,
        "ep": layout.ep,
        "clock_offsets_ns": {
            str(index_of[name]): int(value)
            for name, value in offsets_by_name.items()
            if name in index_of
        },
        # Each offset's round trip (its uncertainty is half of it): what places a group no KV
        # handoff reaches when the capture recorded no clock probe.
        "clock_rtts_ns": {
            str(index_of[check["node"]]): int(check.get("clock_rtt_ns") or 0)
            for check in preflight.get("nodes") or []
            if isinstance(check, dict) and check.get("node") in index_of
        },
        "clock_probes": _capture_probes(run_dir, profile_id),
        **({"groups": [_group_entry(group) for group in plan.groups]} if plan.has_groups else {}),
        "files": [_file_entry(trace, names[id(trace)], plan.nodes[trace.node].group)
                  for trace in traces],
    }


def _capture_probes(run_dir: RunDir, profile_id: str | None) -> dict[str, Any]:
    """The clock probes taken around this capture (captures.json), for the merge: node index ->
    [{t_ns, offset_ns, uncertainty_ns, ...}, ...] (node clock minus the controller's)."""
    for capture in load_captures(run_dir):
        if capture.get("profile_id") == profile_id:
            return dict(capture.get("clock_probes") or {})
    return {}


def _group_entry(group: GroupPlan) -> dict[str, Any]:
    layout = group.layout
    return {"name": group.name, "role": group.role, "nodes": group.nodes,
            "world_size": layout.world_size, "tp": layout.tp, "pp": layout.pp, "dp": layout.dp,
            "ep": layout.ep, "ranks_per_node": layout.ranks_per_node}


def _file_entry(trace: FoundTrace, name: str, group: str | None) -> dict[str, Any]:
    rank = trace.rank
    return {
        "file": name,
        "kind": trace.kind,
        "node": trace.node,
        "node_name": trace.node_name,
        **({"group": group} if group else {}),
        "host": trace.host,
        "global_rank": rank.global_rank if rank else None,
        "tp_rank": rank.tp if rank else None,
        "pp_rank": rank.pp if rank else None,
        "dp_rank": rank.dp if rank else None,
        "ep_rank": rank.ep if rank else None,
        "source_path": trace.path,
        "source_name": trace.name,
        "size": trace.size,
        "sha256": trace.sha256,
    }


def _read_preflight(run_dir: RunDir) -> dict[str, Any]:
    try:
        data = orjson.loads(run_dir.preflight.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def tracelens_command(manifest: dict[str, Any], traces_dir: Path) -> str | None:
    """TraceLens's multi-rank collective report over the collected folder.

    Its default rank regex (`rank[-_]?N`) matches none of our names and it reads one integer per
    file, so `TP(?P<rank>\\d+)` works when the TP rank is the global rank (DP = PP = 1). Otherwise
    TP numbers repeat across replicas or stages and no regex can tell them apart: None. Groups
    share no collective: one report per group (its files end in -<group>), joined with `&&`.
    """
    groups = manifest.get("groups")
    if groups:
        commands = [_tracelens_one(group, manifest["files"], traces_dir, group["name"])
                    for group in groups]
        found = [command for command in commands if command]
        return " && ".join(found) if found else None
    return _tracelens_one(manifest, manifest["files"], traces_dir, None)


def _tracelens_one(layout: dict[str, Any], files: list[dict[str, Any]], traces_dir: Path,
                   group: str | None) -> str | None:
    if layout["dp"] > 1 or layout["pp"] > 1:
        return None
    suffix = f"-{group}" if group else ""
    per_node: dict[int, int] = {}
    for entry in files:
        if entry["kind"] == "rank" and entry.get("group") == group:
            per_node[entry["node"]] = per_node.get(entry["node"], 0) + 1
    return shlex.join([
        TRACELENS_REPORT,
        "--trace_glob", str(traces_dir / f"node*-TP*{suffix}.trace.json.gz"),
        "--rank_regex", r"TP(?P<rank>\d+)",
        "--world_size", str(layout["world_size"]),
        "--gpus_per_node", str(max(per_node.values(), default=1)),
    ])
