"""Engines: vLLM, SGLang and the built-in simulator, behind one interface."""

from __future__ import annotations

from magpie_trace.engines.base import Engine, NodeContext
from magpie_trace.engines.sglang import SglangEngine
from magpie_trace.engines.sim_plan import SimEngine
from magpie_trace.engines.vllm import VllmEngine

_ENGINES: dict[str, type[Engine]] = {"vllm": VllmEngine, "sglang": SglangEngine, "sim": SimEngine}


def get_engine(name: str) -> Engine:
    return _ENGINES[name]()


__all__ = ["Engine", "NodeContext", "get_engine"]
