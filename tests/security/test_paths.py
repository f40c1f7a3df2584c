"""Issue 11 finding 8: a node name or run id never leads a path out of its root.

Found over ssh: a node named `../../../x`, or output.run_id `../../../x`, wrote files at the
filesystem root. Both are refused at load now, and every path built from a name is checked to
stay under its root (the Python API can hand over a config that never went through the loader).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from magpie_trace.config import under
from magpie_trace.errors import ConfigError
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir
from tests.launch.simcluster import sim_config


@pytest.mark.parametrize("where", ["node name", "run id"])
def test_a_name_that_climbs_out_is_refused_and_writes_nothing_over_ssh(where, ssh_scheduler, tmp_path):
    scheduler = ssh_scheduler(2)
    scheduler.workdir = str(tmp_path / "work" / "a" / "b")
    config = sim_config(scheduler, tmp_path)
    config.output.dir = str(tmp_path / "runs" / "a" / "b")
    bench = config.benchmark  # small: where the name is let through, the run ends soon
    bench.input_len, bench.output_len, bench.num_prompts, bench.concurrency = 8, 4, 4, [2]
    raw = config.to_dict()
    climb = "../../../escape"
    if where == "node name":
        raw["scheduler"]["nodes"][1]["name"] = climb
        key = "scheduler.nodes[1].name"
    else:
        raw["output"]["run_id"] = climb
        key = "output.run_id"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "run", str(path)],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: {key}: {climb!r} is not a valid name (letters, digits, '.', '_', '-'; "
        "starting with a letter or digit; at most 128)"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "work").exists()
    assert not (tmp_path / "runs").exists()


def test_every_path_built_from_a_name_stays_under_its_root(tmp_path):
    from tests.launch.simcluster import local_scheduler

    config = sim_config(local_scheduler(tmp_path, 2), tmp_path)
    config.scheduler.nodes[1] = dataclasses.replace(config.scheduler.nodes[1], name="../../x")
    with pytest.raises(ConfigError, match=r"would leave .*/nodes$"):
        make_plan(config)  # no loader saw this name
    with pytest.raises(ConfigError, match="run id: '../x' is not a valid name"):
        new_run_dir(tmp_path / "runs", "../x")
    assert under("/w/n0", "r1", "node0.log") == "/w/n0/r1/node0.log"
    assert under("runs", "r1") == "runs/r1"
    for parts in (("..", "x"), ("/etc",), ("a/../../x",)):
        with pytest.raises(ConfigError, match="would leave /w"):
            under("/w", *parts)
