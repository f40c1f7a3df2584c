"""`magpie-trace merge`: a thin command over the library (summary, --json, options, defaults)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.merge.traces import vllm_rank


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magpie_trace.cli", "merge", *args],
                          capture_output=True, text=True, timeout=300)


def _traces(tmp_path: Path) -> Path:
    inp = tmp_path / "run" / "traces"
    inp.mkdir(parents=True)
    for rank in (0, 1):
        (inp / f"node{rank}-TP{rank}.trace.json.gz").write_bytes(vllm_rank(rank).read_bytes())
    return inp


def test_json_output_and_default_folder_next_to_a_runs_traces(tmp_path):
    inp = _traces(tmp_path)
    proc = run(str(inp), "--json", "--outputs", "alignment,tables", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    result = orjson.loads(proc.stdout)
    assert result["output_dir"] == str(tmp_path / "run" / "merged")
    assert set(result["nodes"]) == {"node0", "node1"} and result["collectives"] >= 576
    assert (tmp_path / "run" / "merged" / "alignment.json").exists()
    assert not (tmp_path / "run" / "merged" / "aligned").exists()


def test_summary_and_window(tmp_path):
    inp = _traces(tmp_path)
    proc = run(str(inp), "-o", str(tmp_path / "out"), "--window", "100:200", "--outputs", "aligned")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("merged 2 file(s)") and "matched collectives" in lines[0]
    assert any(line.strip().startswith("node1: offset") for line in lines)
    assert sorted(p.name for p in (tmp_path / "out" / "aligned").iterdir()) == [
        "node0-TP0-rank0.trace.json.gz", "node1-TP1-rank1.trace.json.gz"]


def test_bad_options_are_one_line(tmp_path):
    inp = _traces(tmp_path)
    proc = run(str(inp), "--window", "5")
    assert proc.returncode == 2 and "expected START:END" in proc.stderr
    proc = run(str(inp), "--outputs", "aligned,pictures")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: unknown output(s) ['pictures']; choose from aligned, merged, tables, alignment, events")


def test_merge_prints_the_tracelens_command_as_run_does(tmp_path):
    inp = _traces(tmp_path)
    out = tmp_path / "out"
    proc = run(str(inp), "-o", str(out), "--outputs", "aligned,alignment")
    assert proc.returncode == 0, proc.stderr
    command = (f"TraceLens: TraceLens_generate_multi_rank_collective_report_pytorch --trace_glob "
               f"'{out}/aligned/*rank*.trace.json.gz' --world_size 2 --gpus_per_node 1")
    assert command in proc.stdout.splitlines(), proc.stdout
