"""Every sentence the report derives from data, checked against the tables and files it came from.

check_statements(run_dir) reads report.md as a reader would: each section's derived sentences
are parsed and held against that section's own table (or the file the section names), so a
sentence that says something its table does not is caught, in any run's report.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from magpie_trace.rundir import RunDir


def sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables of a section, as rows keyed by header."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split(" | ")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip()[1:-1])]
                rows.append(dict(zip(header, cells)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def check_collectives(text: str) -> None:
    rows = tables(text)[0] if tables(text) else []
    if len(rows) < 2:
        assert "wait" not in text.split("|")[0], text
        return
    wait = {row["node"]: float(row["wait_time_per_rank_us"].replace(",", "")) for row in rows}
    claim = re.search(r"^(\S+) waits the most in collectives \(\d+ µs per rank\), (\S+) the least "
                      r"\(\d+ µs per rank\): the others wait for (\S+)\.$", text, re.M)
    if max(wait.values()) == min(wait.values()):
        assert claim is None and "none holds them up" in text, text
        return
    assert claim, text
    most, least, waited_for = claim.groups()
    assert wait[most] == max(wait.values()), (most, wait)
    assert wait[least] == min(wait.values()), (least, wait)
    assert waited_for == least, (waited_for, wait)
    assert "straggler" not in text, text  # no second, contradicting claim


def check_analysis(text: str, run_dir: RunDir) -> None:
    claim = re.search(r"^(\S+) was the node the others waited for most in (\d+) of (\d+) steps with "
                      r"waits \((\d+) in a row\)", text, re.M)
    path = run_dir.merged / "analysis" / "stragglers.csv"
    if not path.exists():
        assert claim is None, text
        return
    with path.open(newline="") as handle:
        steps = list(csv.DictReader(handle))
    if not steps:
        assert claim is None, text
        return
    assert claim, text
    node, count, total, streak = claim.group(1), *map(int, claim.groups()[1:])
    counts: dict[str, int] = {}
    for row in steps:
        counts[row["straggler_node"]] = counts.get(row["straggler_node"], 0) + 1
    assert total == len(steps) and count == counts[node] == max(counts.values()), (claim.groups(), counts)
    assert streak == max(int(r["streak"]) for r in steps if r["straggler_node"] == node)


def check_bench(text: str, run_dir: RunDir) -> None:
    for name, state in re.findall(r"^(\S+) \((INVALID|valid|no result\.json), started ", text, re.M):
        folder = run_dir.bench if name == "bench" else run_dir.bench / name
        result = json.loads((folder / "result.json").read_text())
        assert (state == "INVALID") == (result["valid"] is False), (name, state)
        assert (f"INVALID RUN ({name})" in text) == (result["valid"] is False), name


def check_per_node(text: str, run_dir: RunDir) -> None:
    found = tables(text)
    if not found:
        return
    from magpie_trace.bench.results import read_result

    per_node = read_result(run_dir.bench)["per_node"]
    for row in found[0]:
        assert (row["state"] == "LOST") == bool(per_node[row["node"]].get("lost")), row


def check_attempts(text: str, run_dir: RunDir) -> None:
    data = json.loads((run_dir.root / "run.json").read_text())
    rows = tables(text)[0] if tables(text) else []
    assert len(rows) == (len(data["attempts"]) if len(data["attempts"]) > 1 else 0)
    for row, attempt in zip(rows, data["attempts"]):
        assert int(row["attempt"]) == attempt["attempt"]
        assert (row["outcome"] == "ok") == bool(attempt["ok"]), (row, attempt)


def check_statements(run_dir: RunDir) -> None:
    """Each derived sentence of run_dir's report.md against its own table or source file."""
    parts = sections(Path(run_dir.report_md).read_text())
    if "Cross-node collectives" in parts:
        check_collectives(parts["Cross-node collectives"])
    if "Where communication is exposed" in parts:
        check_analysis(parts["Where communication is exposed"], run_dir)
    if "Benchmark" in parts:
        check_bench(parts["Benchmark"], run_dir)
    if "Per node during the benchmark" in parts:
        check_per_node(parts["Per node during the benchmark"], run_dir)
    if "Attempts" in parts and (run_dir.root / "run.json").exists():
        check_attempts(parts["Attempts"], run_dir)
