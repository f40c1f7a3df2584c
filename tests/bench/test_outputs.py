"""Result-file helpers and the progress line."""

from __future__ import annotations

import asyncio
import io

from magpie_trace.bench.client import Progress
from magpie_trace.bench.progressbar import ProgressBar
from magpie_trace.bench.results import masked, sweep_csv


def test_secrets_are_masked_in_the_recorded_config() -> None:
    config = {"server": {"env": {"HF_TOKEN": "hf_abc", "VLLM_HOST_IP": "10.0.0.1"}},
              "benchmark": {"tokenizer": "meta-llama/Llama-3.1-8B"}}
    out = masked(config)
    assert out["server"]["env"] == {"HF_TOKEN": "***", "VLLM_HOST_IP": "10.0.0.1"}
    assert out["benchmark"]["tokenizer"] == "meta-llama/Llama-3.1-8B"
    assert config["server"]["env"]["HF_TOKEN"] == "hf_abc"  # the input is not modified


def test_sweep_csv_rows_and_empty_values() -> None:
    text = sweep_csv([{"label": "c1", "max_concurrency": 1, "mean_ttft_ms": 20.123456789, "request_goodput": None}])
    header, row = text.splitlines()
    assert header.startswith("label,max_concurrency,request_rate,completed")
    values = dict(zip(header.split(","), row.split(",")))
    assert values["mean_ttft_ms"] == "20.1235" and values["request_goodput"] == ""


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_only_on_a_terminal() -> None:
    progress = Progress()
    progress.done, progress.failed, progress.in_flight = 5, 1, 2
    quiet = ProgressBar("c4", 10, Progress(), stream=io.StringIO())
    assert not quiet.enabled
    tty = _Tty()
    bar = ProgressBar("c4", 10, progress, stream=tty)
    progress.done += 3

    async def draw() -> None:
        task = asyncio.create_task(bar.run())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(draw())
    last = tty.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("c4 [#########") and "3/10 in flight 2, failed 0" in last
