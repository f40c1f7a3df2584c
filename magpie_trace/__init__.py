"""magpie-trace: launch, benchmark, profile and merge traces of multi-node vLLM/SGLang servers."""

from magpie_trace.config import Config, load_config
from magpie_trace.errors import ConfigError, MagpieError, NodeError, TraceError
from magpie_trace.plan import Plan, make_plan

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "MagpieError",
    "NodeError",
    "Plan",
    "TraceError",
    "load_config",
    "make_plan",
]
