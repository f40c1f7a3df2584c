"""The node side of the clock probe: timestamped UDP round trips with the controller's echo.

Standard library only, on purpose: this file's source is run on every node as `python -c <source>
HOST PORT TOKEN COUNT [OFFSET_NS DRIFT_PPM]`, under the node's own environment, so it reads the
clock the engine reads there (libfaketime included). Request k carries (k, t1: our clock when it
was sent, t4 of request k-1: our clock when that reply came back); the echo stamps its own clock on
arrival, so the controller ends up with every (t1, t2, t3, t4) and nothing has to come back here.

OFFSET_NS and DRIFT_PPM shift the clock as the simulator shifts a simulated node's clock
(`shifted_ns`), so a probe of a sim node reads that node's clock.
"""

from __future__ import annotations

import socket
import sys
import time

TRIMONTH_NS = 7_889_238 * 10**9  # Kineto's base-time period: the sim counts drift from its last boundary


def shifted_ns(true_ns: int, offset_ns: int, drift_ppm: float) -> int:
    """The simulator's clock of a node: true time + offset + drift since the last trimonth boundary."""
    since = true_ns - true_ns // TRIMONTH_NS * TRIMONTH_NS
    return true_ns + offset_ns + round(drift_ppm * 1e-6 * since)


def main(argv: list[str]) -> int:
    host, port, token, count = argv[0], int(argv[1]), argv[2], int(argv[3])
    offset, drift = (int(argv[4]), float(argv[5])) if len(argv) >= 6 else (0, 0.0)

    def now() -> int:
        return shifted_ns(time.time_ns(), offset, drift)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    last_t4 = 0
    for k in range(count):
        t1 = now()
        sock.sendto(f"{token} {k} {t1} {last_t4}".encode(), (host, port))
        last_t4 = 0
        try:
            while True:
                data = sock.recv(256)
                t4 = now()
                words = data.split()
                if len(words) == 2 and words[0].decode() == token and int(words[1]) == k:
                    last_t4 = t4
                    break
        except (socket.timeout, ValueError):
            continue
    for _ in range(3):  # the last t4; a lost packet only costs one sample
        sock.sendto(f"{token} {count} 0 {last_t4}".encode(), (host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
