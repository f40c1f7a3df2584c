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
    text = sweep_csv([{"point": "c1", "max_concurrency": 1, "mean_ttft_ms": 20.123456789, "request_goodput": None}])
    header, row = text.splitlines()
    assert header.startswith("point,profiled,max_concurrency,request_rate,completed")
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


def test_plots_including_gpu_utilization_from_recorded_samples(tmp_path) -> None:
    from pathlib import Path

    from magpie_trace.bench.plots import write_plots
    from magpie_trace.bench.telemetry import parse_nvidia_csv

    gpus = [g.to_dict() for g in parse_nvidia_csv((Path(__file__).parent / "data" / "nvidia-smi-h100.csv").read_text())]
    telemetry = {"node0": [{"t": 100.0 + i, "gpus": gpus} for i in range(5)], "node1": []}
    points = [
        {"point": f"c{c}", "max_concurrency": c, "completed": 10, "output_throughput": 100.0 * c, "total_token_throughput": 150.0 * c,
         "request_throughput": 2.0 * c, "median_ttft_ms": 20.0 + c, "p90_ttft_ms": 22.0 + c, "p99_ttft_ms": 25.0 + c,
         "median_tpot_ms": 5.0, "p90_tpot_ms": 6.0, "p99_tpot_ms": None}
        for c in (1, 4, 16)
    ]
    written, notes = write_plots(tmp_path, points, [], telemetry, gpus=8)
    assert notes == []
    assert sorted(written) == [f"plots/{n}" for n in (
        "e2el_vs_concurrency.png", "gpu_utilization.png", "itl_vs_concurrency.png", "latency_cdf.png",
        "throughput_per_gpu_vs_per_user.png", "throughput_vs_concurrency.png", "throughput_vs_latency.png",
        "timeline_c16.png", "tpot_vs_concurrency.png", "ttft_vs_concurrency.png")]
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, notes = write_plots(tmp_path / "none", [{"point": "c1", "max_concurrency": 1, "completed": 0}], [], {"node0": []})
    assert notes == ["no completed requests: no throughput or latency plots",
                     "no GPU telemetry on any node: no GPU utilization plot"]
