"""A clock of the time this process was able to run, for judging other nodes' silence.

A node is lost when it has said nothing for N seconds while we were listening. When this machine
itself stops running its processes (a 2-core machine saturated by the engines on it left every
process, the controller included, without a CPU for 14-19 s at a time), the silence is ours, not
the node's: its lines are waiting in a socket. A ticker thread advances the clock by the real time
between its ticks, but by at most MAX_STEP_S per tick, so a stall of the whole process counts as
one step. A frozen or unreachable node, with the controller running, is silent in this clock as
in real time.
"""

from __future__ import annotations

import threading
import time

TICK_S = 0.1
MAX_STEP_S = 1.0  # a tick this late means the process itself was not running


class AwakeClock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._awake = 0.0
        self._last = time.monotonic()
        self._ticker: threading.Thread | None = None

    def now(self) -> float:
        """Seconds this process was awake, on an arbitrary origin (compare differences only)."""
        with self._lock:
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="awake-clock", daemon=True)
                self._ticker.start()
            return self._advance()

    def _advance(self) -> float:
        t = time.monotonic()
        self._awake += min(t - self._last, MAX_STEP_S)
        self._last = t
        return self._awake

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            with self._lock:
                self._advance()


AWAKE = AwakeClock()
