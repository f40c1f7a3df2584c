"""Bad input gives one clear line naming the file, a non-zero exit, and touches no input."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from magpie_trace.errors import MagpieError, TraceError
from magpie_trace.merge import MergeOptions, merge
from tests.merge.traces import load, save, vllm_rank


def snapshot(folder: Path) -> dict[str, tuple[str, float]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime) for p in folder.iterdir()}


def run_cli(inp: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magpie_trace.cli", "merge", str(inp), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)


def error_lines(stderr: str) -> list[str]:
    """The error lines of a failed command (progress lines before them are the display's)."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    return [line for line in lines if line.startswith("error: ") or "Traceback" in line]


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


def _edited(name: str, pick, change: dict, expected: str):
    """A case that changes one event of rank 1 (the first that `pick` selects)."""
    def spoil(inp: Path) -> str:
        doc = load(vllm_rank(1))
        next(e for e in doc["traceEvents"] if pick(e)).update(change)
        save(doc, inp / "node1-TP1.trace.json.gz")
        return f"node1-TP1.trace.json.gz: {expected}"

    spoil.__name__ = name
    return spoil


def _anchor(e: dict) -> bool:
    return e.get("name") == "gloo:all_reduce"


def _other(e: dict) -> bool:
    return e.get("cat") == "cpu_op"


IN_PASS_2 = "an event's ts or dur is outside any plausible clock reading"
EDITS = [
    _edited("absurd_ts_on_an_anchor", _anchor, {"ts": 1e300},
            "an event's ts is 1e+300 us, outside any plausible clock reading"),
    _edited("absurd_ts_elsewhere", _other, {"ts": 1e300}, IN_PASS_2),
    # Fits int64 ns alone, not once the file's base is added (was an OverflowError traceback).
    _edited("ts_past_2100_on_an_anchor", _anchor, {"ts": 8.5e15},
            "an event's ts is 8500000000000000.0 us, outside any plausible clock reading"),
    _edited("ts_past_2100_elsewhere", _other, {"ts": 5e15}, IN_PASS_2),  # year 2185: was written out, exit 0
    _edited("ts_that_wraps_int64_elsewhere", _other, {"ts": 8.5e15}, IN_PASS_2),  # wrapped to a plausible time
    _edited("dur_of_centuries", _other, {"dur": 5e15}, IN_PASS_2),
    _edited("ts_not_a_number", _anchor, {"ts": "soon"}, "an event's ts is not a number ('soon')"),
]


def _base_past_2100(inp: Path) -> str:
    doc = load(vllm_rank(1))
    doc["baseTimeNanoseconds"] = 9 * 10**18
    save(doc, inp / "node1-TP1.trace.json.gz")
    return "node1-TP1.trace.json.gz: baseTimeNanoseconds is 9000000000000000000, outside any plausible clock reading"


def _gzip_bomb(inp: Path) -> str:
    """0.3 MB of gzip that inflates to 315 MB (zeros after a valid start): refused at the bound."""
    import zlib

    body = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunks = [body.compress(b'{"traceEvents": [')]
    zeros = bytes(1 << 20)
    chunks += [body.compress(zeros) for _ in range(300)]
    chunks.append(body.flush())
    (inp / "node1-TP1.trace.json.gz").write_bytes(b"".join(chunks))
    return "node1-TP1.trace.json.gz: inflates to more than 268 MB from 0.3 MB"


CASES = [_truncated, _not_json, _not_a_trace, _top_level_list, _two_files_one_rank, *EDITS, _base_past_2100, _gzip_bomb]


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
    assert error_lines(proc.stderr) == [f"error: {message}"]
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


def test_a_gzip_bomb_whose_trailer_lies_is_stopped_at_the_bound(good_pair, tmp_path):
    """The size the gzip trailer records is only a hint (mod 4 GiB): inflation itself stops at the
    bound, so memory stays bounded however the file lies."""
    import zlib

    from magpie_trace.merge.load import MAX_RATIO, MIN_BOMB_BYTES, Scratch, decompress

    body = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = body.compress(b"[") + b"".join(body.compress(bytes(1 << 20)) for _ in range(300)) + body.flush()
    path = tmp_path / "liar.json.gz"
    path.write_bytes(data[:-4] + (1000).to_bytes(4, "little"))  # claims 1000 bytes
    scratch = Scratch()
    with pytest.raises(TraceError, match="liar.json.gz: inflates to more than"):
        decompress(path, scratch)
    assert len(scratch.buffer) <= max(MAX_RATIO * len(data), MIN_BOMB_BYTES) + 1


def test_a_node_sharing_nothing_is_left_unaligned_not_a_failure(good_pair, tmp_path):
    """No common collective and no clock probe: the node cannot be placed. The merge says so, keeps
    it out of the merged trace and writes its file under unaligned/ on its own clock, exit 0."""
    doc = load(vllm_rank(1))
    doc["traceEvents"] = [e for e in doc["traceEvents"] if not e.get("name", "").startswith("gloo:")]
    save(doc, good_pair / "node1-TP1.trace.json.gz")
    result = merge(good_pair, tmp_path / "out", MergeOptions())
    node = result.nodes["node1"]
    assert node["aligned"] is False and node["method"] == "unaligned"
    assert "no clock probe" in node["unaligned"]
    assert any("node1: left on its own clock" in w for w in result.warnings)
    assert [Path(p).name for p in result.outputs["unaligned"]] == ["node1-TP1-rank1.trace.json.gz"]
    assert (tmp_path / "out" / "unaligned" / "node1-TP1-rank1.trace.json.gz").exists()
    merged = load(tmp_path / "out" / "merged.trace.json.gz")
    assert merged["magpie_trace"]["nodes"]["node1"]["aligned"] is False
    names = {e["args"]["name"] for e in merged["traceEvents"] if e.get("name") == "process_name"}
    assert names and not any(n.startswith("node1") for n in names)
    proc = run_cli(good_pair, tmp_path / "out-cli")
    assert proc.returncode == 0 and "node1: left on its own clock" in proc.stdout


def test_a_full_disk_leaves_no_temp_file_and_no_partial_output(good_pair, tmp_path):
    """Writes fail part-way (a file-size limit makes every write past 300 KB fail with EFBIG, as a
    full disk fails it): one line, exit 1, and the output folder holds what it held before (here a
    previous complete merge), no temp file."""
    out = tmp_path / "out"
    merge(good_pair, out, MergeOptions())
    def files() -> dict[str, tuple[str, float]]:
        return {str(p.relative_to(out)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
                for p in out.rglob("*") if p.is_file()}

    before = files()
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)); "
              "from magpie_trace.cli import main; sys.argv = ['magpie-trace', 'merge', sys.argv[1], '-o', sys.argv[2]]; "
              "main()")
    proc = subprocess.run([sys.executable, "-c", script, str(good_pair), str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "nothing was written" in lines[0], proc.stderr
    assert files() == before
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_an_unwritable_output_folder_is_one_line(good_pair, tmp_path):
    """(Tests run as root here, which writes into read-only folders: a path under a file is as
    unwritable for everyone.)"""
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "out"
    proc = run_cli(good_pair, out)
    assert proc.returncode == 1 and error_lines(proc.stderr) == [
        f"error: {out}: cannot write the merge there (Not a directory)"]


def test_a_window_wholly_outside_the_traces_is_refused(good_pair, tmp_path):
    with pytest.raises(MagpieError, match="holds no event of any trace"):
        merge(good_pair, tmp_path / "out", MergeOptions(window_ms=(1e9, 1e9 + 10)))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))
