"""Prometheus and GPU telemetry parsing on recorded output formats (see data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from magpie_trace.bench.prometheus import deltas, parse_prometheus
from magpie_trace.bench.telemetry import parse_amd_json, parse_nvidia_csv

DATA = Path(__file__).parent / "data"


def test_nvidia_csv_h100() -> None:
    gpus = parse_nvidia_csv((DATA / "nvidia-smi-h100.csv").read_text())
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert (gpus[0].util_pct, gpus[0].mem_used_mib, gpus[0].mem_total_mib) == (97, 71234, 81559)
    assert gpus[0].power_w == pytest.approx(512.35) and gpus[1].temp_c == 30


def test_nvidia_csv_missing_fields_are_none() -> None:
    gpus = parse_nvidia_csv((DATA / "nvidia-smi-na.csv").read_text())
    assert gpus[0].power_w is None and gpus[0].util_pct == 12
    assert gpus[1].util_pct is None and gpus[1].mem_used_mib == 3


def test_nvidia_csv_foreign_format_refused() -> None:
    with pytest.raises(ValueError, match="expected 8 fields"):
        parse_nvidia_csv("0, 50, 1024\n")


def test_amd_smi_26_gpu_data_wrapper() -> None:
    gpus = parse_amd_json((DATA / "amd-smi-26-gpu_data.json").read_text())
    assert [(g.index, g.util_pct, g.power_w, g.mem_used_mib, g.mem_total_mib) for g in gpus] == [
        (0, 100, 103, 29777, 32624),
        (1, 100, 92, 29777, 32624),
    ]


def test_amd_smi_6x_bare_list_with_na_blocks() -> None:
    gpus = parse_amd_json((DATA / "amd-smi-6x-list.json").read_text())
    assert (gpus[0].util_pct, gpus[0].mem_util_pct, gpus[0].power_w) == (37, 12, 741)
    assert (gpus[1].util_pct, gpus[1].power_w, gpus[1].mem_used_mib) == (None, None, 283)


def test_prometheus_per_engine_deltas() -> None:
    text = (DATA / "vllm-metrics-dp2.txt").read_text()
    before = parse_prometheus(text)
    after = parse_prometheus(
        text.replace('engine="0",model_name="sim-llama"} 320.0', 'engine="0",model_name="sim-llama"} 420.0')
        .replace('engine="1",finished_reason="length",model_name="sim-llama"} 9.0',
                 'engine="1",finished_reason="length",model_name="sim-llama"} 12.0')
        .replace('time_to_first_token_seconds_count{engine="0",model_name="sim-llama"} 10.0',
                 'time_to_first_token_seconds_count{engine="0",model_name="sim-llama"} 14.0')
        .replace('time_to_first_token_seconds_sum{engine="0",model_name="sim-llama"} 0.25',
                 'time_to_first_token_seconds_sum{engine="0",model_name="sim-llama"} 0.35')
    )
    out = deltas(before, after)
    assert out["engines"]["0"]["generation_tokens"] == 100
    assert out["engines"]["1"]["requests_finished"] == 3
    assert out["engines"]["0"]["mean_ttft_ms"] == pytest.approx(25)
    assert out["engines"]["0"]["running_at_end"] == 3
    assert out["total"]["generation_tokens"] == 100


def test_prometheus_labels_with_escapes_and_junk_lines() -> None:
    scrape = parse_prometheus(
        '# TYPE x counter\nx{a="q\\"uote",b="c,d"} 2\nnot a sample line at all\ny 1e3 1700000000\n'
    )
    assert scrape.samples[("x", (("a", 'q"uote'), ("b", "c,d")))] == 2
    assert scrape.samples[("y", ())] == 1000
    assert scrape.types == {"x": "counter"}
