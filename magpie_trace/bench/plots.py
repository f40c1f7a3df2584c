"""PNG plots of a sweep (matplotlib, Agg backend: no display needed).

Per sweep, against what the sweep varies (concurrency, else request rate, else the point):
throughput, TTFT, TPOT, ITL and E2EL percentiles; output tokens/s vs median TPOT; output
tokens/s per GPU vs tokens/s per user (1000 / median TPOT). Per point: latency CDFs, and a
timeline of one point's requests (sent, first token, last token). The profiled point is left out
of the sweep plots: its latencies carry the profiler's overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from magpie_trace.bench.metrics import LATENCIES, RequestRecord  # noqa: E402

TIMELINE_MAX_REQUESTS = 400


class Axis:
    """What the sweep varies: concurrency (log2 axis), request rate, or just the point order."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        caps = [p.get("max_concurrency") for p in points]
        rates = [p.get("request_rate") for p in points]
        if None not in caps and len(set(caps)) == len(points) > 1 or len(points) == 1 and caps[0] is not None:
            self.name, self.values = "concurrency", [float(c) for c in caps]
        elif all(isinstance(r, (int, float)) for r in rates) and len(set(rates)) == len(points):
            self.name, self.values = "rate", [float(r) for r in rates]
        else:
            self.name, self.values = "point", [float(i) for i in range(len(points))]
        self.labels = [p["point"] for p in points]

    def apply(self, ax: Any) -> None:
        if self.name == "concurrency":
            ax.set_xscale("log", base=2)
            ax.set_xticks(self.values)
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.get_xaxis().set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("concurrency")
        elif self.name == "rate":
            ax.set_xlabel("request rate (req/s)")
        else:
            ax.set_xticks(self.values)
            ax.set_xticklabels(self.labels, rotation=30, ha="right", fontsize=7)
            ax.set_xlabel("load point")


def _series(points: list[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if p.get(key) is None else float(p[key]) for p in points]


def write_plots(
    out_dir: Path,
    points: list[dict[str, Any]],
    records: Sequence[RequestRecord],
    telemetry: dict[str, list[dict[str, Any]]],
    gpus: int | None = None,
) -> tuple[list[str], list[str]]:
    """(written file names, notes about plots skipped)."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    usable = [p for p in points if p.get("completed") and not p.get("profiled")]
    if usable:
        axis = Axis(usable)
        written.append(_throughput(plot_dir, usable, axis))
        written += [_latency(plot_dir, usable, axis, metric) for metric in LATENCIES]
        written.append(_pareto(plot_dir, usable))
        written.append(_per_gpu(plot_dir, usable, gpus))
        by_point = {p["point"]: [r for r in records if r.point == p["point"] and r.status == "ok"] for p in usable}
        written.append(_cdfs(plot_dir, by_point))
        last = usable[-1]["point"]
        written.append(_timeline(plot_dir, last, [r for r in records if r.point == last]))
    else:
        notes.append("no completed requests: no throughput or latency plots")
    with_gpus = {node: s for node, s in telemetry.items() if any(x["gpus"] for x in s)}
    if with_gpus:
        written.append(_gpu_util(plot_dir, with_gpus))
    else:
        notes.append("no GPU telemetry on any node: no GPU utilization plot")
    return [f"plots/{name}" for name in written], notes


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _throughput(plot_dir: Path, points: list[dict[str, Any]], axis: Axis) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(axis.values, _series(points, "output_throughput"), "o-", label="output tok/s")
    ax.plot(axis.values, _series(points, "total_token_throughput"), "s--", label="total tok/s")
    axis.apply(ax)
    ax.set_ylabel("tokens / s")
    ax2 = ax.twinx()
    ax2.plot(axis.values, _series(points, "request_throughput"), "^:", color="gray", label="req/s")
    ax2.set_ylabel("requests / s")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left")
    ax.set_title(f"Throughput vs {axis.name}")
    return _save(fig, plot_dir / f"throughput_vs_{axis.name}.png")


def _latency(plot_dir: Path, points: list[dict[str, Any]], axis: Axis, metric: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for stat in ("median", "p90", "p99"):
        key = f"{stat}_{metric}_ms"
        if any(key in p for p in points):
            ax.plot(axis.values, _series(points, key), "o-", label=stat)
    axis.apply(ax)
    ax.set_ylabel(f"{metric.upper()} (ms)")
    if ax.get_legend_handles_labels()[0]:  # no percentile of this metric in any point: no legend
        ax.legend()
    ax.set_title(f"{metric.upper()} percentiles vs {axis.name}")
    return _save(fig, plot_dir / f"{metric}_vs_{axis.name}.png")


def _pareto(plot_dir: Path, points: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    x = _series(points, "median_tpot_ms")
    y = _series(points, "output_throughput")
    ax.plot(x, y, "o-")
    for xi, yi, p in zip(x, y, points):
        ax.annotate(p["point"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("median TPOT (ms)")
    ax.set_ylabel("output tokens / s")
    ax.set_title("Throughput vs latency")
    return _save(fig, plot_dir / "throughput_vs_latency.png")


def _per_gpu(plot_dir: Path, points: list[dict[str, Any]], gpus: int | None) -> str:
    """The serving trade-off: what each GPU delivers against what each user sees."""
    fig, ax = plt.subplots(figsize=(6, 4))
    tpot = np.array(_series(points, "median_tpot_ms"))
    per_user = np.where(tpot > 0, 1000.0 / np.where(tpot > 0, tpot, 1.0), np.nan)
    per_gpu = np.array(_series(points, "output_throughput")) / (gpus or 1)
    ax.plot(per_user, per_gpu, "o-")
    for xi, yi, p in zip(per_user, per_gpu, points):
        ax.annotate(p["point"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("tokens / s per user (1000 / median TPOT)")
    ax.set_ylabel("output tokens / s per GPU" if gpus else "output tokens / s (GPU count unknown)")
    ax.set_title(f"Throughput per GPU ({gpus} GPUs) vs per user" if gpus else "Throughput vs per user")
    return _save(fig, plot_dir / "throughput_per_gpu_vs_per_user.png")


def _cdfs(plot_dir: Path, by_point: dict[str, list[RequestRecord]]) -> str:
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for ax, metric in zip(axes.flat, LATENCIES):
        for label, records in by_point.items():
            if metric == "itl":
                values = [v for r in records for v in r.itls_ms()]
            else:
                values = [v for v in (getattr(r, f"{metric}_ms")() for r in records) if v is not None]
            if values:
                xs = np.sort(values)
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
        ax.set_xlabel(f"{metric.upper()} (ms)")
        ax.set_ylabel("fraction of samples")
        ax.grid(alpha=0.3)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("Latency CDFs per load point")
    return _save(fig, plot_dir / "latency_cdf.png")


def _timeline(plot_dir: Path, label: str, records: list[RequestRecord]) -> str:
    """Each request a line: sent -> first token (waiting), first -> last token (generating)."""
    shown = sorted((r for r in records if r.start_ns is not None), key=lambda r: r.start_ns or 0)
    shown = shown[:TIMELINE_MAX_REQUESTS]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    t0 = shown[0].start_ns if shown else 0
    for row, r in enumerate(shown):
        start = ((r.start_ns or 0) - (t0 or 0)) / 1e9
        if r.first_chunk_ns is not None:
            first = (r.first_chunk_ns - (t0 or 0)) / 1e9
            ax.hlines(row, start, first, color="tab:orange", linewidth=1)
            ax.hlines(row, first, ((r.last_chunk_ns or r.first_chunk_ns) - (t0 or 0)) / 1e9,
                      color="tab:blue", linewidth=1)
        else:
            ax.plot([start], [row], "x", color="tab:red", markersize=3)
    ax.set_xlabel("time since the point's first request (s)")
    ax.set_ylabel("request (by send time)")
    ax.set_title(f"{label}: waiting for the first token (orange), generating (blue)")
    return _save(fig, plot_dir / f"timeline_{label}.png")


def _gpu_util(plot_dir: Path, telemetry: dict[str, list[dict[str, Any]]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    t0 = min(s["t"] for samples in telemetry.values() for s in samples)
    for node, samples in sorted(telemetry.items()):
        indices = sorted({g["index"] for s in samples for g in s["gpus"]})
        for index in indices:
            xs, ys = [], []
            for s in samples:
                for g in s["gpus"]:
                    if g["index"] == index and g["util_pct"] is not None:
                        xs.append(s["t"] - t0)
                        ys.append(g["util_pct"])
            ax.plot(xs, ys, label=f"{node} gpu{index}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("GPU utilization (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("GPU utilization per node")
    return _save(fig, plot_dir / "gpu_utilization.png")
