"""Atomic writes: a reader never sees half a file, and a failed run leaves no partial output.

Outputs follow the user's umask (0644 under the usual 022), so colleagues on a shared file system can
read reports and traces; tempfile.mkstemp would make every output 0600 whatever the umask.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new hidden sibling of target, opened for writing, mode 0666 less the umask.

    O_EXCL never opens a file or symlink already there, so a name planted by someone else fails
    instead of being written through."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _CREATE, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{target.parent}: no free temporary name for {target.name}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write data to path through a temp file in the same directory and a rename."""
    target = Path(path)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def temp_path_for(path: str | Path) -> Path:
    """A hidden sibling path (the file made, empty) to stream a large output into before `os.replace`."""
    fd, tmp = _create_temp(Path(path))
    os.close(fd)
    return tmp
