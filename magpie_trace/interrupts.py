"""Every way the tool can be told to stop ends the way Ctrl-C does.

SIGTERM (a scheduler ending the job, `kill`), SIGHUP (the terminal or ssh session going away) and
the reader of our output going away (`magpie-trace run ... 2>&1 | head`: the next write fails
with EPIPE) are turned into the interrupt Ctrl-C delivers, so one path handles them all: the
load stops, what was measured is written, every node is torn down, run.json and the report are
written, and the exit code is 128 + the signal's number (SIGPIPE's for a closed output).

Teardown must not itself be cut short: inside `shielded()` a signal is only recorded, and
`pending()` hands it over once the teardown is done.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)
CTRL_C = 130

_lock = threading.Lock()
_received: int | None = None  # the first signal (SIGPIPE for a closed output)
_delivered = False  # turned into an interrupt already
_shield_depth = 0


def install() -> None:
    """Handle SIGTERM and SIGHUP like Ctrl-C in this process (call from the main thread)."""
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


def reinstall(previous: dict[int, object]) -> None:
    """Put back handlers a library replaced (Ray's ray.init sets SIGTERM to sys.exit)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in previous.items():
        if handler is _on_signal:
            signal.signal(signum, _on_signal)


def current() -> dict[int, object]:
    return {signum: signal.getsignal(signum) for signum in SIGNALS}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _record(signum)
    _deliver(frame)


def _record(signum: int) -> bool:
    """Remember the first reason to stop; True if this is it."""
    global _received
    with _lock:
        if _received is not None:
            return False
        _received = signum
        return True


def _deliver(frame: FrameType | None) -> None:
    """Interrupt the main thread as Ctrl-C would (once), unless a teardown is shielded."""
    global _delivered
    with _lock:
        if _delivered or _shield_depth:
            return
        _delivered = True
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):  # asyncio.run's handler cancels its main task: the load stops
            handler(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt
    _thread.interrupt_main(signal.SIGINT)


def output_closed(interrupt: bool = True) -> None:
    """The reader of stdout/stderr has gone: write nothing more, and stop as SIGPIPE would."""
    _record(signal.SIGPIPE)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    if interrupt:
        _deliver(None)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A signal that arrives inside is recorded, not delivered: teardown runs to its end."""
    global _shield_depth
    with _lock:
        _shield_depth += 1
    try:
        yield
    finally:
        with _lock:
            _shield_depth -= 1


def pending() -> KeyboardInterrupt | None:
    """The interrupt for a signal that was recorded but not delivered (it came while shielded)."""
    global _delivered
    with _lock:
        if _received is None or _delivered:
            return None
        _delivered = True
    return KeyboardInterrupt()


def received() -> int | None:
    return _received


def describe() -> str:
    """What stopped us, for the one error line and run.json."""
    if _received is None:
        return "interrupted"
    if _received == signal.SIGPIPE:
        return "terminated: the output was closed (SIGPIPE)"
    return f"terminated by {signal.Signals(_received).name}"


def exit_code() -> int:
    """128 + the signal's number; Ctrl-C's 130 when no other signal came first."""
    return CTRL_C if _received is None else 128 + _received
