"""Where the real trace files the tests read live: tests/data/traces, copied into the repository with
their provenance (tests/data/README.md), so a fresh clone's tests need nothing beside it."""

from __future__ import annotations

from pathlib import Path

TRACES = Path(__file__).resolve().parent / "data" / "traces"
VLLM_CPU_PAIR = TRACES / "vllm-cpu-tp2-2node"
NCCL_RANK0 = TRACES / "hta" / "nccl-2rank-rank0.json.gz"
LEGACY = TRACES / "hta" / "legacy-abs-ts-16rank-rank0.json.gz"
SENDRECV_PAIR = tuple(TRACES / "hta" / f"sampled-sendrecv-2rank-rank{r}.json.gz" for r in (0, 1))


def vllm_cpu(pattern: str) -> Path:
    """The one file of the real vLLM CPU TP=2 pair whose name matches pattern ("rank0.*", "vm_*")."""
    matches = sorted(VLLM_CPU_PAIR.glob(pattern))
    if len(matches) != 1:
        raise FileNotFoundError(f"{VLLM_CPU_PAIR}: {len(matches)} files match {pattern!r}, expected 1")
    return matches[0]
