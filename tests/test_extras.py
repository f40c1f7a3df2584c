"""Ray is an extra (`magpie-trace[ray]`): without it everything but the ray backend works, and
choosing that backend stops with one line naming the extra."""

from __future__ import annotations

import subprocess
import sys

import yaml

# Runs the CLI with `import ray` failing as it does where Ray is not installed.
WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from magpie_trace.cli import main; main()"


def cli_without_ray(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, stdin=subprocess.DEVNULL)


def test_ray_backend_without_ray_names_the_extra(tmp_path):
    config = tmp_path / "ray.yaml"
    config.write_text(yaml.safe_dump({
        "scheduler": {"backend": "ray", "nodes": ["127.0.0.1"]},
        "server": {"engine": "sim", "model": "sim-llama"},
        "output": {"dir": str(tmp_path / "runs")},
    }))
    plan = cli_without_ray("plan", str(config), cwd=tmp_path)  # planning needs no Ray
    assert plan.returncode == 0, plan.stderr
    proc = cli_without_ray("launch", str(config), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: scheduler.backend: ray needs Ray, which is not installed here: pip install 'magpie-trace[ray]'"
    ]
    assert "Traceback" not in proc.stderr


def test_the_package_imports_no_ray_outside_the_ray_backend():
    code = ("import sys, magpie_trace.cli, magpie_trace.run, magpie_trace.launch, magpie_trace.merge, "
            "magpie_trace.bench, magpie_trace.backends.ssh, magpie_trace.backends.local; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
