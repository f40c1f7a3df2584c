"""PNG plots of the analysis tables (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# (column, label, colour): the stack adds up to the rank's total time
_STACK = (("compute_only_us", "compute only", "#4878a8"), ("overlapped_us", "comm hidden by compute", "#8fb8de"),
          ("exposed_comm_us", "exposed comm", "#d9534f"), ("memcpy_only_us", "memcpy only", "#f0ad4e"),
          ("idle_us", "idle", "#cccccc"))


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def node_breakdown(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per node, the mean rank's time split into compute only / hidden comm / exposed comm / copies /
    idle, in % of its total."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 4.2))
    nodes = [r["node"] for r in rows]
    bottom = [0.0] * len(rows)
    for column, label, colour in _STACK:
        share = [100 * (r[column] or 0) / r["total_us"] if r["total_us"] else 0 for r in rows]
        ax.bar(nodes, share, bottom=bottom, label=label, color=colour)
        bottom = [b + s for b, s in zip(bottom, share)]
    ax.set_ylabel("% of the rank's time (mean over the node's ranks)")
    ax.set_ylim(0, 100)
    ax.set_title("Where each node's time goes")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def exposed_per_step(rows: list[dict[str, Any]], path: Path) -> Path:
    """Exposed communication per step, one line per node (mean over its ranks)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for node in sorted({r["node"] for r in rows}):
        mine = sorted((r for r in rows if r["node"] == node), key=lambda r: r["step"])
        ax.plot([r["step"] for r in mine], [r["exposed_comm_us"] / 1e3 for r in mine], marker=".", label=node)
    ax.set_xlabel("step")
    ax.set_ylabel("exposed communication (ms, mean rank)")
    ax.set_title("Exposed communication per node per step")
    ax.legend(fontsize=8)
    return _save(fig, path)


def wait_timeline(rows: list[dict[str, Any]], path: Path) -> Path:
    """Heat map: per step (x) and node (y), how long the others waited for that node at the step's
    collectives; a dark row across many steps is a node that is slow step after step."""
    nodes = sorted({r["node"] for r in rows})
    steps = sorted({r["step"] for r in rows if r["step"] is not None})
    grid = [[0.0] * len(steps) for _ in nodes]
    col = {s: k for k, s in enumerate(steps)}
    for r in rows:
        if r["step"] is not None:
            grid[nodes.index(r["node"])][col[r["step"]]] = (r["waited_for_us"] or 0) / 1e3
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.5 * len(nodes) + 1.5)))
    image = ax.imshow(grid, aspect="auto", cmap="Reds", interpolation="nearest",
                      extent=(steps[0] - 0.5, steps[-1] + 0.5, len(nodes) - 0.5, -0.5))
    ax.set_yticks(range(len(nodes)), nodes)
    ax.set_xlabel("step")
    ax.set_title("Who the others waited for (last arrival at the step's collectives)")
    fig.colorbar(image, ax=ax, label="others waited (ms)")
    return _save(fig, path)
