"""What runs on each node for the whole run: one long-lived process that streams the node's state.

Standard library only; it is sent as `python -c <this source> <json options>` over the backend's
own channel (the local process, one ssh session, one Ray task), so a node is watched through one
channel opened once, never a new remote shell per check. Every `interval` seconds it prints one
JSON line:

  {"t": unix time, "groups": {"<pgid>": [proc, ...] | null}, "gpu": {"source", "text"} | null}

with, per started process group, every process of the engine's tree (the group, its session, and
their descendants): pid, ppid, state (R, S, D, T = stopped, Z), CPU ticks, start time and command
line. null: the group's leader is not the process that was started (its pid was reused). GPU
telemetry is the raw output of nvidia-smi or amd-smi run on the node itself.

It ends when its stdin closes or its stdout does (the other end went away), so it never
outlives the run that started it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

NVIDIA = [
    "nvidia-smi",
    "--query-gpu=index,name,utilization.gpu,utilization.memory,memory.used,memory.total,"
    "power.draw,temperature.gpu",
    "--format=csv,noheader,nounits",
]
AMD = ["amd-smi", "metric", "--usage", "--power", "--mem-usage", "--json"]
CMDLINE_CHARS = 300


def stat(pid: str) -> tuple[str, int, int, int, int, str] | None:
    """(state, ppid, pgrp, session, cpu ticks, start time) of a pid; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[11]) + int(fields[12]), fields[19]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read(CMDLINE_CHARS * 4)
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:CMDLINE_CHARS]


def trees(groups: list[list]) -> dict[str, list[dict] | None]:
    """Every process of each group's tree, from one pass over /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = stat(entry)
            if info is not None:
                table[int(entry)] = info
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info[1], []).append(pid)
    out: dict[str, list[dict] | None] = {}
    for pgid, start in groups:
        leader = table.get(pgid)
        if leader is not None and start and leader[5] != str(start):
            out[str(pgid)] = None  # the pid now belongs to another process
            continue
        members = {pid for pid, info in table.items() if pgid in (info[2], info[3])}
        todo = list(members)
        while todo:  # descendants that left the group or session are still the engine's
            for child in children.get(todo.pop(), []):
                if child not in members:
                    members.add(child)
                    todo.append(child)
        out[str(pgid)] = [
            {"pid": pid, "ppid": table[pid][1], "state": table[pid][0], "cpu": table[pid][4],
             "start": table[pid][5], "cmd": cmdline(pid)}
            for pid in sorted(members)
        ]
    return out


def gpu_source() -> tuple[str, list[str]] | None:
    for name, argv in (("nvidia-smi", NVIDIA), ("amd-smi", AMD)):
        if shutil.which(argv[0]):
            return name, argv
    return None


def gpu_sample(source: tuple[str, list[str]] | None) -> dict | None:
    if source is None:
        return None
    name, argv = source
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"source": name, "text": "", "error": str(exc)}
    return {"source": name, "text": done.stdout, "error": done.stderr.strip()[-300:] if done.returncode else ""}


def main(options: dict) -> None:
    groups = options.get("groups", [])
    interval = float(options.get("interval", 1.0))
    source = gpu_source() if options.get("gpu", True) else None
    ended = threading.Event()

    def watch_stdin() -> None:
        while os.read(0, 4096):
            pass
        ended.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not ended.is_set():
        started = time.monotonic()
        line = json.dumps({"t": time.time(), "groups": trees(groups), "gpu": gpu_sample(source)})
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:
            return
        ended.wait(max(0.0, interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
