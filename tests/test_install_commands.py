"""README's two commands and CI: install.sh demo|test|engine are what README shows and what .ci/run
runs (the fast tier), and a pytest that collects nothing fails the command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fixtures.missing import missing

ROOT = Path(__file__).resolve().parents[1]


def shell_lines(text: str) -> list[str]:
    """The commands of every bash block (comments and blank lines left out)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_shows_the_install_commands_and_ci_runs_them_in_order():
    readme = shell_lines((ROOT / "README.md").read_text())
    assert readme[:3] == ["bash install.sh demo", "bash install.sh test", "bash install.sh engine"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    run = [line.strip() for line in ci.splitlines() if line.startswith("bash ")]
    assert run == ["bash install.sh test"]
    assert re.search(r"^export CI=", ci, re.M)
    assert not re.search(r"TIME_[A-Z_]+", (ROOT / "README.md").read_text())  # every time measured


def test_the_installer_names_each_system_package_and_why():
    script = (ROOT / "install.sh").read_text()
    readme = (ROOT / "README.md").read_text()
    for package in ("python3-venv", "openssh-server", "openssh-client", "slurm-wlm", "munge"):
        assert re.search(rf"^#   .*{package}", script, re.M) and f"`{package}`" in readme, package
    assert "rsync" not in script  # nothing installed that nothing uses


def test_a_pytest_that_collects_nothing_fails_the_test_command(tmp_path):
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        missing("openssh-server is not installed: install.sh test would install it first")
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix}  # the environment these tests run in
    proc = subprocess.run(["bash", str(ROOT / "install.sh"), "test", "-k", "no_test_has_this_name_zq",
                           "-p", "no:cacheprovider", "tests/test_self_contained.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 5, proc.stderr[-2000:]  # pytest's "no tests ran", not 0
    assert "using the active virtual environment" in proc.stderr
