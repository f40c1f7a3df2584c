"""PNG plots of a sweep (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _x(points: list[dict[str, Any]]) -> list[float]:
    return [float(p["max_concurrency"]) for p in points]


def _series(points: list[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if p.get(key) is None else float(p[key]) for p in points]


def write_plots(
    out_dir: Path, points: list[dict[str, Any]], telemetry: dict[str, list[dict[str, Any]]]
) -> tuple[list[str], list[str]]:
    """(written file names, notes about plots skipped)."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    usable = [p for p in points if p.get("completed")]
    if usable:
        written.append(_throughput(plot_dir, usable))
        written.append(_latency(plot_dir, usable, "ttft"))
        written.append(_latency(plot_dir, usable, "tpot"))
        written.append(_pareto(plot_dir, usable))
    else:
        notes.append("no completed requests: no throughput or latency plots")
    with_gpus = {node: s for node, s in telemetry.items() if any(x["gpus"] for x in s)}
    if with_gpus:
        written.append(_gpu_util(plot_dir, with_gpus))
    else:
        notes.append("no GPU telemetry on any node: no GPU utilization plot")
    return [f"plots/{name}" for name in written], notes


def _concurrency_axis(ax: Any, points: list[dict[str, Any]]) -> None:
    """Log2 axis labelled with the sweep's own concurrency values (4, 8, 16, not 2^n)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(_x(points))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("concurrency")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _throughput(plot_dir: Path, points: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(_x(points), _series(points, "output_throughput"), "o-", label="output tok/s")
    ax.plot(_x(points), _series(points, "total_token_throughput"), "s--", label="total tok/s")
    _concurrency_axis(ax, points)
    ax.set_ylabel("tokens / s")
    ax2 = ax.twinx()
    ax2.plot(_x(points), _series(points, "request_throughput"), "^:", color="gray", label="req/s")
    ax2.set_ylabel("requests / s")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left")
    ax.set_title("Throughput vs concurrency")
    return _save(fig, plot_dir / "throughput_vs_concurrency.png")


def _latency(plot_dir: Path, points: list[dict[str, Any]], metric: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for stat in ("median", "p90", "p99"):
        key = f"{stat}_{metric}_ms"
        if any(key in p for p in points):
            ax.plot(_x(points), _series(points, key), "o-", label=stat)
    _concurrency_axis(ax, points)
    ax.set_ylabel(f"{metric.upper()} (ms)")
    ax.legend()
    ax.set_title(f"{metric.upper()} percentiles vs concurrency")
    return _save(fig, plot_dir / f"{metric}_vs_concurrency.png")


def _pareto(plot_dir: Path, points: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    x = _series(points, "median_tpot_ms")
    y = _series(points, "output_throughput")
    ax.plot(x, y, "o-")
    for xi, yi, p in zip(x, y, points):
        ax.annotate(f"c={p['max_concurrency']}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("median TPOT (ms)")
    ax.set_ylabel("output tokens / s")
    ax.set_title("Throughput vs latency")
    return _save(fig, plot_dir / "throughput_vs_latency.png")


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
