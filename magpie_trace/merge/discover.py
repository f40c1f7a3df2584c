"""Which trace files are in a folder, and which node, clock and rank each one belongs to.

Sources, strongest first: `manifest.json` (written by `collect`), the file name (magpie's
`node<N>-TP<R>[-DP<d>][-PP<p>]`, vLLM's `rank<G>.<ns>.pt.trace` and `dp.._rank<G>.`, SGLang's
`<id>-TP-<R>`), then the trace's own `distributedInfo.rank` and `host_name` (read later, in `load`):
files whose node neither the manifest nor the name tells share their host's clock; without a host
either, a file is its own clock domain.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from magpie_trace.errors import TraceError
from magpie_trace.merge.align import ProbePoint

MANIFEST_SCHEMA = "magpie-trace/manifest/1"
TRACE_SUFFIXES = (".json.gz", ".json")
# TraceLens's default --rank_regex (Reporting/generate_multi_rank_collective_report_pytorch.py).
TRACELENS_RANK_REGEX = re.compile(r"rank[\[\-_/]?(?P<rank>\d+)")

# A deployment of several groups ends the name with the group (lower case, see groups.py).
_GROUP = r"(?:-(?P<group>[a-z][a-z0-9_]*))?"
_MAGPIE = re.compile(r"^node(?P<node>\d+)-TP(?P<tp>\d+)(?:-DP(?P<dp>\d+))?(?:-PP(?P<pp>\d+))?(?:-EP(?P<ep>\d+))?" + _GROUP + "$")
_MAGPIE_API = re.compile(r"^node(?P<node>\d+)-api-server" + _GROUP + "$")
_VLLM = re.compile(r"(?:^|_)rank(?P<rank>\d+)$")
_SGLANG = re.compile(r"-TP-(?P<tp>\d+)(?:-DP-(?P<dp>\d+))?(?:-PP-(?P<pp>\d+))?(?:-EP-(?P<ep>\d+))?")
_VLLM_API = re.compile(r"\.async_llm(?:\.\d+)?$")  # [prefix_]{hostname}_{pid}.async_llm.{ns}
# A host_name that may name a node: it becomes part of output file names, so nothing path-like.
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass
class TraceFile:
    """One input file and what is known about its place in the job."""

    path: Path
    kind: str  # "rank" | "api_server" | "other"
    node_name: str  # the clock domain: files with one node_name share one clock
    node: int | None = None
    global_rank: int | None = None
    tp_rank: int | None = None
    pp_rank: int | None = None
    dp_rank: int | None = None
    ep_rank: int | None = None
    host: str | None = None
    group: str | None = None  # its server group in a deployment of several (ranks count per group)
    from_manifest: bool = False
    own_label: str | None = None  # the node is not known: the file's label, from its name (its host may say the node)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Display name, e.g. `node1-TP3`; used for process names and output file names."""
        group = [self.group] if self.group else []
        if self.own_label is not None:
            return "-".join([self.own_label, *group])
        if self.kind == "api_server":
            return "-".join([f"{self.node_name}-api-server", *group])
        if self.tp_rank is not None and self.node is not None:
            parts = [f"{self.node_name}-TP{self.tp_rank}"]
            parts += [f"DP{self.dp_rank}"] if self.dp_rank else []
            parts += [f"PP{self.pp_rank}"] if self.pp_rank else []
            return "-".join(parts + group)
        return self.node_name

    def output_name(self) -> str:
        """Aligned file name whose TraceLens default rank regex yields the global rank."""
        label = self.label
        if self.global_rank is None:
            return f"{label}.trace.json.gz"
        found = TRACELENS_RANK_REGEX.search(label)
        if found and int(found.group("rank")) == self.global_rank:
            return f"{label}.trace.json.gz"
        return f"{label}-rank{self.global_rank}.trace.json.gz"


def trace_stem(path: Path) -> str:
    name = path.name
    for suffix in TRACE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for tail in (".pt.trace", ".trace"):
        if name.endswith(tail):
            name = name[: -len(tail)]
    return name


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def from_name(path: Path) -> TraceFile:
    """Everything the file name says (node, ranks), without opening the file."""
    stem = trace_stem(path)
    m = _MAGPIE.match(stem)
    if m:
        g = m.groupdict()
        return TraceFile(
            path, "rank", f"node{int(g['node'])}", node=int(g["node"]), tp_rank=int(g["tp"]),
            dp_rank=int(g["dp"]) if g["dp"] else None, pp_rank=int(g["pp"]) if g["pp"] else None,
            ep_rank=int(g["ep"]) if g["ep"] else None, group=g["group"],
        )
    m = _MAGPIE_API.match(stem)
    if m:
        node = int(m.group("node"))
        return TraceFile(path, "api_server", f"node{node}", node=node, group=m.group("group"))
    short = stem.split(".")[0]
    m = _VLLM.search(short)
    if m:
        return TraceFile(path, "rank", short, global_rank=int(m.group("rank")), own_label=short)
    if _VLLM_API.search(stem):
        return TraceFile(path, "api_server", short, own_label=short)
    m = _SGLANG.search(stem)
    if m:
        g = m.groupdict()
        return TraceFile(
            path, "rank", stem, tp_rank=int(g["tp"]), dp_rank=int(g["dp"]) if g["dp"] else None,
            pp_rank=int(g["pp"]) if g["pp"] else None, ep_rank=int(g["ep"]) if g["ep"] else None, own_label=stem,
        )
    return TraceFile(path, "other", short, own_label=short)


def read_manifest(input_dir: Path) -> dict[str, Any] | None:
    path = input_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise TraceError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA or not isinstance(data.get("files"), list):
        raise TraceError(f"{path}: not a magpie-trace manifest (schema {MANIFEST_SCHEMA!r} with a files list)")
    return data


def _from_manifest(input_dir: Path, entry: Any, manifest_path: Path) -> TraceFile:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise TraceError(f"{manifest_path}: every files[] entry needs a 'file' string")
    rel = entry["file"]
    path = input_dir / rel
    if not path.is_file():
        raise TraceError(f"{manifest_path}: lists {rel}, which is not in {input_dir}")
    kind = entry.get("kind", "rank")
    if kind not in ("rank", "api_server"):
        raise TraceError(f"{manifest_path}: {rel}: kind must be 'rank' or 'api_server', not {kind!r}")
    node = _int(entry.get("node"))
    node_name = entry.get("node_name") or (f"node{node}" if node is not None else trace_stem(path))
    return TraceFile(
        path, kind, str(node_name), node=node,
        own_label=None if entry.get("node_name") or node is not None else str(node_name),
        global_rank=_int(entry.get("global_rank")),
        tp_rank=_int(entry.get("tp_rank")), pp_rank=_int(entry.get("pp_rank")),
        dp_rank=_int(entry.get("dp_rank")), ep_rank=_int(entry.get("ep_rank")),
        host=entry.get("host") if isinstance(entry.get("host"), str) else None,
        group=entry.get("group") if isinstance(entry.get("group"), str) else None, from_manifest=True,
    )


def discover(input_dir: Path) -> tuple[list[TraceFile], dict[str, Any] | None]:
    """The trace files of a folder (manifest entries first, then any other trace file) and the manifest."""
    if not input_dir.is_dir():
        raise TraceError(f"{input_dir}: not a folder")
    manifest = read_manifest(input_dir)
    files: list[TraceFile] = []
    listed: set[Path] = set()
    if manifest is not None:
        for entry in manifest["files"]:
            tf = _from_manifest(input_dir, entry, input_dir / "manifest.json")
            files.append(tf)
            listed.add(tf.path.resolve())
    for path in sorted(input_dir.iterdir()):
        if path.is_file() and path.name.endswith(TRACE_SUFFIXES) and path.name != "manifest.json":
            if path.resolve() not in listed:
                files.append(from_name(path))
    if not files:
        raise TraceError(f"{input_dir}: no trace files (*.json, *.json.gz)")
    return files, manifest


def manifest_probes(manifest: dict[str, Any] | None, files: list[TraceFile]) -> dict[str, list[ProbePoint]]:
    """The clock probe of each node (`clock_probes` in the manifest, written by collect from the
    capture's record: per node index or name, the probes taken before and after the capture), by
    node name. Entries that do not parse are ignored: the probe is an extra, never a reason to fail."""
    raw = (manifest or {}).get("clock_probes")
    if not isinstance(raw, dict):
        return {}
    names = {str(tf.node): tf.node_name for tf in files if tf.node is not None}
    out: dict[str, list[ProbePoint]] = {}
    for key, points in raw.items():
        node = names.get(str(key), str(key))
        if not isinstance(points, list):
            continue
        parsed = []
        for p in points:
            try:
                point = ProbePoint(int(p["t_ns"]), float(p["offset_ns"]), float(p["uncertainty_ns"]))
            except (TypeError, KeyError, ValueError):
                continue
            if math.isfinite(point.offset_ns) and math.isfinite(point.uncertainty_ns) and point.uncertainty_ns >= 0:
                parsed.append(point)
        if parsed:
            out[node] = sorted(parsed, key=lambda p: p.t_ns)
    return out
