"""Check a trace file where it lies: complete gzip?, size, sha256, and its `distributedInfo`.

One streaming pass over the compressed bytes does all of it, with memory bounded by a chunk: a
trace of hundreds of MB is never loaded whole. torch writes traces in place (not atomically), so
"complete" means the gzip stream ends with its trailer; a file cut short, or still being written,
fails that. `distributedInfo` is found wherever it lies in the stream (Kineto writes it before
`traceEvents`, other writers after).

Standard library only, on purpose: this file's source is also run as a script on every node
(`python -c <this file> PATH...`, one JSON line per path) so the node reads its own files and only
the small results travel back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib

CHUNK = 1 << 20
KEY = b'"distributedInfo"'
MAX_INFO_BYTES = 1 << 20  # a distributedInfo larger than this is not one we can use


class _InfoFinder:
    """Finds `"distributedInfo": {...}` in a stream of decompressed chunks, without buffering it."""

    def __init__(self) -> None:
        self.tail = b""  # the last bytes seen before the key was found (a key may straddle chunks)
        self.found = False
        self.capture = bytearray()
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.value: dict | None = None
        self.gave_up = False

    def feed(self, data: bytes) -> None:
        if self.value is not None or self.gave_up:
            return
        if not self.found:
            window = self.tail + data
            at = window.find(KEY)
            if at < 0:
                self.tail = window[-len(KEY) :]
                return
            self.found = True
            data = window[at + len(KEY) :]
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        """Copy bytes from the key's colon to the brace that closes its object."""
        for byte in data:
            if self.depth == 0:
                if byte == 0x7B:  # {
                    self.depth = 1
                    self.capture.append(byte)
                elif byte not in b" \t\r\n:":
                    self.gave_up = True  # not an object
                    return
                continue
            self.capture.append(byte)
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte == 0x7B:
                self.depth += 1
            elif byte == 0x7D:
                self.depth -= 1
                if self.depth == 0:
                    self._finish()
                    return
            if len(self.capture) > MAX_INFO_BYTES:
                self.gave_up = True
                return

    def _finish(self) -> None:
        try:
            value = json.loads(bytes(self.capture))
        except ValueError:
            self.gave_up = True
            return
        self.value = value if isinstance(value, dict) else None


def probe(path: str) -> dict:
    """{path, size, sha256, complete, error, rank, world_size} for one file (never raises)."""
    result: dict = {"path": path, "size": None, "sha256": None, "complete": False,
                    "error": None, "rank": None, "world_size": None}
    digest = hashlib.sha256()
    finder = _InfoFinder()
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    size = 0
    try:
        with open(path, "rb") as handle:
            while True:
                data = handle.read(CHUNK)
                if not data:
                    break
                size += len(data)
                digest.update(data)
                while data:
                    if decoder.eof:  # the previous member ended; these bytes start another
                        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    finder.feed(decoder.decompress(data))
                    data = decoder.unused_data if decoder.eof else b""
    except FileNotFoundError:
        result["error"] = "missing"
        return result
    except OSError as exc:
        result["error"] = f"unreadable: {exc.strerror or exc}"
        return result
    except zlib.error as exc:
        result["size"] = size
        result["error"] = f"not a valid gzip file ({exc})"
        return result
    result["size"] = size
    result["sha256"] = digest.hexdigest()
    if size == 0:
        result["error"] = "empty"
    elif not decoder.eof:
        result["error"] = "truncated (the gzip stream has no end)"
    else:
        result["complete"] = True
    info = finder.value
    if info is not None:
        rank, world = info.get("rank"), info.get("world_size")
        result["rank"] = rank if isinstance(rank, int) else None
        result["world_size"] = world if isinstance(world, int) else None
    return result


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            data = handle.read(CHUNK)
            if not data:
                return digest.hexdigest()
            digest.update(data)


def main(paths: list[str]) -> None:
    """Probe files in parallel threads (zlib and sha256 release the GIL): a node's 8 rank files
    take about as long as one."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(len(paths), os.cpu_count() or 1, 16))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(probe, paths):
            sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
