"""One ordinary (single-member) gzip file made from parts compressed independently, in parallel.

Each part is raw deflate ended with a full flush, so parts concatenate into one deflate stream; the
writer adds the gzip header, a final empty block and a trailer whose CRC-32 is combined from the
parts' CRCs (zlib's crc32_combine, GF(2) matrix powers) without reading the data again. Multi-member
gzip would be simpler but not every reader accepts it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

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
    op = [_CRC_POLY] + [1 << n for n in range(31)]  # shifts the CRC register by one zero bit
    for _ in range(3):
        op = _gf2_square(op)  # ... by one zero byte
    while len2:  # by len2 zero bytes, one bit of len2 at a time
        if len2 & 1:
            crc1 = _gf2_times(op, crc1)
        len2 >>= 1
        op = _gf2_square(op)
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


def _copy_file(src: BinaryIO, dst: Any, size: int, bufsize: int) -> None:
    """Append src to dst inside the kernel when it can (no trip through user memory), else by reads."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
            if not n:
                break
            done += n
    except OSError:  # not on this file system / kernel: read and write
        pass
    if done < size:
        src.seek(done)
        while block := src.read(bufsize):
            _write_all(dst, block)


def _write_all(dst: Any, data: bytes) -> None:
    """An unbuffered write may take part of the data: write the rest."""
    view = memoryview(data)
    while view:
        view = view[dst.write(view):]


def join(parts: list[tuple[Path | bytes, int, int]], path: Path, bufsize: int = 8 << 20) -> None:
    """Write the gzip file `path` from parts (raw-deflate file path or bytes, crc, length), in order."""
    crc, total = 0, 0
    with open(path, "wb", buffering=0) as out:  # unbuffered: part files are appended by the kernel
        _write_all(out, _HEADER)
        for part, part_crc, length in parts:
            if isinstance(part, bytes):
                _write_all(out, part)
            else:
                with open(part, "rb") as f:
                    _copy_file(f, out, os.fstat(f.fileno()).st_size, bufsize)
            crc = crc32_combine(crc, part_crc, length)
            total += length
        _write_all(out, _FINAL_EMPTY_BLOCK + struct.pack("<II", crc, total & 0xFFFFFFFF))
