"""The awake clock: a stall of this whole process (the machine gave it no CPU) is not counted as a
node's silence; while the process runs, it keeps real time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

CHILD = """
import json, sys, time
from magpie_trace.awake import AWAKE
a0, m0 = AWAKE.now(), time.monotonic()
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps({"awake": AWAKE.now() - a0, "real": time.monotonic() - m0}), flush=True)
"""


def _measure(stop_s: float, run_s: float) -> dict:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(run_s)
        if stop_s:
            os.kill(child.pid, signal.SIGSTOP)  # as a machine that runs nothing of ours
            time.sleep(stop_s)
            os.kill(child.pid, signal.SIGCONT)
            time.sleep(0.3)
        child.stdin.write("\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()


def test_a_stall_of_the_whole_process_counts_as_one_step():
    measured = _measure(stop_s=4.0, run_s=1.0)
    assert measured["real"] >= 5.0
    assert measured["awake"] <= measured["real"] - 2.5, measured  # the 4 s stop counts as <= 1 s


def test_it_keeps_real_time_while_the_process_runs():
    measured = _measure(stop_s=0.0, run_s=2.0)
    assert abs(measured["awake"] - measured["real"]) < 0.05, measured
