"""The compiled byte scanner against a Decimal-exact JSON parser: any event array, any printing of its
numbers, gives exactly the transformed nanoseconds, and valid JSON with everything else intact."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magpie_trace.errors import TraceError
from magpie_trace.merge import bytescan
from magpie_trace.merge.rewrite import RewriteJob, Transform, _Rewriter

SPACES = st.sampled_from(["", " ", "  ", "\n    "])


@st.composite
def number_text(draw: st.DrawFn) -> tuple[str, int]:
    """A JSON number for a timestamp in microseconds, printed in one of the ways writers do, and its ns."""
    ns = draw(st.integers(min_value=0, max_value=9 * 10**15))
    style = draw(st.sampled_from(["kineto", "short", "int", "exp"]))
    if style == "kineto":
        return f"{ns // 1000}.{ns % 1000:03d}", ns
    if style == "int":
        return str(ns // 1000), ns // 1000 * 1000
    text = str(Decimal(ns) / 1000)
    if style == "exp":
        text = f"{Decimal(ns) / 1000:E}"
        return text, int((Decimal(text) * 1000).to_integral_value())
    return text, ns


@st.composite
def event_array(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    events, stamps = [], []
    for i in range(draw(st.integers(1, 30))):
        text, ns = draw(number_text())
        pid = draw(st.sampled_from(["7", "12345", '"Spans"', '""', "0"]))
        sp = draw(SPACES)
        events.append(f'{{"ph": "X", "name": "k{i}, \\"ts\\": 1", "pid":{sp}{pid}, "ts":{sp}{text}, "dur":{sp}1.5,'
                      f' "args": {{"x": [1, 2]}}}}')
        stamps.append(ns)
    return ("[" + ",\n  ".join(events) + "]").encode(), stamps


def _job(offset: float, drift: float) -> RewriteJob:
    return RewriteJob(index=2, n_files=5, label="node1-TP3", source=Path("unused"), events=(0, 0), top=[], values={},
                      has_base=True, transform=Transform(10**9, 0, offset, drift, 5 * 10**15), meta_cuts=[],
                      process_names={}, aligned_path=None, merged_part=None)


def _rewrite(job: RewriteJob, data: bytes, aligned: bool, merged: bool,
             cuts: list[tuple[int, int]] | None = None) -> tuple[bytes, bytes]:
    a, m = _Rewriter(job).chunk(data, aligned, merged, cuts or [])
    return bytes(a) if a is not None else b"", bytes(m) if m is not None else b""


@settings(max_examples=150, deadline=None)
@given(event_array(), st.integers(-(10**9), 10**9), st.sampled_from([0.0, 20.0, -7.5]))
def test_rewritten_timestamps_are_exact(array, offset, drift):
    data, stamps = array
    job = _job(float(offset), drift)
    aligned, merged = _rewrite(job, data[1:-1], True, True)
    out = json.loads(b"[" + aligned + b"]", parse_float=Decimal)  # exact decimals (floats lose ns)
    src = json.loads(data, parse_float=Decimal)
    expected = job.transform.apply(np.array(stamps, dtype=np.int64))
    for event, want, original in zip(out, expected, src):
        assert int((Decimal(event["ts"]) * 1000).to_integral_value()) == want
        assert event["name"] == original["name"] and event["args"] == original["args"]
        assert event["pid"] == original["pid"]
    pids = [e["pid"] for e in json.loads(b"[" + merged + b"]")]
    assert all(isinstance(p, int) and 2000 < p < 3000 for p in pids)
    assert len({p for p in pids}) == len({e["pid"] for e in src})


def test_keys_inside_strings_are_left_alone():
    data = b'{"name": "a, \\"ts\\": 5", "ts": 7, "args": {"s": "\\\\"}, "dur": 2}'
    aligned, _ = _rewrite(_job(0.0, 0.0), data, True, False)
    doc = orjson.loads(aligned)
    assert doc["name"] == orjson.loads(data)["name"] and doc["args"] == {"s": "\\"}
    assert round(doc["ts"] * 1000) == 7000 + 10**9 and doc["dur"] == 2


def test_merged_output_drops_the_cut_ranges_and_names_every_pid():
    data = b'{"pid": "Spans", "ts": 1}, {"pid": 12345, "ts": 2}, {"pid": 3, "ts": 3}'
    rw = _Rewriter(_job(0.0, 0.0))
    cut = (data.index(b', {"pid": 3'), len(data))
    _, merged = rw.chunk(data, False, True, [cut])
    events = orjson.loads(b"[" + bytes(merged) + b"]")
    assert [e["pid"] for e in events] == [2001, 2002]
    assert rw.pids == {b'"Spans"': 2001, b"12345": 2002}


def test_flow_ids_are_made_unique_per_file():
    data = b'{"ph": "s", "id": 41, "pid": 1, "ts": 1.000, "cat": "ac2g", "name": "ac2g"}'
    _, merged = _rewrite(_job(0.0, 0.0), data, False, True)
    assert orjson.loads(merged)["id"] == 41 * 5 + 2


def test_pids_keep_their_numbers_across_chunks_and_too_many_are_refused():
    rw = _Rewriter(_job(0.0, 0.0))
    chunks = {b'{"pid": 7, "ts": 1}, {"pid": "Spans", "ts": 2}': [2001, 2002],
              b'{"pid": "Spans", "ts": 3}, {"pid": 7, "ts": 4}': [2002, 2001]}
    for chunk, pids in chunks.items():
        _, merged = rw.chunk(chunk, False, True, [])
        assert [e["pid"] for e in orjson.loads(b"[" + bytes(merged) + b"]")] == pids
    many = b", ".join(b'{"pid": %d, "ts": 1}' % p for p in range(100, 1100))
    with pytest.raises(TraceError, match="node1-TP3: more than 999 processes"):
        rw.chunk(many, False, True, [])


def test_positions_are_all_found_when_the_first_array_is_too_small():
    data = b", ".join(b'{"ts": %d, "x": {"a:b": 1}, "dur": 2, "pid": 3}' % k for k in range(50))
    src = np.frombuffer(data, dtype=np.uint8)
    found, count = bytescan.positions(bytescan.key_colons, np.empty(4, dtype=np.int64), src)
    assert count == 150 and found.size >= count
    keys = [data[data.rfind(b'"', 0, p - 1) + 1 : p - 1] for p in found[:count].tolist()]
    assert keys == [b"ts", b"dur", b"pid"] * 50
