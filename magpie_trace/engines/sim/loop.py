"""An asyncio event loop whose timers fire within microseconds, not up to a millisecond late.

epoll_wait takes its timeout in whole milliseconds, rounded up, so a plain asyncio timer fires
0-1 ms late; that alone would eat the sim's 1 ms timing budget. On Linux the selector below also
arms a timerfd (nanosecond resolution) for the same timeout, so epoll wakes when it fires, and
the thread's timer slack is set to 1 ns. Elsewhere the stock loop is used.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
import os
import select
import selectors
import sys

_CLOCK_MONOTONIC = 1  # time.monotonic() and asyncio's loop.time() use this clock
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = 0o2000000
_PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerfdSelector(selectors.EpollSelector):
    """EpollSelector that also wakes on a timerfd armed for each select's timeout."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        super().__init__()
        self._settime = libc.timerfd_settime
        self._tfd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self._tfd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._spec = _Itimerspec()
        # Registered on the epoll object itself, not in the selector's key map, so asyncio
        # never sees it; a wake by the timerfd alone returns an empty ready list.
        self._selector.register(self._tfd, select.EPOLLIN)

    def select(self, timeout: float | None = None) -> list:
        # EpollSelector.select, plus arming and draining the timerfd.
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            ns = int(timeout * 1e9)
            self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
            self._settime(self._tfd, 0, ctypes.byref(self._spec), None)
            timeout = math.ceil(timeout * 1e3) * 1e-3  # a fallback; the timerfd fires first
        ready = []
        try:
            events = self._selector.poll(timeout, len(self._fd_to_key) + 1)
        except InterruptedError:
            return ready
        for fd, event in events:
            if fd == self._tfd:
                try:
                    os.read(fd, 8)
                except BlockingIOError:
                    pass
                continue
            key = self._fd_to_key.get(fd)
            if key:
                mask = (selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0) | (
                    selectors.EVENT_READ if event & ~select.EPOLLOUT else 0)
                ready.append((key, mask & key.events))
        return ready

    def close(self) -> None:
        os.close(self._tfd)
        super().close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A loop with precise timers where the platform allows it, else the default loop."""
    if sys.platform != "linux":
        return asyncio.new_event_loop()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    return asyncio.SelectorEventLoop(_TimerfdSelector(libc))
