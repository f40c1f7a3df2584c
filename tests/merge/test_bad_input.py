"""Bad input gives one clear line naming the file, a non-zero exit, and touches no input."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from magpie_trace.errors import TraceError
from magpie_trace.merge import MergeOptions, merge
from tests.merge.traces import load, save, vllm_rank


def snapshot(folder: Path) -> dict[str, tuple[str, float]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime) for p in folder.iterdir()}


def run_cli(inp: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magpie_trace.cli", "merge", str(inp), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def good_pair(tmp_path) -> Path:
    inp = tmp_path / "in"
    inp.mkdir()
    for rank in (0, 1):
        (inp / f"node{rank}-TP{rank}.trace.json.gz").write_bytes(vllm_rank(rank).read_bytes())
    return inp


def _truncated(inp: Path) -> str:
    path = inp / "node1-TP1.trace.json.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "node1-TP1.trace.json.gz: truncated or corrupt gzip"


def _not_json(inp: Path) -> str:
    (inp / "node1-TP1.trace.json.gz").write_bytes(gzip.compress(b'{"traceEvents": [{"ph": "X", oops'))
    return "node1-TP1.trace.json.gz: not JSON"


def _not_a_trace(inp: Path) -> str:
    (inp / "node1-TP1.trace.json.gz").write_bytes(gzip.compress(b'{"hello": [1, 2, 3]}'))
    return "node1-TP1.trace.json.gz: not a trace (no traceEvents)"


def _top_level_list(inp: Path) -> str:
    (inp / "node1-TP1.trace.json.gz").write_bytes(gzip.compress(b"[1, 2, 3]"))
    return "node1-TP1.trace.json.gz: not a trace"


def _two_files_one_rank(inp: Path) -> str:
    (inp / "node2-TP1.trace.json.gz").write_bytes(vllm_rank(1).read_bytes())
    return "node1-TP1.trace.json.gz and"


def _no_common_collective(inp: Path) -> str:
    doc = load(vllm_rank(1))
    doc["traceEvents"] = [e for e in doc["traceEvents"] if not e.get("name", "").startswith("gloo:")]
    save(doc, inp / "node1-TP1.trace.json.gz")
    return "node1-TP1.trace.json.gz: shares no collective with node0-TP0.trace.json.gz"


CASES = [_truncated, _not_json, _not_a_trace, _top_level_list, _two_files_one_rank, _no_common_collective]


@pytest.mark.parametrize("spoil", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_input_is_one_line_naming_the_file(good_pair, tmp_path, spoil):
    expected = spoil(good_pair)
    before = snapshot(good_pair)
    with pytest.raises(TraceError) as err:
        merge(good_pair, tmp_path / "out", MergeOptions())
    message = str(err.value)
    assert expected in message and "\n" not in message
    proc = run_cli(good_pair, tmp_path / "out-cli")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {message}"]
    assert "Traceback" not in proc.stderr
    assert snapshot(good_pair) == before, "inputs untouched"
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert leftovers == [], "no partial output or temp files left"


def test_output_folder_must_not_be_the_input(good_pair):
    with pytest.raises(Exception, match="must not be the input folder"):
        merge(good_pair, good_pair, MergeOptions())


def test_a_failed_merge_gives_back_pass_1_memory(good_pair, tmp_path):
    from magpie_trace.merge.load import SCRATCH

    _not_json(good_pair)
    with pytest.raises(TraceError):
        merge(good_pair, tmp_path / "out", MergeOptions(jobs=1))
    assert len(SCRATCH.buffer) == 0
