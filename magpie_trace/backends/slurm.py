"""The `slurm` backend: every node's command is a job step of one allocation, pinned to its node.

The nodes are the allocation's: the one this process runs in (salloc, sbatch: SLURM_JOB_ID),
`scheduler.slurm.job_id`, or one asked for with salloc, held for the run and given back by
close(). A started command is `srun --nodes=1 --ntasks=1 --nodelist=NODE --overlap` running a
small sh wrapper (several steps share the allocation); the step's stdin carries the environment
as `export` lines, so no value is in any argv (ps, `scontrol show step`), and the wrapper reports
its step id, pid and start time, sends the command's output to the log on the node and writes the
exit code next to it. alive() is the step being in squeue; stop() signals the step through
scancel (SIGTERM + SIGCONT, the grace, then SIGKILL), which reaches every process Slurm tracks for
it, and waits until Slurm reports the step gone. run() is a step too (`srun ... sh -c 'exec
"$@"'`); paths under scheduler.shared_dir are read here directly.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time

from magpie_trace import fsutil
from magpie_trace.backends import slurm_allocation as alloc
from magpie_trace.backends.base import CommandResult, ProcessHandle, RemoteFile, tag_path
from magpie_trace.backends.ray_node import list_files
from magpie_trace.backends.posix import (
    PROC_STAT,
    RECOVER_SCRIPT,
    SAFE_DIR,
    PosixBackend,
    check_env,
    exit_path,
    start_script,
)
from magpie_trace.config import NodeConfig, SchedulerConfig
from magpie_trace.errors import ConfigError, MagpieError, NodeError

# The step's task, exec'd after the env exports (so its own environment has them): $1 log,
# $2 exit file, $3 tag file, $4 cwd, rest = the command. It records "job step pid pgrp starttime
# node" in the tag file first (so a start whose reply is lost is still found: recover), reports
# the same on stdout (to srun), runs the command with its output in the log, and records the
# exit code.
_STEP = PROC_STAT + SAFE_DIR + r"""
log=$1; f=$2; t=$3; cwd=$4; shift 4
safe_dir "$cwd" && safe_dir "${log%/*}" || exit 97
cd -- "$cwd" || exit 97
rm -f -- "$f" "$f.tmp"
st $$; info="$SLURM_JOB_ID $SLURM_STEP_ID $$ $pgrp $start $SLURMD_NODENAME"
printf '%s\n' "$info" > "$t.tmp" && mv -f -- "$t.tmp" "$t"
echo "$info"
exec >"$log" 2>&1
trap : TERM INT HUP
"$@" </dev/null
c=$?
printf '%s\n' "$c" > "$f.tmp" && mv -f -- "$f.tmp" "$f"
exit $c
"""

# srun's and slurmstepd's own lines on stderr; the task's status lines are not transport failures.
# (Its match is the prefix to drop from a line quoted in an error.)
_SLURM_LINE = re.compile(r"^(srun|slurmstepd(-\S+)?): ((error|fatal): )?")
_TASK_LINE = re.compile(r"^srun: error: \S+: tasks? [\d,-]+: ")
START_TIMEOUT_S = 120.0  # step creation can wait for the controller
STEPS_TTL_S = 0.2  # one squeue answers the liveness checks of every node at once
_GONE_POLL_S = 0.1


class SlurmBackend(PosixBackend):
    name = "slurm"

    def __init__(self, scheduler: SchedulerConfig) -> None:
        super().__init__(scheduler)
        self._asked: str | None = None  # the allocation this backend asked for (close releases it)
        self._lock = threading.Lock()
        self._sruns: dict[str, subprocess.Popen[bytes]] = {}  # step id -> its srun here
        self._steps_lock = threading.Lock()  # held across one squeue: the others wait and reuse it
        self._steps: dict[str, tuple[float, set[str]]] = {}  # job id -> (when, step ids)
        self._srun = shutil.which("srun") or "srun"

    # -- the allocation ---------------------------------------------------------------------------

    def acquire_nodes(
        self, progress: alloc.Progress | None = None, source: str = "<config>", ask: bool = True
    ) -> None:
        """Settle scheduler.nodes from the allocation, asking Slurm for one when there is none."""
        say = progress or (lambda _msg: None)
        slurm = self.scheduler.slurm
        job = slurm.job_id or alloc.current_job()
        if job is None and not ask:
            if self.scheduler.nodes:
                return  # as listed; Slurm places them when the run asks for the allocation
            raise ConfigError(
                f"{source}: scheduler.nodes: none listed and not inside a Slurm allocation, so "
                "the nodes are not known before one is granted (run this inside salloc, set "
                "scheduler.slurm.job_id, or list scheduler.nodes)"
            )
        if job is None:
            job = alloc.request_allocation(self.scheduler, source, say)
            self._asked = job
        try:
            hosts = alloc.job_hosts(job)
            alloc.resolve_nodes(self.scheduler, source, job, hosts)
        except BaseException:
            self.close()
            raise
        if self._asked:
            say(f"Slurm granted job {job}: {', '.join(n.host for n in self.scheduler.nodes)}")

    def job_id(self, node: NodeConfig) -> str:
        job = self.scheduler.slurm.job_id or alloc.current_job()
        if job is None:
            raise NodeError(node.name, "no Slurm allocation: not inside one (SLURM_JOB_ID) and "
                                       "scheduler.slurm.job_id is not set")
        return job

    def close(self) -> None:
        """Give back the allocation this backend asked for (its steps end with it). Steps in an
        allocation it did not ask for keep running: stop() ends those."""
        job, self._asked = self._asked, None
        if job is not None:
            alloc.release(job)

    def prepare(self, node: NodeConfig) -> None:
        alloc.check_node(node)

    # -- commands: each one a step on its node -------------------------------------------------------

    def srun_argv(self, node: NodeConfig, job: str, name: str) -> list[str]:
        return [
            self._srun, f"--jobid={job}", "--nodes=1", "--ntasks=1", f"--nodelist={node.host}",
            "--overlap", "--mpi=none", "--quiet", f"--job-name={name}",
            *self.scheduler.slurm.srun_args,
        ]

    def command(self, node: NodeConfig, argv: list[str]) -> list[str]:
        srun = self.srun_argv(node, self.job_id(node), "magpie-trace-run")
        return [*srun, "sh", "-c", 'exec "$@"', "sh", *argv]

    def settle(self, node: NodeConfig, result: CommandResult) -> CommandResult:
        own = [line for line in result.stderr.splitlines() if _SLURM_LINE.match(line)]
        failures = [line for line in own if " error: " in line or " fatal: " in line]
        failures = [line for line in failures if not _TASK_LINE.match(line)
                    and not line.startswith("slurmstepd")]
        if result.returncode != 0 and failures:
            raise NodeError(node.name, f"srun on {node.host}: {_SLURM_LINE.sub('', failures[-1])}")
        stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                         if not _SLURM_LINE.match(line))
        return CommandResult(result.returncode, result.stdout, stderr)

    def abandon(self, proc: subprocess.Popen[bytes]) -> None:
        """srun passes SIGTERM on to its step, which then ends; SIGKILL would leave the step."""
        _reap(proc, 0.0)

    def start(
        self,
        node: NodeConfig,
        argv: list[str],
        env: dict[str, str],
        log_path: str,
        cwd: str | None = None,
    ) -> ProcessHandle:
        self.check_start(argv, log_path)
        check_env(node, env)
        exit_file = exit_path(log_path)
        job = self.job_id(node)
        srun = self.srun_argv(node, job, f"magpie-trace-{node.name}")
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        with out, err:
            # Its own session: a Ctrl-C in the terminal reaches us, and we stop the step ourselves.
            proc = subprocess.Popen(
                [*srun, "sh", "-s", "--", log_path, exit_file, tag_path(log_path),
                 cwd or self.workdir(node), *argv],
                stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
            )
            try:
                assert proc.stdin is not None
                script = start_script(env, f"STEP={shlex.quote(_STEP)}", 'exec sh -c "$STEP" sh "$@"')
                proc.stdin.write(script.encode())
                proc.stdin.close()
                fields = self._started(node, argv[0], proc, out, err)
            except BaseException:
                _reap(proc, 0.0)
                raise
        handle = self._handle_of(node, fields, log_path)
        with self._lock:
            self._sruns[handle.extra["step_id"]] = proc
        return handle

    def _handle_of(self, node: NodeConfig, fields: list[str], log_path: str) -> ProcessHandle:
        """The handle from the wrapper's "job step pid pgrp starttime node"."""
        job_id, step, pid, pgid, starttime, where = fields
        return ProcessHandle(
            node=node.name, pid=int(pid), pgid=int(pgid), log_path=log_path, backend=self.name,
            extra={"job_id": job_id, "step_id": f"{job_id}.{step}", "slurm_node": where,
                   "starttime": starttime, "exit_path": exit_path(log_path)},
        )

    def recover(self, node: NodeConfig, log_path: str, wait_s: float = 2.0) -> ProcessHandle | None:
        """From the tag the step's wrapper wrote first (waiting wait_s for a start under way)."""
        ticks = str(max(0, math.ceil(wait_s * 10)))
        result = self._script(node, RECOVER_SCRIPT, [tag_path(log_path), ticks],
                              timeout_s=wait_s + 30.0)
        fields = result.stdout.split()
        if result.returncode != 0 or len(fields) != 6 or not all(f.isdigit() for f in fields[:4]):
            return None
        return self._handle_of(node, fields, log_path)

    def _started(self, node: NodeConfig, what: str, proc: subprocess.Popen[bytes],
                 out: object, err: object) -> list[str]:
        """The wrapper's report line, once srun has created the step and the task runs."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            line = _read(out).split(b"\n", 1)
            if len(line) == 2:
                fields = line[0].decode(errors="replace").split()
                if len(fields) == 6 and all(f.isdigit() for f in fields[:4]):
                    return fields
                raise NodeError(node.name, f"cannot start {what}: unexpected {line[0][:200]!r}")
            if proc.poll() is not None:
                errors = _read(err).decode(errors="replace")
                lines = [_SLURM_LINE.sub("", ln) for ln in errors.splitlines() if ln.strip()]
                detail = lines[-1] if lines else f"srun exited with code {proc.returncode}"
                raise NodeError(node.name, f"cannot start {what} on Slurm node {node.host}: {detail}")
            if time.monotonic() > deadline:
                raise NodeError(node.name, f"cannot start {what}: Slurm did not start the step "
                                           f"on {node.host} within {START_TIMEOUT_S:g} s")
            time.sleep(0.02)

    # -- the step's state --------------------------------------------------------------------------

    def steps(self, job: str, fresh: bool = False) -> set[str]:
        """The job's steps in squeue (JOB.STEP); empty once the job is gone."""
        with self._steps_lock:
            cached = self._steps.get(job)
            if not fresh and cached and time.monotonic() - cached[0] < STEPS_TTL_S:
                return cached[1]
            result = alloc.slurm(["squeue", "--noheader", "--steps", f"--jobs={job}", "--format=%i"])
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                raise MagpieError(f"squeue --steps --jobs={job}: {alloc.first_line(result.stderr)}")
            found = set(result.stdout.split()) if result.returncode == 0 else set()
            self._steps[job] = (time.monotonic(), found)
            return found

    def _step(self, node: NodeConfig, handle: ProcessHandle) -> tuple[str, str]:
        if handle.backend != self.name or "step_id" not in handle.extra:
            raise NodeError(node.name, f"pid {handle.pid} was not started by the slurm backend")
        return str(handle.extra["job_id"]), str(handle.extra["step_id"])

    def alive(self, node: NodeConfig, handle: ProcessHandle) -> bool:
        job, step = self._step(node, handle)
        return step in self.steps(job)

    def exit_code(self, node: NodeConfig, handle: ProcessHandle) -> int | None:
        """From the wrapper's exit file; for a step ended from outside (scancel), srun's code
        when this process started it (128 + signal)."""
        if self.alive(node, handle):
            return None
        text = self._read_small(node, str(handle.extra.get("exit_path") or exit_path(handle.log_path)))
        if text is not None and text.strip().lstrip("-").isdigit():
            return int(text.strip())
        with self._lock:
            proc = self._sruns.get(self._step(node, handle)[1])
        if proc is not None and proc.poll() is not None:
            return proc.returncode
        return None

    def stop(self, node: NodeConfig, handle: ProcessHandle, grace_s: float = 10.0) -> None:
        job, step = self._step(node, handle)
        if step in self.steps(job, fresh=True):
            # CONT after TERM: a stopped (SIGSTOPped) step must wake up to end.
            for signal in ("TERM", "CONT"):
                alloc.slurm(["scancel", f"--signal={signal}", step])
            if not self._gone(job, step, grace_s):
                alloc.slurm(["scancel", "--signal=KILL", step])
                if not self._gone(job, step, 10.0):
                    alloc.slurm(["scancel", step])
                    if not self._gone(job, step, 10.0):
                        raise NodeError(node.name, f"Slurm step {step} did not end after SIGKILL")
        with self._lock:
            proc = self._sruns.pop(step, None)
        if proc is not None:
            _reap(proc, 5.0)  # the step is gone: srun ends at once

    def _gone(self, job: str, step: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while step in self.steps(job, fresh=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_GONE_POLL_S)
        return True

    # -- files: directly on the shared filesystem, else through a step -------------------------------

    def _shared(self, path: str) -> bool:
        shared = self.scheduler.shared_dir
        if not shared or not posixpath.isabs(path):
            return False
        return posixpath.commonpath([posixpath.normpath(path), posixpath.normpath(shared)]) == \
            posixpath.normpath(shared)

    def _read_small(self, node: NodeConfig, path: str) -> str | None:
        if self._shared(path):
            try:
                with open(path) as handle:
                    return handle.read()
            except OSError:
                return None
        result = self.run(node, ["cat", "--", path], timeout_s=30.0)
        return result.stdout if result.returncode == 0 else None

    def fetch(self, node: NodeConfig, remote_path: str, local_path: str) -> None:
        if not self._shared(remote_path):
            super().fetch(node, remote_path, local_path)
            return
        tmp = fsutil.temp_path_for(local_path)
        try:
            shutil.copyfile(remote_path, tmp)
            os.replace(tmp, local_path)
        except OSError as exc:
            raise NodeError(node.name, f"cannot fetch {remote_path}: {exc.strerror or exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def listdir(self, node: NodeConfig, directory: str, pattern: str = "*") -> list[RemoteFile]:
        if not self._shared(directory):
            return super().listdir(node, directory, pattern)
        return [RemoteFile(*entry) for entry in list_files(directory, pattern)]

    def tail(self, node: NodeConfig, path: str, lines: int = 20) -> str:
        if not self._shared(path):
            return super().tail(node, path, lines)
        text = self._read_small(node, path) or ""
        return "".join(text.splitlines(keepends=True)[-lines:])


def _read(handle: object) -> bytes:
    handle.seek(0)  # type: ignore[attr-defined]
    return handle.read()  # type: ignore[attr-defined, no-any-return]


def _reap(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Let a local srun end by itself within grace_s; then SIGTERM it (srun passes that on to its
    step, which ends), and SIGKILL it as the last resort."""
    try:
        proc.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
