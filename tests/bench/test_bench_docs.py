"""Every benchmark key is in docs/config.md's `benchmark` table and named in docs/bench.md, and every
flag of `magpie-trace bench` is in docs/bench.md: a key or flag added without its documentation fails here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from magpie_trace.cli import main
from magpie_trace.config import BenchmarkConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
GENERAL_FLAGS = {"--verbose", "--quiet", "--set", "--run", "--json"}  # every command's: docs/commands.md


def benchmark_table_keys() -> set[str]:
    """The keys in the first column of docs/config.md's `benchmark` table."""
    section = (DOCS / "config.md").read_text().split("## `benchmark`", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return keys


def test_every_benchmark_key_is_documented() -> None:
    fields = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    assert fields - benchmark_table_keys() == set()
    assert benchmark_table_keys() - fields == set()  # no documented key that does not exist
    bench = (DOCS / "bench.md").read_text()
    assert {f for f in fields if f"`{f}`" not in bench} == set()


def test_every_bench_flag_is_documented() -> None:
    bench = (DOCS / "bench.md").read_text()
    flags = {o for p in main.commands["bench"].params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    assert {f for f in flags - GENERAL_FLAGS if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", bench)} == set()
