"""The events scan reads what a JSON parser reads, whatever the strings hold: escaped quotes and
backslashes (also across its 64-byte blocks), braces, brackets and colons inside strings, nested
args, keys it does not know, and it refuses a truncated trace."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from magpie_trace.analyze import eventscan as es

TRICKY = ['a"b', "c:\\", "\\\\", '{"ts": 1}', "[x]", "end\\", 'q\\"', "plain", "ü:{"]


def _events(rng: random.Random) -> list[dict]:
    out = []
    for k in range(400):
        name = rng.choice(TRICKY) + "x" * rng.randrange(0, 70)  # lengths move escapes across blocks
        args = {"External id": k, "note": rng.choice(TRICKY), "nested": {"name": "not the event's", "ts": 5},
                "list": [{"a": "]"}, "}"]}
        if k % 3 == 0:
            args["correlation"] = 1000 + k
        if k % 5 == 0:
            args["Process Group Name"] = "pg:" + rng.choice(TRICKY)
        event = {"ph": "X", "cat": rng.choice(["kernel", "cpu_op", 'c"at']), "name": name, "pid": rng.choice([7, "s:1"]),
                 "tid": k % 4, "ts": 1_000_000 + k * 7.125, "dur": round(rng.random() * 50, 3),
                 "args": args if k % 7 else None, "unknown": {"ph": "M"}}
        out.append(event)
        if k % 50 == 0:
            out.append({"ph": "M", "name": "thread_name", "pid": 7, "tid": k % 4, "args": {"name": f"t{k}"}})
            out.append({"ph": "i", "name": "instant", "ts": 1, "pid": 7, "tid": 0})
    return out


def _scan(raw: bytes) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    src = np.frombuffer(bytearray(raw), dtype=np.uint8)
    i = es.event_array(src, src.size)
    quotes = np.empty((src.size + 63) // 64, np.uint64)
    structure = np.empty_like(quotes)
    es.masks(src, src.size, quotes, structure)
    out = np.empty((2000, es.N_COLUMNS), np.int64)
    meta = np.empty((100, 2), np.int64)
    n_meta = np.zeros(1, np.int64)
    rows, end = es.scan(src, i, src.size, out, meta, n_meta, quotes, structure)
    return end, out[:rows], meta[: n_meta[0]], src


def _text(src: np.ndarray, lo: int, length: int) -> str:
    return orjson.loads(b'"' + bytes(src[lo : lo + length]) + b'"')


@pytest.mark.parametrize("indent", [False, True])
def test_scan_reads_what_a_json_parser_reads(indent: bool) -> None:
    events = _events(random.Random(16))
    raw = orjson.dumps({"schemaVersion": 1, "traceEvents": events, "after": "]}"},
                       option=orjson.OPT_INDENT_2 if indent else 0)
    end, rows, meta, src = _scan(raw)
    assert end == src.size
    timed = [e for e in events if e["ph"] == "X"]
    assert len(rows) == len(timed)
    for row, e in zip(rows, timed):
        assert _text(src, row[es.NAME_LO], row[es.NAME_LEN]) == e["name"]
        assert _text(src, row[es.CAT_LO], row[es.CAT_LEN]) == e["cat"]
        assert row[es.TS] == round(e["ts"] * 1000) and row[es.DUR] == round(e["dur"] * 1000)
        if isinstance(e["pid"], int):
            assert row[es.PID_KIND] == es.KIND_INT and row[es.PID_VAL] == e["pid"]
        else:
            assert row[es.PID_KIND] == es.KIND_STR and _text(src, row[es.PID_LO], row[es.PID_LEN]) == e["pid"]
        assert row[es.TID_KIND] == es.KIND_INT and row[es.TID_VAL] == e["tid"]
        args = e["args"] or {}
        assert row[es.EXTERNAL_ID] == args.get("External id", es.MISSING)
        assert row[es.CORRELATION] == args.get("correlation", es.MISSING)
        assert row[es.COMM_ARGS] == int("Process Group Name" in args)
        if e["args"] is not None:
            assert orjson.loads(bytes(src[row[es.ARGS_LO] : row[es.ARGS_HI]])) == args
        assert orjson.loads(bytes(src[row[es.EV_LO] : row[es.EV_HI]])) == e
    assert [orjson.loads(bytes(src[lo:hi]))["args"]["name"] for lo, hi in meta] == [
        e["args"]["name"] for e in events if e["ph"] == "M"]


def test_scan_refuses_a_truncated_trace() -> None:
    raw = orjson.dumps({"traceEvents": _events(random.Random(1))})
    for cut in (len(raw) // 3, len(raw) - 3):
        end, *_ = _scan(raw[:cut])
        assert end == -1
