"""Pass 1's inflate: the bytes come out whole whatever the gzip trailer says, in one reused buffer."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from magpie_trace.errors import TraceError
from magpie_trace.merge.load import Scratch, decompress


def _text(n: int, seed: int) -> bytes:
    return b"".join(b'{"ph": "X", "ts": %d.%03d},' % (seed + k, k % 1000) for k in range(n))


def test_several_members_grow_the_buffer_past_the_trailer_size(tmp_path: Path):
    a, b = _text(50_000, 1), _text(10, 2)
    path = tmp_path / "two-members.json.gz"
    path.write_bytes(gzip.compress(a) + gzip.compress(b))  # the trailer records only len(b)
    buf, size, csize = decompress(path, Scratch())
    assert bytes(buf[:size]) == a + b and csize == path.stat().st_size


def test_the_buffer_is_reused_and_only_its_prefix_is_the_file(tmp_path: Path):
    scratch = Scratch()
    big, small = tmp_path / "big.json.gz", tmp_path / "small.json"
    big.write_bytes(gzip.compress(_text(40_000, 3)))
    small.write_bytes(_text(100, 4))
    first, _, _ = decompress(big, scratch)
    again, size, _ = decompress(small, scratch)
    assert again is first and bytes(again[:size]) == small.read_bytes()


def test_a_corrupt_member_names_the_file(tmp_path: Path):
    data = bytearray(gzip.compress(_text(20_000, 5)))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "node0-TP0.trace.json.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="node0-TP0.trace.json.gz: truncated or corrupt gzip"):
        decompress(path, Scratch())
