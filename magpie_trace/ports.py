"""Pick a TCP port for a server that will start a moment later.

Port 0 would hand out an ephemeral port, the same range the kernel gives outgoing connections, so
another process can take it before our server binds it. Picking below that range avoids the race.
"""

from __future__ import annotations

import random
import socket

_LOW, _HIGH = 20000, 32000  # below Linux's default ephemeral range (32768-60999)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at host now, chosen at random below the ephemeral range."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(_LOW, _HIGH)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port on {host} in {_LOW}-{_HIGH}")
