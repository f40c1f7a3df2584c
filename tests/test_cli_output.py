"""What the command line prints: the JSON error object of --json on any failure, -q and -v accepted
before or after the command, and the shell completion the docs tell users to install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson

from magpie_trace.cli import error_object
from magpie_trace.errors import NodeError
from tests.real_traces import vllm_cpu

SCRIPT = Path(sys.executable).parent / "magpie-trace"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "magpie_trace.cli", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env=env)


def test_json_prints_an_error_object_on_failure(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = cli("plan", str(missing), "--json")
    assert proc.returncode == 2
    error = orjson.loads(proc.stdout)
    assert error["ok"] is False and error["error"]["exit_code"] == 2
    assert error["error"]["type"] == "ConfigError" and str(missing) in error["error"]["message"]
    assert proc.stderr.strip() == f"error: {error['error']['message']}"  # the same one line for people

    # A usage error (a bad option value) of a command given --json: also the object, exit 2.
    proc = cli("merge", str(tmp_path), "--window", "5", "--json")
    assert proc.returncode == 2
    error = orjson.loads(proc.stdout)["error"]
    assert error["type"] == "BadParameter" and "expected START:END" in error["message"]


def test_the_error_object_names_the_node():
    assert error_object(NodeError("node1", "sshd refused"), 1) == {"ok": False, "error": {
        "type": "NodeError", "message": "node1: sshd refused", "exit_code": 1, "node": "node1"}}


def test_quiet_and_verbose(tmp_path):
    traces = tmp_path / "traces"
    traces.mkdir()
    for rank in (0, 1):
        (traces / f"node{rank}-TP{rank}.trace.json.gz").write_bytes(vllm_cpu(f"rank{rank}.*").read_bytes())
    args = ("--outputs", "alignment")
    normal = cli("merge", str(traces), *args, "-o", str(tmp_path / "a"))
    quiet = cli("merge", str(traces), *args, "-o", str(tmp_path / "b"), "-q")
    verbose = cli("-v", "merge", str(traces), *args, "-o", str(tmp_path / "c"))
    for proc in (normal, quiet, verbose):
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("merged 2 file(s)")  # the result is printed at every level
    assert normal.stderr.startswith(f"magpie-trace: merging the traces in {traces} into ")
    assert quiet.stderr == ""
    assert re.match(r"magpie-trace: \[ +\d+\.\ds\] merging the traces in ", verbose.stderr)


def test_shell_completion_as_documented(tmp_path):
    env = {**os.environ, "_MAGPIE_TRACE_COMPLETE": "bash_source"}
    source = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert "complete -o nosort -F _magpie_trace_completion magpie-trace" in source.stdout
    env = {**os.environ, "_MAGPIE_TRACE_COMPLETE": "bash_complete", "COMP_WORDS": "magpie-trace me",
           "COMP_CWORD": "1"}
    words = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert words.stdout.split() == ["plain,merge"]
    docs = (Path(__file__).resolve().parents[1] / "docs" / "commands.md").read_text()
    assert 'eval "$(_MAGPIE_TRACE_COMPLETE=bash_source magpie-trace)"' in docs


def test_report_without_config_or_run_folder_says_what_to_give(tmp_path):
    proc = cli("report", "--run", str(tmp_path / "no-such-run"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: report: give the run folder (--run DIR), or CONFIG to find the "
                                   "run in its output.dir")
