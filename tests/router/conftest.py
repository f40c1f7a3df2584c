"""The real routers (sglang-router, vllm-router: the `test` extra installs them)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROUTER_SCRIPTS = {"sglang-router": ["sglang-router", "launch"], "vllm-router": ["vllm-router"]}


def router_command(kind: str) -> list[str]:
    """The router's console script next to this python (the test venv), else on PATH; skips (fails
    under CI) when the router is not installed."""
    script, *rest = ROUTER_SCRIPTS[kind]
    beside = Path(sys.executable).parent / script
    found = str(beside) if beside.exists() else shutil.which(script)
    if found is None:
        message = f"{script} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return [found, *rest]
