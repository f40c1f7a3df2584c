"""One ordinary (single-member) gzip file made from parts compressed independently, in parallel.

Each part is raw deflate ended with a full flush, so parts concatenate into one deflate stream; the
writer adds the gzip header, a final empty block and a trailer whose CRC-32 is combined from the
parts' CRCs (zlib's crc32_combine, GF(2) matrix powers) without reading the data again. Multi-member
gzip would be simpler but not every reader accepts it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from isal import isal_zlib

LEVEL = 1
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_FINAL_EMPTY_BLOCK = b"\x03\x00"
_CRC_POLY = 0xEDB88320


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B)."""
    if len2 == 0:
        return crc1
    odd = [_CRC_POLY] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


class PartWriter:
    """Writes one part: raw deflate into `path`, tracking CRC-32 and length of what went in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb")
        self._comp = isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, -15)
        self.crc = 0
        self.length = 0

    def write(self, data: bytes) -> None:
        self.crc = isal_zlib.crc32(data, self.crc)
        self.length += len(data)
        self._file.write(self._comp.compress(data))

    def close(self) -> tuple[int, int]:
        self._file.write(self._comp.flush(isal_zlib.Z_FULL_FLUSH))
        self._file.close()
        return self.crc, self.length


def deflate(data: bytes) -> tuple[bytes, int, int]:
    """A small in-memory part: (raw deflate, crc, length)."""
    comp = isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush(isal_zlib.Z_FULL_FLUSH), isal_zlib.crc32(data), len(data)


def join(parts: list[tuple[Path | bytes, int, int]], out: BinaryIO, bufsize: int = 8 << 20) -> None:
    """Write a gzip file from parts (raw-deflate file path or bytes, crc, length), in order."""
    out.write(_HEADER)
    crc, total = 0, 0
    for part, part_crc, length in parts:
        if isinstance(part, bytes):
            out.write(part)
        else:
            with open(part, "rb") as f:
                while block := f.read(bufsize):
                    out.write(block)
        crc = crc32_combine(crc, part_crc, length)
        total += length
    out.write(_FINAL_EMPTY_BLOCK)
    out.write(struct.pack("<II", crc, total & 0xFFFFFFFF))
