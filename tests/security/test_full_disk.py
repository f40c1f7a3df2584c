"""Issue 11 finding 13: a full disk during collect is named as such, and collect can be re-run.

Found over ssh: the short copy on a full disk was reported as a source "changed while collecting".
The disk here is a real tmpfs, mounted small over the run's traces folder (as root, or through
passwordless sudo).
"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from magpie_trace.backends import make_backend
from magpie_trace.launch import launch, stop
from magpie_trace.plan import make_plan
from magpie_trace.profile import capture
from magpie_trace.rundir import new_run_dir
from tests.fixtures.missing import missing
from tests.fixtures.root import run_as_root
from tests.launch.simcluster import sim_config
from tests.profile.test_sim_capture import Load


def mount_tmpfs(path, size: str) -> None:
    """A tmpfs of `size` bytes over path, owned by us (mounted as root, or through sudo)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700,uid={os.geteuid()},gid={os.getegid()}"
    proc = run_as_root(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    if proc.returncode != 0:
        missing(f"mounting a small tmpfs needs root or passwordless sudo: {proc.stderr.strip()}")


def test_a_full_disk_during_collect_is_named_and_collect_can_run_again_over_ssh(ssh_scheduler, tmp_path):
    config = sim_config(ssh_scheduler(2), tmp_path, ranks_per_node=2, profile=True)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    state = launch(plan, run_dir, backend)
    try:
        with Load(plan.head_url):
            record = capture(plan, backend, run_dir, duration_s=0.5)
    finally:
        stop(plan, run_dir, backend, state)
        backend.close()
    sizes = sorted(t.size for t in record.traces)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    mount_tmpfs(run_dir.traces, f"{sizes[-1] + sizes[0] // 2}")  # room for one file and a half
    try:
        proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "collect", str(path)],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        leftovers = sorted(p.name for p in run_dir.traces.iterdir() if p.name.endswith(".tmp"))
    finally:
        unmounted = run_as_root(["umount", str(run_dir.traces)])
        assert unmounted.returncode == 0, unmounted.stderr
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("magpie-trace: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {run_dir.traces}: no space left on device"), errors
    assert "changed" not in errors[0]
    assert leftovers == []  # no half-written copy left behind
    # With room again, the same command brings every file.
    proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "collect", str(path)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert len(list(run_dir.traces.glob("*.trace.json.gz"))) == len(record.traces)
