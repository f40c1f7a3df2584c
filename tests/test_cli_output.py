"""What the command line prints: the JSON error object of --json on any failure, -q and -v accepted
before or after the command, and the shell completion the docs tell users to install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import yaml

from magpie_trace.cli import error_object
from magpie_trace.errors import NodeError

SCRIPT = Path(sys.executable).parent / "magpie-trace"
ROOT = Path(__file__).resolve().parents[1]


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
    """A launch whose preflight fails at once: progress, then the error line, at each level."""
    config = yaml.safe_load((ROOT / "examples" / "local-sim.yaml").read_text())
    config["server"]["command"] = [str(tmp_path / "no-such-python")]
    config["output"] = {"dir": str(tmp_path / "runs")}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    normal = cli("launch", str(path))
    quiet = cli("launch", str(path), "-q")
    verbose = cli("-v", "launch", str(path))
    for proc in (normal, quiet, verbose):
        assert proc.returncode == 1 and proc.stderr.splitlines()[-1].startswith("error: node0: "), proc.stderr
    assert normal.stderr.startswith("magpie-trace: preflight on every node\n")
    assert len(quiet.stderr.splitlines()) == 1  # the error line only
    assert re.match(r"magpie-trace: \[ +\d+\.\ds\] preflight on every node\n", verbose.stderr)


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
