"""The built-in simulator engine (`engine: sim`): a small vLLM look-alike for tests and the demo.

Run as `python -m magpie_trace.engines.sim serve ...` (see __main__.py). The head node serves a
vLLM-compatible HTTP API with exact, configurable TTFT and ITL; headless nodes join it over a
rendezvous connection; every node runs one child process per rank, and each child writes that
rank's Kineto trace (named as vLLM's GPU worker names it) while profiling.
"""

SIM_VERSION = "0.1.0"
