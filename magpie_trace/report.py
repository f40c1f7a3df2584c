"""The run report: one Markdown file and one self-contained HTML page, from the run folder alone.

It reads only what the stages wrote (plan.json, preflight.json, bench/, traces/manifest.json,
merged/), so it can be re-made at any time (`magpie-trace report`) and a missing stage is shown as
missing rather than breaking the report.
"""

from __future__ import annotations

import base64
import csv
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from magpie_trace.fsutil import atomic_write_text
from magpie_trace.rundir import RunDir


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)  # Markdown lines
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _rel(run_dir: RunDir, path: Path) -> str:
    return os.path.relpath(path, run_dir.root)


def topology_section(run_dir: RunDir) -> Section:
    plan = _load_json(run_dir.plan)
    section = Section("Topology and plan")
    if plan is None:
        section.notes.append("no plan.json in this run")
        return section
    layout = plan["layout"]
    groups = plan.get("groups") or []
    if groups:
        section.lines.append(
            f"{plan['engine']} serving `{plan.get('model', '?')}` on {len(plan['nodes'])} node(s) "
            f"via {plan['backend']} as {len(groups)} group(s); endpoint {plan['head_url']}"
        )
        for group in groups:
            size = group["layout"]
            section.lines.append(
                f"- group {group['name']} ({group['role']}): TP{size['tp']} x PP{size['pp']} x "
                f"DP{size['dp']} (EP{size['ep']}) on nodes {_fmt(group['nodes'])}")
        router = plan.get("router")
        if router:
            section.lines.append(f"- router {router['kind']} on {router['node_name']}: "
                                 f"`{' '.join(router['argv'])}`")
    else:
        section.lines.append(
            f"{plan['engine']} serving `{plan.get('model', '?')}` on {layout['nnodes']} node(s) via "
            f"{plan['backend']}: TP{layout['tp']} x PP{layout['pp']} x DP{layout['dp']} "
            f"(EP{layout['ep']}) = {layout['world_size']} ranks; endpoint {plan['head_url']}"
        )
    rows = []
    for node in plan["nodes"]:
        ranks = [r["global_rank"] for r in node["ranks"]]
        span = f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else _fmt(ranks)
        role = f"{node['role']} ({node['group']})" if node.get("group") else node["role"]
        rows.append([node["name"], node["host"], node["address"], role, span,
                     " ".join(node["argv"] or ["(placed by the head)"])])
    section.tables.append((["node", "host", "address", "role", "global ranks", "command"], rows))
    return section


def preflight_section(run_dir: RunDir) -> Section:
    data = _load_json(run_dir.preflight)
    section = Section("Node health and clocks")
    if data is None:
        section.notes.append("no preflight.json (launch ran without preflight, or not at all)")
        return section
    rows = [
        [n["node"], n.get("engine_version"), n.get("gpus") if n.get("gpus") is not None else "none found",
         n["clock_offset_ns"] / 1e6, n["clock_rtt_ns"] / 1e6]
        for n in data["nodes"]
    ]
    section.tables.append(
        (["node", "engine version", "GPUs", "clock offset vs head (ms)", "probe RTT (ms)"], rows)
    )
    return section


def bench_attempt_dirs(run_dir: RunDir) -> list[Path]:
    """Every bench invocation's folder, oldest first (a pre-attempt run kept its files in bench/)."""
    from magpie_trace.bench.results import attempts

    legacy = [run_dir.bench] if (run_dir.bench / "result.json").is_file() else []
    return legacy + attempts(run_dir.bench)


BENCH_COLUMNS = (
    "point", "profiled", "max_concurrency", "request_rate", "completed", "failed", "request_throughput",
    "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "p99_itl_ms",
)


def bench_section(run_dir: RunDir) -> Section:
    section = Section("Benchmark")
    folders = bench_attempt_dirs(run_dir)
    if not folders:
        section.notes.append("no benchmark results in this run")
        return section
    for folder in folders:
        result = _load_json(folder / "result.json") or {}
        name = folder.name if folder != run_dir.bench else "bench"
        state = "INVALID" if result.get("valid") is False else "valid" if result else "no result.json"
        section.lines.append(f"{name} ({state}, started {result.get('started_utc', '?')}): "
                             f"`{_rel(run_dir, folder)}`")
        if result.get("valid") is False:
            reasons = "; ".join(result.get("invalid_reasons") or ["(no reason recorded)"])
            section.notes.append(f"INVALID RUN ({name}): {reasons}. Numbers below are partial.")
        sweep = folder / "sweep.csv"
        if sweep.exists():
            with sweep.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            wanted = [c for c in BENCH_COLUMNS if rows and c in rows[0]]
            table = [[_num(row[c]) for c in wanted] for row in rows]
            if "profiled" in wanted:
                at = wanted.index("profiled")
                for row in table:
                    row[at] = "yes: profiler overhead" if row[at] == "True" else ""
            section.tables.append(([c.replace("_", " ") for c in wanted], table))
        section.images.extend(sorted((folder / "plots").glob("*.png")))
    return section


def _num(text: str) -> Any:
    try:
        return float(text) if "." in text or "e" in text else int(text)
    except ValueError:
        return text


def per_node_section(run_dir: RunDir) -> Section:
    section = Section("Per node during the benchmark")
    folders = bench_attempt_dirs(run_dir)
    result = (_load_json(folders[-1] / "result.json") or {}) if folders else {}
    per_node = result.get("per_node")
    if not per_node:
        section.notes.append("no per-node figures recorded")
        return section
    note = (result.get("topology") or {}).get("attribution_note")
    if note:
        section.notes.append(note)
    rows = []
    for name, node in per_node.items():
        telemetry = node.get("telemetry") or {}
        gpus = telemetry.get("gpus") or {}
        utils = [g["util_pct_mean"] for g in gpus.values() if g.get("util_pct_mean") is not None]
        mems = [g["mem_used_mib_max"] for g in gpus.values() if g.get("mem_used_mib_max") is not None]
        powers = [g["power_w_mean"] for g in gpus.values() if g.get("power_w_mean") is not None]
        rows.append([
            name, node.get("role"), "LOST" if node.get("lost") else "alive",
            len(gpus) or None,
            sum(utils) / len(utils) if utils else None,
            max(mems) if mems else None,
            sum(powers) if powers else None,
            telemetry.get("note") or telemetry.get("source"),
        ])
    section.tables.append((
        ["node", "role", "state", "GPUs sampled", "GPU util % (mean)", "GPU mem MiB (max)",
         "power W (sum of means)", "telemetry"],
        rows,
    ))
    return section


def alignment_section(run_dir: RunDir) -> Section:
    section = Section("Clock alignment")
    data = _load_json(run_dir.merged / "alignment.json")
    if data is None:
        section.notes.append("no merge in this run (merged/alignment.json missing)")
        return section
    section.lines.append(
        f"Reference node {data.get('reference_node')}; {data.get('collectives')} matched collectives. "
        "Offset: how far each node's clock runs ahead of the reference's at the start of the "
        "capture (drift: how fast that grows); it is taken out of every event of that node."
    )
    rows = []
    for name, node in (data.get("nodes") or {}).items():
        residuals = node.get("residuals") or {}
        rows.append([
            name, node.get("offset_ns", 0) / 1000.0, node.get("drift_ppm"), node.get("n_anchors"),
            node.get("method"), node.get("uncertainty_us"), residuals.get("end_skew_p05_us"),
            residuals.get("end_skew_median_us"), residuals.get("end_skew_p95_us"),
            residuals.get("causality_violations"),
        ])
        section.notes += [f"{name}: {warning}" for warning in node.get("warnings") or []]
    section.tables.append((
        ["node", "offset (µs)", "drift (ppm)", "anchors", "method", "uncertainty (µs)",
         "end skew p05 (µs)", "end skew p50 (µs)", "end skew p95 (µs)", "causality violations"],
        rows,
    ))
    section.notes += [f"WARNING: {warning}" for warning in data.get("warnings") or []]
    return section


def collectives_section(run_dir: RunDir) -> Section:
    section = Section("Cross-node collectives")
    summary = run_dir.merged / "nodes.csv"
    if not summary.exists():
        section.notes.append("no collective tables in this run")
        return section
    with summary.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows:
        header = list(rows[0])
        section.tables.append((header, [[_num(row[c]) for c in header] for row in rows]))
        waits = max(rows, key=lambda r: float(r.get("wait_time_per_rank_us") or 0))
        late = max(rows, key=lambda r: float(r.get("times_last_to_arrive") or 0))
        section.lines.append(
            f"{waits['node']} waits the most in collectives; {late['node']} arrives last most often "
            "(the straggler the others wait for)."
        )
    section.lines.append(f"Every matched collective, per rank: `{_rel(run_dir, run_dir.merged / 'collectives.csv')}`")
    return section


def files_section(run_dir: RunDir) -> Section:
    section = Section("Files")
    for path in (run_dir.config, run_dir.plan, run_dir.preflight, run_dir.logs, run_dir.bench,
                 run_dir.traces, run_dir.merged):
        if path.exists():
            section.lines.append(f"- [`{_rel(run_dir, path)}`]({_rel(run_dir, path)})")
    return section


SECTIONS = (topology_section, preflight_section, bench_section, per_node_section,
            alignment_section, collectives_section, files_section)


def build_sections(run_dir: RunDir) -> list[Section]:
    return [make(run_dir) for make in SECTIONS]


def render_markdown(run_dir: RunDir, sections: list[Section]) -> str:
    out = [f"# magpie-trace run {run_dir.run_id}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        out += [f"> {note}" for note in section.notes]
        if section.notes:
            out.append("")
        out += section.lines
        if section.lines:
            out.append("")
        for header, rows in section.tables:
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
            out.append("")
        out += [f"![{p.stem}]({_rel(run_dir, p)})" for p in section.images]
        if section.images:
            out.append("")
    return "\n".join(out)


def render_html(run_dir: RunDir, sections: list[Section]) -> str:
    esc = html.escape
    body = [f"<h1>magpie-trace run {esc(run_dir.run_id)}</h1>"]
    for section in sections:
        body.append(f"<h2>{esc(section.title)}</h2>")
        body += [f'<p class="note">{esc(note)}</p>' for note in section.notes]
        for line in section.lines:
            if line.startswith("- [`"):
                target = line.split("](", 1)[1].rstrip(")")
                body.append(f'<p><a href="{esc(target)}">{esc(target)}</a></p>')
            else:
                body.append(f"<p>{esc(line.replace('`', ''))}</p>")
        for header, rows in section.tables:
            body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
            body.append("</table>")
        for image in section.images:
            data = base64.b64encode(image.read_bytes()).decode()
            body.append(f'<figure><img alt="{esc(image.stem)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(image.stem)}</figcaption></figure>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;"
        "box-sizing:border-box}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.85em;display:block;max-width:100%;"
        "overflow-x:auto}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;"
        "overflow-wrap:anywhere}"
        "th{background:#f3f3f3}.note{background:#fff4d6;padding:6px 10px}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<title>magpie-trace {esc(run_dir.run_id)}</title><style>{style}</style></head><body>"
        + "\n".join(body) + "</body></html>"
    )


def write_report(run_dir: RunDir) -> tuple[Path, Path]:
    """Write report.md and report.html into the run folder; return their paths."""
    sections = build_sections(run_dir)
    atomic_write_text(run_dir.report_md, render_markdown(run_dir, sections))
    atomic_write_text(run_dir.report_html, render_html(run_dir, sections))
    return run_dir.report_md, run_dir.report_html
