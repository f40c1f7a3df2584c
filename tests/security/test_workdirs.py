"""Issue 11 finding 5 (and issue 13's per-user /tmp dirs): node work dirs are per user, made
0700, and never a symlink or folder another user planted.

Found over ssh: the default `/tmp/magpie-trace/<node>/<run>` was the same path for every user, so
another user could plant a symlink there and have the run write through it. Here "another user"
is `nobody` (uid 65534): the tests run as root, which may give files away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from magpie_trace.config import NodeConfig, SchedulerConfig, default_workdir
from magpie_trace.errors import MagpieError
from magpie_trace.launch import load_state
from magpie_trace.plan import make_plan
from magpie_trace.run import run
from magpie_trace.rundir import RunDir
from tests.fixtures.missing import missing
from tests.fixtures.root import run_as_root
from tests.fixtures.ray_cluster import LABEL
from tests.launch.simcluster import local_scheduler, sim_config
from tests.procs import leftover_processes, wait_for
from tests.security.runs import scheduler_for

NOBODY = 65534


def shared_tmp(tmp_path: Path) -> Path:
    """A folder like /tmp: everyone may create entries, only their owner may remove them."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


def plant(shared: Path, victim: Path, kind: str) -> Path:
    """What another user leaves where our work dir will be: a link to victim, or a folder."""
    spot = shared / "magpie-trace-me"
    if kind == "symlink":
        spot.symlink_to(victim)
    else:
        spot.mkdir()
        spot.chmod(0o777)
    give_to_nobody(spot)
    return spot


def give_to_nobody(spot: Path) -> None:
    """Make spot another user's (a link itself, not its target): as root, or through sudo."""
    if os.geteuid() == 0:
        os.lchown(spot, NOBODY, NOBODY)
        return
    if run_as_root(["chown", "-h", f"{NOBODY}:{NOBODY}", str(spot)]).returncode == 0:
        return
    missing("planting another user's folder needs root or passwordless sudo (chown to nobody)")


def small(config):
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 16, 8, 8
    bench.concurrency, bench.warmup_requests = [2], 1
    return config


def workdir_scheduler(backend: str, request, tmp_path: Path, root: Path) -> SchedulerConfig:
    if backend == "ssh":
        scheduler = scheduler_for(backend, request, tmp_path)
    elif backend == "ray":
        cluster = request.getfixturevalue("ray_cluster")
        nodes = [NodeConfig(host="127.0.0.1", name=f"node{i}", ray_labels={LABEL: cluster.labels[i]},
                            workdir=str(root / f"node{i}")) for i in range(2)]  # one IP: a dir apiece
        scheduler = cluster.scheduler(str(root), nodes)
    else:
        scheduler = local_scheduler(tmp_path, 2)
    scheduler.workdir = str(root)
    return scheduler


def check_refused(run_dir: RunDir, message: str, spot: Path, why: str) -> None:
    assert message.startswith(("node0: ", "node1: ")) and f"{spot} {why}" in message, message
    run_json = json.loads((run_dir.root / "run.json").read_text())
    assert run_json["ok"] is False and run_json["error"] == message
    assert {s["name"]: s["status"] for s in run_json["stages"]}["launch"] == "failed"
    assert run_dir.report_md.is_file()
    state = load_state(run_dir) if run_dir.state.exists() else None
    if state is not None:  # whatever started was stopped
        assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)


@pytest.mark.parametrize("backend", ["ssh", "ray", "local"])
def test_a_planted_symlink_is_refused_not_written_through(backend, request, tmp_path):
    shared = shared_tmp(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    spot = plant(shared, victim, "symlink")
    config = small(sim_config(workdir_scheduler(backend, request, tmp_path, spot), tmp_path))
    if backend == "ssh":  # the command line, as a user meets it
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "run", str(path)],
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.splitlines()
        assert lines[-1].startswith("error: ") and not [l for l in lines if "Traceback" in l]
        message = lines[-1].removeprefix("error: ")
    else:
        with pytest.raises(MagpieError) as info:
            run(config)
        message = str(info.value)
    run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
    check_refused(run_dir, message, spot, "is a symlink of uid 65534")
    assert list(victim.iterdir()) == [], "the run wrote through another user's symlink"

    if backend in ("local", "ssh"):  # a fresh root is made 0700 and ours, and the run goes through
        fresh = shared / "magpie-trace-fresh"
        config.scheduler.workdir = str(fresh)
        result = run(config)
        assert result.ok and fresh.stat().st_uid == os.getuid()
        assert [oct(p.stat().st_mode & 0o777) for p in (fresh, fresh / "node0")] == ["0o700", "0o700"]


def test_a_folder_another_user_made_is_refused_over_ssh(ssh_scheduler, tmp_path):
    spot = plant(shared_tmp(tmp_path), tmp_path / "unused", "folder")
    config = small(sim_config(ssh_scheduler(2), tmp_path))
    config.scheduler.workdir = str(spot)
    with pytest.raises(MagpieError) as info:
        run(config)
    run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
    check_refused(run_dir, str(info.value), spot, f"belongs to uid 65534, not to you (uid {os.geteuid()}): refused")
    assert list(spot.iterdir()) == []


def test_the_default_work_dir_is_per_user():
    config = sim_config(SchedulerConfig(backend="ssh", nodes=[NodeConfig(host="h1"), NodeConfig(host="h2", ssh_user="bob")]),
                        Path("/unused"))
    config.scheduler.ssh.user = "alice"
    plan = make_plan(config, run_id="r1")
    assert [n.workdir for n in plan.nodes] == ["/tmp/magpie-trace-alice/node0", "/tmp/magpie-trace-bob/node1"]
    config.scheduler.backend = "local"
    assert make_plan(config, run_id="r1").nodes[0].workdir == f"{default_workdir()}/node0"
    import pwd

    assert default_workdir() == f"/tmp/magpie-trace-{pwd.getpwuid(os.getuid()).pw_name}"
