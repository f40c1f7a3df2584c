"""What the ray backend costs: cluster start, joining it, start/stop of one command, run, fetch.

Starts the test suite's loopback cluster (tests/fixtures/ray_cluster.py: 3 nodes at 127.0.0.1),
then times each backend operation on one node, `--repeat` times, and prints the median and the
worst. A start creates a new detached actor, so each one pays for a Ray worker process.

    python benchmarks/ray_backend.py [--repeat 5] [--fetch-mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Before anything imports ray: keep the loopback cluster's driver on 127.0.0.1 (see the fixture).
from tests.fixtures import ray_cluster as ray_fixture


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def report(name: str, seconds: list[float]) -> None:
    print(f"{name:<28} median {statistics.median(seconds):7.3f} s   worst {max(seconds):7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fetch-mib", type=int, default=256)
    args = parser.parse_args()

    from magpie_trace.backends.ray import RayBackend

    loopback = ray_fixture.start_cluster()
    report(f"cluster start ({ray_fixture.NODE_COUNT} nodes)", [loopback.start_s])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scheduler = loopback.scheduler(tmp)
            backend: RayBackend | None = None

            def connect() -> None:
                nonlocal backend
                backend = RayBackend(scheduler)

            report("join the cluster", [timed(connect)])
            assert backend is not None
            node = scheduler.nodes[1]
            log = f"{tmp}/sleep.log"
            starts, stops, runs = [], [], []
            for _ in range(args.repeat):
                handle = None

                def start() -> None:
                    nonlocal handle
                    handle = backend.start(node, ["sleep", "60"], {}, log)

                starts.append(timed(start))
                assert handle is not None
                stops.append(timed(lambda h=handle: backend.stop(node, h, grace_s=5)))
                runs.append(timed(lambda: backend.run(node, ["true"])))
            report("start (new actor)", starts)
            report("stop (TERM, verify, kill)", stops)
            report("run true", runs)

            source = Path(tmp) / "big.bin"
            with open(source, "wb") as out:
                for _ in range(args.fetch_mib):
                    out.write(os.urandom(1024 * 1024))
            target = Path(tmp) / "fetched.bin"
            seconds = timed(lambda: backend.fetch(node, str(source), str(target)))
            same = hashlib.sha256(source.read_bytes()).digest() == (
                hashlib.sha256(target.read_bytes()).digest()
            )
            print(
                f"fetch {args.fetch_mib} MiB{'':<15} {seconds:7.3f} s   "
                f"{args.fetch_mib / seconds:7.1f} MiB/s   sha256 {'equal' if same else 'DIFFERENT'}"
            )
            backend.close()
    finally:
        loopback.cluster.shutdown()


if __name__ == "__main__":
    main()
