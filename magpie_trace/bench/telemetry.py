"""GPU utilization, memory and power on every node, sampled through the backend (local, ssh, ray).

Each node is probed once for `nvidia-smi`, then `amd-smi`; the first that answers is sampled every
`benchmark.telemetry_interval_s`. A node with neither (a CPU machine) is still polled with `true`,
so a node that stops answering is noticed either way (the watchdog reads `last_ok`).

Formats parsed:
- `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`: one line a GPU, ", "-separated,
  "[N/A]" / "[Not Supported]" where a field has no value (`nvidia-smi --help-query-gpu`).
- `amd-smi metric --usage --power --mem-usage --json`: amd-smi 26.x (ROCm 7) wraps the GPUs in
  {"gpu_data": [...]}, earlier versions print the bare list; values are {"value", "unit"} or "N/A".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from magpie_trace.awake import AWAKE
from magpie_trace.backends.base import Backend
from magpie_trace.config import NodeConfig
from magpie_trace.errors import MagpieError

NVIDIA_FIELDS = (
    "index", "name", "utilization.gpu", "utilization.memory", "memory.used", "memory.total",
    "power.draw", "temperature.gpu",
)
NVIDIA_QUERY = [
    "nvidia-smi", f"--query-gpu={','.join(NVIDIA_FIELDS)}", "--format=csv,noheader,nounits",
]
AMD_QUERY = ["amd-smi", "metric", "--usage", "--power", "--mem-usage", "--json"]
HEARTBEAT = ["true"]


@dataclass
class GpuSample:
    index: int
    name: str | None = None
    util_pct: float | None = None
    mem_util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    power_w: float | None = None
    temp_c: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None  # [N/A], [Not Supported], N/A


def parse_nvidia_csv(text: str) -> list[GpuSample]:
    """One GpuSample per line of NVIDIA_QUERY's output. Raises ValueError on a foreign format."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(NVIDIA_FIELDS):
            raise ValueError(f"expected {len(NVIDIA_FIELDS)} fields, got {len(parts)}: {line!r}")
        gpus.append(
            GpuSample(
                index=int(parts[0]),
                name=parts[1],
                util_pct=_number(parts[2]),
                mem_util_pct=_number(parts[3]),
                mem_used_mib=_number(parts[4]),
                mem_total_mib=_number(parts[5]),
                power_w=_number(parts[6]),
                temp_c=_number(parts[7]),
            )
        )
    return gpus


def _amd_value(block: Any, *keys: str) -> float | None:
    """block[k1][k2]...: {"value": x, "unit": u} or a bare number; MB and GB are given in MiB."""
    for key in keys:
        if not isinstance(block, dict):
            return None
        block = block.get(key)
    unit = ""
    if isinstance(block, dict):
        unit = str(block.get("unit", ""))
        block = block.get("value")
    if isinstance(block, bool) or not isinstance(block, (int, float)):
        return None
    return float(block) * 1024 if unit == "GB" else float(block)


def parse_amd_json(text: str) -> list[GpuSample]:
    """One GpuSample per GPU of AMD_QUERY's output (either amd-smi layout)."""
    data = orjson.loads(text)
    if isinstance(data, dict):
        data = data.get("gpu_data")
    if not isinstance(data, list):
        raise ValueError("amd-smi JSON: expected a list of GPUs or {\"gpu_data\": [...]}")
    gpus = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("gpu"), int):
            continue
        power = _amd_value(entry, "power", "socket_power")
        if power is None:
            power = _amd_value(entry, "power", "average_socket_power")
        gpus.append(
            GpuSample(
                index=entry["gpu"],
                util_pct=_amd_value(entry, "usage", "gfx_activity"),
                mem_util_pct=_amd_value(entry, "usage", "umc_activity"),
                mem_used_mib=_amd_value(entry, "mem_usage", "used_vram"),
                mem_total_mib=_amd_value(entry, "mem_usage", "total_vram"),
                power_w=power,
            )
        )
    return gpus


PARSERS = {"nvidia-smi": (NVIDIA_QUERY, parse_nvidia_csv), "amd-smi": (AMD_QUERY, parse_amd_json)}


def detect_source(backend: Backend, node: NodeConfig, timeout_s: float = 20.0) -> tuple[str, str]:
    """("nvidia-smi" | "amd-smi" | "none", why). Transport failures (NodeError) propagate."""
    notes = []
    for source, (argv, parse) in PARSERS.items():
        result = backend.run(node, argv, timeout_s=timeout_s)
        if result.returncode == 127:
            notes.append(f"no {source}")
            continue
        if result.returncode != 0:
            notes.append(f"{source} failed ({(result.stderr or result.stdout).strip()[:120]})")
            continue
        try:
            if parse(result.stdout):
                return source, ""
        except ValueError as exc:
            notes.append(f"{source} output not understood ({exc})")
            continue
        notes.append(f"{source} lists no GPU")
    return "none", "; ".join(notes)


@dataclass
class NodeSampler:
    """Samples one node in a thread; `last_ok` is the AWAKE time of the last answer."""

    backend: Backend
    node: NodeConfig
    interval_s: float
    source: str = "none"
    note: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)
    last_ok: float = field(default_factory=AWAKE.now)
    failures: int = 0
    last_error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self.source, self.note = detect_source(self.backend, self.node)
        except MagpieError as exc:
            self.source, self.note, self.last_error = "none", str(exc), str(exc)
        self.last_ok = AWAKE.now()
        self._thread = threading.Thread(target=self._loop, name=f"telemetry-{self.node.name}", daemon=True)
        self._thread.start()

    def feed(self, sample: dict[str, Any]) -> None:
        """One line of the node's monitor (magpie_trace.monitor): the node's own GPU tool output,
        parsed here; no command is run from here for it."""
        self.last_ok = AWAKE.now()
        gpu = sample.get("gpu")
        if not gpu:
            self.note = "no nvidia-smi or amd-smi on this node"
            return
        self.source = gpu["source"]
        try:
            if gpu.get("error"):
                raise ValueError(gpu["error"])
            gpus = PARSERS[self.source][1](gpu["text"])
        except (KeyError, ValueError) as exc:
            self.failures += 1
            self.last_error = str(exc)
            return
        self.samples.append({"t": sample["t"], "gpus": [g.to_dict() for g in gpus]})

    def _loop(self) -> None:
        argv, parse = PARSERS.get(self.source, (HEARTBEAT, None))
        timeout = max(5.0, 3 * self.interval_s)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                result = self.backend.run(self.node, argv, timeout_s=timeout)
                if result.returncode != 0:
                    raise ValueError(f"exit {result.returncode}: {(result.stderr or '').strip()[:200]}")
                if parse is not None:
                    gpus = parse(result.stdout)
                    self.samples.append({"t": time.time(), "gpus": [g.to_dict() for g in gpus]})
                self.last_ok = AWAKE.now()
            except Exception as exc:  # noqa: BLE001 - any failure is a missed sample, counted
                self.failures += 1
                self.last_error = str(exc)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def summary(self, t0: float | None = None, t1: float | None = None) -> dict[str, Any]:
        """Per GPU: utilization mean/p50/max, memory used max, power mean, over [t0, t1] (unix s)."""
        picked = [s for s in self.samples if (t0 is None or s["t"] >= t0) and (t1 is None or s["t"] <= t1)]
        gpus: dict[str, dict[str, Any]] = {}
        by_gpu: dict[int, list[dict[str, Any]]] = {}
        for sample in picked:
            for gpu in sample["gpus"]:
                by_gpu.setdefault(gpu["index"], []).append(gpu)
        for index, rows in sorted(by_gpu.items()):
            util = [r["util_pct"] for r in rows if r["util_pct"] is not None]
            mem = [r["mem_used_mib"] for r in rows if r["mem_used_mib"] is not None]
            power = [r["power_w"] for r in rows if r["power_w"] is not None]
            gpus[str(index)] = {
                "name": rows[-1].get("name"),
                "samples": len(rows),
                "util_pct_mean": float(np.mean(util)) if util else None,
                "util_pct_p50": float(np.median(util)) if util else None,
                "util_pct_max": float(np.max(util)) if util else None,
                "mem_used_mib_max": float(np.max(mem)) if mem else None,
                "mem_total_mib": rows[-1].get("mem_total_mib"),
                "power_w_mean": float(np.mean(power)) if power else None,
            }
        return {
            "source": self.source,
            "note": self.note or ("" if self.source != "none" else "no GPU telemetry tool on this node"),
            "samples": len(picked),
            "failures": self.failures,
            "last_error": self.last_error,
            "gpus": gpus,
        }
