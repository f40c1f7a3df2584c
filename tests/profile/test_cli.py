"""`magpie-trace profile` and `magpie-trace collect` on a sim run, as a user types them."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from magpie_trace.cli import main
from tests.launch.simcluster import local_scheduler, sim_config


def test_profile_then_collect_from_the_command_line(tmp_path):
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path, profile=True)
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    runner = CliRunner()
    # Nothing launched yet: one line, non-zero.
    result = runner.invoke(main, ["collect", str(path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("error: ") and "no run yet" in result.output

    assert runner.invoke(main, ["launch", str(path), "--no-preflight"]).exit_code == 0
    try:
        result = runner.invoke(main, ["collect", str(path)])
        assert result.exit_code == 1 and "no capture recorded" in result.output

        result = runner.invoke(main, ["profile", str(path), "--duration", "0.2", "--json"])
        assert result.exit_code == 0, result.output
        record = json.loads(result.output[result.output.index("{"):])
        assert record["profile_id"].endswith("-p1") and len(record["traces"]) == 3

        result = runner.invoke(main, ["collect", str(path)])
        assert result.exit_code == 0, result.output
        lines = [line for line in result.output.splitlines() if not line.startswith("magpie-trace:")]
        assert lines[0].startswith("3 trace(s) in ") and "(3 fetched, 0 already there)" in lines[0]
        assert lines[1].startswith("TraceLens collective report: "
                                   "TraceLens_generate_multi_rank_collective_report_pytorch --trace_glob ")
        assert "--world_size 2 --gpus_per_node 1" in lines[1]

        result = runner.invoke(main, ["profile", str(path), "--profile-id", "bad_id"])
        assert result.exit_code == 2 and "profile id 'bad_id'" in result.output
    finally:
        assert runner.invoke(main, ["stop", str(path)]).exit_code == 0
