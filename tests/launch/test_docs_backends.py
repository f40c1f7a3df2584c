"""The configs shown in docs/backends.md and docs/troubleshooting.md are valid and plan as described."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from magpie_trace.config import config_from_dict
from magpie_trace.plan import make_plan
from tests.slurm.configs import as_if_allocated

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)
SNIPPETS = [
    pytest.param(text, id=f"{name}-{i}")
    for name in ("backends.md", "troubleshooting.md")
    for i, text in enumerate(BLOCK.findall((DOCS / name).read_text()))
]


def test_the_docs_show_configs():
    assert len(SNIPPETS) >= 6


@pytest.mark.parametrize("text", SNIPPETS)
def test_doc_config_is_valid_and_plans(text):
    config = as_if_allocated(config_from_dict(yaml.safe_load(text), source="docs"))
    plan = make_plan(config, run_id="docs")
    assert plan.nodes[0].argv
    if config.server.executor == "ray":  # "the other config nodes run nothing"
        assert all(node.argv is None for node in plan.nodes[1:])
        assert "--distributed-executor-backend" in plan.nodes[0].argv
    for node, entry in zip(plan.nodes, config.scheduler.nodes):
        assert node.env.get("VLLM_HOST_IP", entry.address) == entry.address
        for key, value in config.scheduler.env.items():
            assert node.env[key] == value
        if config.scheduler.shared_dir and config.profile.enabled:
            shared = f"{config.scheduler.shared_dir}/magpie-trace/docs/traces/{node.name}"
            assert node.trace_dir == shared
