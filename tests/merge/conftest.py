"""Real trace pairs the alignment tests share (read once per module)."""

from __future__ import annotations

import pytest

from tests.merge.traces import gpu_partner, load, vllm_rank
from tests.real_traces import NCCL_RANK0, SENDRECV_PAIR


@pytest.fixture(scope="module")
def vllm_pair() -> tuple[dict, dict]:
    """The real vLLM CPU TP=2 pair (one machine, one clock)."""
    return load(vllm_rank(0)), load(vllm_rank(1))


@pytest.fixture(scope="module")
def nccl_pair() -> tuple[dict, dict]:
    """The real NCCL rank 0 and a partner made from it (kernel ends moved by up to +-3 us)."""
    rank0 = load(NCCL_RANK0)
    return rank0, gpu_partner(rank0, rank=1, jitter_us=3.0)


@pytest.fixture(scope="module")
def sendrecv_pair() -> tuple[dict, dict]:
    """A real 2-rank NCCL pair, one clock, already sampled: GPU SendRecv kernels only (HTA's)."""
    return load(SENDRECV_PAIR[0]), load(SENDRECV_PAIR[1])
