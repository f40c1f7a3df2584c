"""Pick a TCP port for a server that will start a moment later.

Port 0 would hand out an ephemeral port, the same range the kernel gives outgoing connections, so
another process can take it before our server binds it. Picking below that range avoids the race.
"""

from __future__ import annotations

import random
import socket

_LOW, _HIGH = 20000, 32000  # below Linux's default ephemeral range (32768-60999)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing holds on this machine now, on any address (as preflight checks it: a server
    on 127.0.0.3 makes the port busy for one on 127.0.0.2 too), at random below the ephemeral range."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(_LOW, _HIGH)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port for {host} in {_LOW}-{_HIGH}")
