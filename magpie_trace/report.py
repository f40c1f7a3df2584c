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
    section.lines.append(
        "Clock offset vs head: each node's host wall clock against the head's, from a few process-start "
        "round trips through the backend at launch (RTT in the last column, so only good to about half of "
        "it). It is the host's clock, not necessarily the engine's (an engine under a shifted clock, e.g. "
        "libfaketime, is not seen here) and not the trace's; the capture's clock probe and the alignment "
        "below measure those."
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
        f"Reference node {data.get('reference_node')}; {data.get('collectives')} matched collectives and "
        "transfers. Offset: how far each node's trace clock runs ahead of the reference's at the start of "
        "the capture (drift: how fast that grows); it is taken out of every event of that node. "
        "Placed by: collectives and send/recv bound it by causality (nothing ends on one rank before it "
        "started on the other), to within the uncertainty shown; the clock probe (UDP round trips with "
        "each node's engine clock right before and after the capture) places a node nothing else ties to "
        "the reference, to within half its round trip plus 0.1 ms (each process converts its own clock). "
        "Probe offset: what the probe measured against the reference, for comparison."
    )
    probes = _probe_offsets(run_dir, data.get("reference_node"))
    rows = []
    for name, node in (data.get("nodes") or {}).items():
        residuals = node.get("residuals") or {}
        offset = node.get("offset_ns", 0) / 1000.0 if node.get("aligned", True) else "not aligned"
        rows.append([
            name, offset, node.get("drift_ppm"), ", ".join(node.get("placed_by") or []), node.get("n_anchors"),
            node.get("method"), node.get("uncertainty_us"), probes.get(name), residuals.get("end_skew_p05_us"),
            residuals.get("end_skew_median_us"), residuals.get("end_skew_p95_us"),
            residuals.get("causality_violations"),
        ])
        section.notes += [f"{name}: {warning}" for warning in node.get("warnings") or []]
    section.tables.append((
        ["node", "offset (µs)", "drift (ppm)", "placed by", "anchors", "method", "uncertainty (µs)",
         "probe offset (µs)", "end skew p05 (µs)", "end skew p50 (µs)", "end skew p95 (µs)",
         "causality violations"],
        rows,
    ))
    section.notes += [f"WARNING: {warning}" for warning in data.get("warnings") or []]
    return section


def _probe_offsets(run_dir: RunDir, reference: str | None) -> dict[str, str]:
    """Per node name: the capture's clock probe (before the capture) against the reference, "µs +- µs"."""
    manifest = _load_json(run_dir.traces / "manifest.json") or {}
    names = {str(f.get("node")): f.get("node_name") for f in manifest.get("files") or [] if isinstance(f, dict)}
    first = {names.get(key, key): points[0] for key, points in (manifest.get("clock_probes") or {}).items()
             if isinstance(points, list) and points}
    if reference not in first:
        return {}
    ref = first[reference]
    return {name: f"{(p['offset_ns'] - ref['offset_ns']) / 1e3:,.1f} ± "
                  f"{(p['uncertainty_ns'] + ref['uncertainty_ns']) / 1e3:,.1f}" for name, p in first.items()}


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
        section.lines += _waits_statement(rows)
    section.lines.append(f"Every matched collective, per rank: `{_rel(run_dir, run_dir.merged / 'collectives.csv')}`")
    return section


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def analysis_section(run_dir: RunDir) -> Section:
    section = Section("Where communication is exposed")
    folder = run_dir.merged / "analysis"
    if not (folder / "breakdown_nodes.csv").exists():
        section.notes.append("no analysis in this run (magpie-trace analyze writes merged/analysis)")
        return section
    section.lines.append(
        "Per node, the mean rank's time between its first and last busy instant: compute only, "
        "communication hidden behind compute, exposed communication (nothing computes meanwhile), copies "
        "only, idle. GPU ranks are measured on the GPU, CPU-only ranks on their CPU ops and collectives."
    )
    columns = ("node", "domain", "total_us", "compute_only_us", "overlapped_us", "exposed_comm_us",
               "memcpy_only_us", "idle_us", "exposed_comm_pct", "comm_hidden_pct")
    rows = _csv_rows(folder / "breakdown_nodes.csv")
    section.tables.append((["node", "measured on", "total (µs)", "compute only (µs)", "hidden comm (µs)",
                            "exposed comm (µs)", "copies only (µs)", "idle (µs)", "exposed comm %",
                            "comm hidden %"], [[_num(r[c]) for c in columns] for r in rows]))
    stragglers = _csv_rows(folder / "stragglers.csv") if (folder / "stragglers.csv").exists() else []
    if stragglers:
        counts: dict[str, int] = {}
        for r in stragglers:
            counts[r["straggler_node"]] = counts.get(r["straggler_node"], 0) + 1
        worst = max(counts, key=lambda n: counts[n])
        streak = max(int(r["streak"]) for r in stragglers if r["straggler_node"] == worst)
        section.lines.append(
            f"{worst} was the node the others waited for most in {counts[worst]} of {len(stragglers)} steps "
            f"with waits ({streak} in a row); see `{_rel(run_dir, folder / 'wait_timeline.csv')}`."
        )
    families = _csv_rows(folder / "collective_families.csv") if (folder / "collective_families.csv").exists() else []
    if families:
        fam_cols = ("process_group", "family", "scope", "ranks", "calls", "time_us", "mean_time_us",
                    "mean_msg_bytes", "algorithm", "busbw_gbps")
        section.tables.append((["process group", "collective", "scope", "ranks", "calls", "time (µs)",
                                "mean (µs)", "mean bytes", "algorithm", "bus bw (GB/s)"],
                               [[_num(r[c]) if r[c] != "" else None for c in fam_cols] for r in families]))
    section.images += sorted((folder / "plots").glob("*.png"))
    section.lines.append(f"Tables: `{_rel(run_dir, folder)}`; your own SQL: `magpie-trace query "
                         f"{_rel(run_dir, run_dir.merged)} \"SELECT ...\"` (docs/analyze.md).")
    return section


def _waits_statement(rows: list[dict[str, str]]) -> list[str]:
    """Who waits for whom, from the wait column alone: a rank's wait in a collective is the time
    from its arrival to the last arrival, so the node that waits least is the one the others wait
    for. (`times_last_to_arrive` counts every collective, those inside one node too, so it is
    not a measure of who holds up the others.)"""
    if len(rows) < 2:
        return []
    wait = {row["node"]: float(row.get("wait_time_per_rank_us") or 0) for row in rows}
    most = max(wait, key=lambda n: wait[n])
    least = min(wait, key=lambda n: wait[n])
    if wait[most] == wait[least]:
        return ["Every node waits as long as the others in collectives: none holds them up."]
    return [f"{most} waits the most in collectives ({wait[most]:.0f} µs per rank), {least} the least "
            f"({wait[least]:.0f} µs per rank): the others wait for {least}."]


def files_section(run_dir: RunDir) -> Section:
    section = Section("Files")
    for path in (run_dir.config, run_dir.plan, run_dir.preflight, run_dir.logs, run_dir.bench,
                 run_dir.traces, run_dir.merged):
        if path.exists():
            section.lines.append(f"- [`{_rel(run_dir, path)}`]({_rel(run_dir, path)})")
    return section


def attempts_section(run_dir: RunDir) -> Section:
    """Every attempt at this run (a resume with --from is a new one): what each ran, and how
    it ended. Stages an attempt skipped keep the status of the attempt that ran them."""
    data = _load_json(run_dir.root / "run.json") or {}
    section = Section("Attempts")
    attempts = data.get("attempts") or []
    if len(attempts) < 2:
        section.notes.append("one attempt (no resume)")
        return section
    rows = []
    for attempt in attempts:
        ran = ", ".join(f"{s['name']} {s['status']}" for s in attempt.get("stages", []))
        rows.append([attempt["attempt"], attempt.get("from") or "start", ran or "-",
                     "ok" if attempt.get("ok") else (attempt.get("error") or "failed")])
    section.tables.append((["attempt", "from", "stages run", "outcome"], rows))
    if not data.get("ok", True):
        section.notes.append(f"the run is not ok: {data.get('error')}")
    return section


SECTIONS = (topology_section, attempts_section, preflight_section, bench_section, per_node_section,
            alignment_section, collectives_section, analysis_section, files_section)


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
