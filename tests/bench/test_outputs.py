"""Result-file helpers and a load point's progress."""

from __future__ import annotations

import asyncio

from magpie_trace.bench.client import Progress
from magpie_trace.bench.progressbar import INTERVAL_S, report_progress
from magpie_trace.bench.results import attempts, new_attempt, sweep_csv


def test_sweep_csv_rows_and_empty_values() -> None:
    text = sweep_csv([{"point": "c1", "max_concurrency": 1, "mean_ttft_ms": 20.123456789, "request_goodput": None}])
    header, row = text.splitlines()
    assert header.startswith("point,profiled,max_concurrency,request_rate,completed")
    values = dict(zip(header.split(","), row.split(",")))
    assert values["mean_ttft_ms"] == "20.1235" and values["request_goodput"] == ""


class _Counts:
    """A reporter like the live display: lines, and counts that update in place."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counts: list[tuple[str, int, int, str]] = []

    def __call__(self, message: str) -> None:
        self.lines.append(message)

    def count(self, label: str, done: int, total: int, detail: str = "") -> None:
        self.counts.append((label, done, total, detail))


def _report_while(say, progress: Progress, steps: int) -> None:
    async def load() -> None:
        task = asyncio.create_task(report_progress(say, "c4", 10, progress))
        for _ in range(steps):
            await asyncio.sleep(INTERVAL_S * 1.2)
            progress.done += 3
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(load())


def test_point_progress_updates_the_count_and_ends_with_the_final_numbers() -> None:
    progress = Progress()
    progress.done, progress.failed, progress.in_flight = 5, 1, 2  # an earlier point's requests
    display = _Counts()
    _report_while(display, progress, 3)
    seen = [done for _, done, _, _ in display.counts]
    assert seen[0] == 0 and seen[-1] == 9 and len(set(seen)) >= 3  # the count moved while it ran
    assert all(label == "c4 requests" and total == 10 for label, _, total, _ in display.counts)
    assert display.counts[-1][3].startswith("2 in flight, 0 failed, ") and display.lines == []


def test_point_progress_is_one_line_for_a_plain_reporter() -> None:
    lines: list[str] = []
    _report_while(lines.append, Progress(), 2)
    assert len(lines) == 1 and lines[0].startswith("6/10 c4 requests (0 in flight, 0 failed, ")


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


def test_benches_started_at_once_never_share_an_attempt_folder(tmp_path) -> None:
    """Each invocation's folder is made with an exclusive mkdir: 8 at once, 5 times each, 40 folders."""
    import threading

    start = threading.Barrier(8)
    made: list[str] = []

    def bench() -> None:
        start.wait()
        for _ in range(5):
            made.append(new_attempt(tmp_path / "bench").name)

    threads = [threading.Thread(target=bench) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(made) == [f"attempt-{n:03d}" for n in range(1, 41)]
    assert [p.name for p in attempts(tmp_path / "bench")] == sorted(made)
    (tmp_path / "bench" / "attempt-1000").mkdir()  # numbers past 999 keep their order
    assert new_attempt(tmp_path / "bench").name == "attempt-1001"
