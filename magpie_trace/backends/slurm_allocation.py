"""The Slurm allocation a run's nodes come from: the one we are inside, or one asked for.

Only Slurm's own client commands are used (squeue, scontrol, sinfo, salloc, scancel), each with an
argv list; they find the cluster as the user's shell does (slurm.conf, or SLURM_CONF).
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from magpie_trace.config import NodeConfig, SchedulerConfig, SlurmConfig
from magpie_trace.errors import ConfigError, MagpieError, NodeError

JOB_NAME = "magpie-trace"
QUERY_TIMEOUT_S = 30.0
REPORT_EVERY_S = 15.0
# Node states (sinfo %T, flags such as `*` stripped) a run must not use.
BAD_STATES = ("down", "drain", "fail", "maint", "reboot", "power", "future", "unknown")

Progress = Callable[[str], None]


def slurm(argv: list[str], timeout_s: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one Slurm client command; a missing command is one line naming it."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise MagpieError(f"scheduler.backend: slurm: {argv[0]} is not installed here "
                          "(run magpie-trace where the Slurm commands are)") from None
    except subprocess.TimeoutExpired:
        raise MagpieError(f"{argv[0]} did not answer within {timeout_s:g} s (is slurmctld up?)") from None


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


@dataclass
class NodeState:
    address: str
    state: str
    reason: str

    def problem(self, host: str) -> str | None:
        """Why the node cannot be used, or None."""
        base = self.state.rstrip("*~#!%$@^-+").lower()
        if base.startswith(BAD_STATES):
            why = f" ({self.reason})" if self.reason and self.reason != "none" else ""
            return f"Slurm reports {host} {self.state}{why}"
        return None


def node_states(hosts: list[str]) -> dict[str, NodeState]:
    """NodeAddr, state and reason of each Slurm node, in one sinfo call."""
    result = slurm(["sinfo", "--noheader", "--Node", f"--nodes={','.join(hosts)}",
                    "--format=%N|%o|%T|%E"])
    if result.returncode != 0:
        raise MagpieError(f"sinfo: {first_line(result.stderr) or 'failed'}")
    states = {}
    for line in result.stdout.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            states[parts[0].strip()] = NodeState(parts[1].strip(), parts[2].strip(), parts[3].strip())
    return states


def expand_hostlist(hostlist: str) -> list[str]:
    result = slurm(["scontrol", "show", "hostnames", hostlist])
    if result.returncode != 0:
        raise MagpieError(f"scontrol show hostnames {hostlist}: {first_line(result.stderr)}")
    return result.stdout.split()


def job_hosts(job_id: str) -> list[str]:
    """The nodes of a running job, in Slurm's order (the batch host first in practice)."""
    result = slurm(["squeue", "--noheader", f"--jobs={job_id}", "--format=%T|%N"])
    fields = result.stdout.strip().split("|")
    if result.returncode != 0 or len(fields) != 2:
        detail = first_line(result.stderr) or "not in the queue"
        raise MagpieError(f"Slurm job {job_id}: {detail}")
    state, hostlist = fields
    if state != "RUNNING":
        raise MagpieError(f"Slurm job {job_id} is {state}, not RUNNING: it has no nodes to run on")
    return expand_hostlist(hostlist)


def resolve_nodes(scheduler: SchedulerConfig, source: str, job_id: str, hosts: list[str]) -> None:
    """Fill scheduler.nodes from the allocation (all of it, head first) or check the listed
    subset against it; each node's address defaults to its Slurm NodeAddr."""
    if scheduler.nodes:
        for i, node in enumerate(scheduler.nodes):
            if node.host not in hosts:
                raise ConfigError(
                    f"{source}: scheduler.nodes[{i}].host: {node.host} is not a node of Slurm "
                    f"job {job_id} ({', '.join(hosts)})"
                )
    else:
        scheduler.nodes = [NodeConfig(host=host, name=f"node{i}") for i, host in enumerate(hosts)]
    states = node_states([node.host for node in scheduler.nodes])
    for node in scheduler.nodes:
        state = states.get(node.host)
        if not node.address or node.address == node.host:
            node.address = state.address if state and state.address else node.host
    scheduler.slurm.job_id = job_id


def check_node(node: NodeConfig) -> None:
    """NodeError when Slurm reports the node DOWN, DRAIN, FAIL, ... (preflight)."""
    state = node_states([node.host]).get(node.host)
    if state is None:
        raise NodeError(node.name, f"Slurm does not know a node {node.host}")
    problem = state.problem(node.host)
    if problem:
        raise NodeError(node.name, problem)


# ------------------------------------------------------------------------------------------------
# Asking for an allocation


def salloc_argv(slurm_config: SlurmConfig, count: int, hosts: list[str]) -> list[str]:
    """salloc --no-shell with the configured request; the user's salloc_args come last (they win)."""
    argv = ["salloc", "--no-shell", f"--job-name={JOB_NAME}", f"--nodes={count}"]
    argv += allocation_options(slurm_config)
    if hosts:
        argv.append(f"--nodelist={','.join(hosts)}")
    return [*argv, *slurm_config.salloc_args]


def allocation_options(slurm_config: SlurmConfig) -> list[str]:
    """The request's options shared by salloc and sbatch (not the node count)."""
    options = []
    for key, flag in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos"),
                      ("time", "--time"), ("gres", "--gres"), ("constraint", "--constraint")):
        value = getattr(slurm_config, key)
        if value is not None:
            options.append(f"{flag}={value}")
    if slurm_config.gpus_per_node is not None:
        options.append(f"--gpus-per-node={slurm_config.gpus_per_node}")
    return options


def describe_request(slurm_config: SlurmConfig, count: int) -> str:
    where = f", partition {slurm_config.partition}" if slurm_config.partition else ""
    return f"{count} node{'s' if count != 1 else ''}{where}"


def request_allocation(scheduler: SchedulerConfig, source: str, say: Progress) -> str:
    """Ask Slurm for the nodes and wait up to scheduler.slurm.wait_s; the granted job id.

    While it waits, says where the job stands in the queue. Not granted in time, refused, or
    interrupted: the pending job is cancelled before the error is raised.
    """
    config = scheduler.slurm
    hosts = [node.host for node in scheduler.nodes]
    count = len(hosts) or config.nodes
    if count is None:
        raise ConfigError(f"{source}: scheduler.slurm.nodes: how many nodes to ask Slurm for "
                          "(not inside an allocation, and scheduler.nodes lists none)")
    if hosts:
        states = node_states(hosts)
        for node in scheduler.nodes:
            state = states.get(node.host)
            problem = state.problem(node.host) if state else f"Slurm does not know a node {node.host}"
            if problem:
                raise NodeError(node.name, problem)
    what = describe_request(config, count)
    argv = salloc_argv(config, count, hosts)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    job_id: str | None = None
    granted = False
    errors: list[str] = []
    started = time.monotonic()
    next_report = started + 2.0
    try:
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if line is None:  # salloc ended
                proc.wait()
                if granted and job_id is not None:
                    return job_id
                detail = errors[-1] if errors else f"salloc exited with code {proc.returncode}"
                raise MagpieError(f"scheduler.slurm: Slurm refused the allocation ({what}): {detail}")
            found = re.search(r"job allocation (\d+)", line) or re.search(r"job (\d+) queued", line)
            if found:
                job_id = found.group(1)
                granted = granted or "Granted" in line
                if not granted:
                    say(f"asked Slurm for {what}: job {job_id}")
            elif "error:" in line:
                errors.append(line.split("error:", 1)[1].strip())
            waited = time.monotonic() - started
            if job_id is not None and not granted and time.monotonic() >= next_report:
                say(f"waiting {waited:.0f} s for Slurm job {job_id}: {queue_position(job_id)}")
                next_report = time.monotonic() + REPORT_EVERY_S
            if waited > config.wait_s and not granted:
                where = f"; it was {queue_position(job_id)}" if job_id else ""
                raise MagpieError(
                    f"scheduler.slurm: allocation ({what}) not granted within "
                    f"{config.wait_s:g} s (scheduler.slurm.wait_s){where}; cancelled"
                )
    except BaseException:
        if proc.poll() is None:
            proc.terminate()  # salloc withdraws a pending request when told to stop
        if job_id is not None:
            release(job_id)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.put(line.strip())
    lines.put(None)


def queue_position(job_id: str) -> str:
    """`pending (Resources) in partition gpu, 2nd of 5 pending there, expected start ...`."""
    result = slurm(["squeue", "--noheader", f"--jobs={job_id}", "--format=%T|%r|%P|%S"])
    fields = result.stdout.strip().split("|")
    if result.returncode != 0 or len(fields) != 4:
        return "no longer in the queue"
    state, reason, partition, start = fields
    text = f"{state.lower()} ({reason}) in partition {partition}"
    order = slurm(["squeue", "--noheader", "--states=PENDING", f"--partition={partition}",
                   "--sort=-p,i", "--format=%i"]).stdout.split()
    if job_id in order:
        text += f", {_ordinal(order.index(job_id) + 1)} of {len(order)} pending there"
    if start and start not in ("N/A", "Unknown"):
        text += f", expected start {start}"
    return text


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def release(job_id: str) -> None:
    """Give the allocation back (scancel); its steps end with it."""
    slurm(["scancel", job_id])


def current_job() -> str | None:
    """The allocation this process runs in (salloc, sbatch, srun), if any."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
