"""The merged file's own events, written after every rank's part: a name, a sort index and a label
for every process, and flow arrows that link each matched collective across its ranks.

- process_name: `<label> <original name>` (`node1-TP3 VLLM::Worker_TP3`); a process the input did
  not name is called by what it is, `node1-TP3 GPU 0` for a GPU (its events are kernels and copies),
  `node1-TP3 process 4242` otherwise, never `pid 0`.
- process_labels: the node's clock correction, e.g. `clock +500.0 us +-2.0 us (ends)`, so Perfetto
  shows next to each process how far its node was moved and how well that is known.
- flows (`s` -> `t` ... -> `f`, category `magpie_trace.collective`): one per matched collective,
  from its lowest rank's event to its highest, binding to the collective's slice on each rank. Their
  id is the collective's id (the `collectives` table's), unique in the file: Perfetto keys v1 flows by
  (id, category, name), and the rewritten input flows have other categories.
"""

from __future__ import annotations

from typing import Any

import orjson

FLOW_CATEGORY = "magpie_trace.collective"


def _token(pid: str) -> bytes:
    """The pid as the rewrite saw it: a number's digits, a string with its quotes."""
    try:
        return str(int(pid)).encode()
    except ValueError:
        return orjson.dumps(pid)


def clock_label(node: dict[str, Any]) -> str:
    if node.get("reference"):
        return "clock: reference"
    if not node.get("aligned", True):
        return "clock: own (not aligned)"
    uncertainty = node.get("uncertainty_us")
    spread = f" +-{uncertainty:.1f} us" if isinstance(uncertainty, (int, float)) else ""
    return f"clock {node.get('offset_ns', 0) / 1e3:+.1f} us{spread} ({node.get('method')})"


def process_events(labels: list[str], names: list[dict[bytes, str]], pids: list[dict[bytes, int]],
                   gpu_pids: list[set[str]], clocks: list[str]) -> list[bytes]:
    """Per file k (in merged order): name, sort index and clock label of each merged pid it used."""
    out = []
    for k, label in enumerate(labels):
        gpu_tokens = {_token(p) for p in gpu_pids[k]}
        for token, pid in pids[k].items():
            original = names[k].get(token)
            if original is None:
                text = token.decode("utf-8", "replace")
                if token[:1] == b'"':
                    original = text.strip('"') or "markers"
                elif token in gpu_tokens:
                    original = f"GPU {text}"
                else:
                    original = f"process {text}"
            out.append(orjson.dumps({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                                     "args": {"name": f"{label} {original}"}}))
            out.append(orjson.dumps({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                                     "args": {"sort_index": pid}}))
            out.append(orjson.dumps({"ph": "M", "name": "process_labels", "pid": pid, "tid": 0,
                                     "args": {"labels": clocks[k]}}))
    return out


def collective_flows(members: list[tuple[int, int, str, str, int, int]], pids: list[dict[bytes, int]]) -> list[bytes]:
    """Flow events from rows (collective id, file index, pid, tid, start ns, end ns), sorted by
    collective then rank order: the first member starts the flow, the last ends it, the others are
    steps. Each is placed at the middle of its collective's slice, which it binds to."""
    out = []
    n = len(members)
    for i, (cid, k, pid, tid, start_ns, end_ns) in enumerate(members):
        first = i == 0 or members[i - 1][0] != cid
        last = i == n - 1 or members[i + 1][0] != cid
        if first and last:
            continue  # a collective seen on one rank only
        merged_pid = pids[k].get(_token(pid))
        if merged_pid is None:
            continue
        event: dict[str, Any] = {"ph": "s" if first else "f" if last else "t", "id": cid, "cat": FLOW_CATEGORY,
                                 "name": "collective", "pid": merged_pid, "tid": _tid(tid),
                                 "ts": (start_ns + end_ns) // 2 / 1000}
        if not first:
            event["bp"] = "e"
        out.append(orjson.dumps(event))
    return out


def _tid(tid: str) -> int | str:
    try:
        return int(tid)
    except ValueError:
        return tid
