"""Independently compressed parts join into one ordinary gzip file that every reader accepts."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import pytest

from magpie_trace.merge.gzipjoin import crc32_combine, deflate, join


@pytest.mark.parametrize("size", [0, 1, 7, 8, 4095, 65537, 1 << 20])
def test_crc32_combine_matches_the_crc_of_the_concatenation(size):
    a, b = os.urandom(37), os.urandom(size)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_joined_parts_are_one_gzip_member_of_their_concatenation(tmp_path: Path):
    pieces = [b'{"traceEvents": [', os.urandom(200_000), b"], ", b"x" * 300_000]
    on_disk = tmp_path / "part.deflate"
    raw, crc, length = deflate(pieces[1])
    on_disk.write_bytes(raw)
    out = tmp_path / "joined.gz"
    join([deflate(pieces[0]), (on_disk, crc, length), deflate(pieces[2]), deflate(pieces[3])], out)
    data = out.read_bytes()
    assert gzip.decompress(data) == b"".join(pieces)  # checks the trailer's CRC and length
    assert zlib.decompressobj(31).decompress(data) == b"".join(pieces)  # one member, nothing left over
