"""What the ray backend runs on each Ray node: one agent actor that owns the started commands,
plus small tasks.

Standard library only, and shipped to the nodes by value (see backends/ray.py), so a Ray node
needs Ray but not magpie-trace. It mirrors backends/posix.py: a command runs as the leader of its
own session, stdout+stderr go to its log, its exit code is written next to the log, and stop
ends the whole process group, verified from /proc, never anything matched by name.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

KILL_WAIT_S = 5.0
_POLL_S = 0.05
# Ray's internal flags of the actor's worker process (ray_constants.RAY_INTERNAL_FLAGS). Not
# passed on, as Ray's job submission does not, so a Ray driver started by the command (vLLM's
# Ray executor) is a job of its own.
RAY_WORKER_FLAGS = ("RAY_JOB_ID", "RAY_RAYLET_PID", "RAY_OVERRIDE_NODE_ID_FOR_TESTING")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None if no such pid."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    fields = _stat_fields(pid)
    return fields[19] if fields else ""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def _wait_empty(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def _all_signals() -> Iterator[None]:
    """Clear this thread's signal mask around a fork: Ray's worker thread blocks SIGINT, and a
    child inherits the mask of the thread that forks it (an engine must get every signal)."""
    blocked = signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def command_env(extra: dict[str, str]) -> dict[str, str]:
    """This worker's environment less Ray's worker flags, plus extra."""
    env = {key: value for key, value in os.environ.items() if key not in RAY_WORKER_FLAGS}
    env.update(extra)
    return env


def _write_exit_code(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(f"{code}\n")
    os.replace(tmp, path)


class _Group:
    """One started command: its leader (the Popen), the leader's start time and exit-code writer."""

    def __init__(self, proc: subprocess.Popen[bytes], exit_file: str) -> None:
        self.proc = proc
        self.started = start_time(proc.pid)
        self.waiter = threading.Thread(
            target=lambda: _write_exit_code(exit_file, proc.wait()), daemon=True
        )
        self.waiter.start()

    def running(self) -> bool:
        return self.proc.poll() is None

    def has_members(self) -> bool:
        """Anything of the group left: its leader, or children that outlived it."""
        return self.running() or bool(group_members(self.proc.pid))


class ProcessAgent:
    """Owns every command started on its Ray node: their process groups, exit codes and stops.

    One per Ray node and namespace, a detached named Ray actor, so it outlives the process that
    started the commands and a later `magpie-trace stop` finds it by name. Commands are keyed by
    log path (one running command per log). Its calls run in threads (a stop waits up to its
    grace period; the others must not queue behind it), so its state is behind a lock. Once it
    holds nothing it closes: it refuses new commands, and whoever sees that kills it (killing a
    Ray worker kills its direct children, so only an agent that owns no process may go).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._closing = False

    def start(
        self, argv: list[str], env: dict[str, str], log_path: str, cwd: str, exit_file: str
    ) -> int | str:
        """Start argv in a new session; its pid (= its process group id), or why not: "closing"
        (start again on a new agent) or "running" (a command logging to log_path still runs).

        It runs through `sh -c 'exec "$@"'` so a missing program is exit code 127 with the
        shell's message in the log, as on an ssh node.
        """
        with self._lock:
            if self._closing:
                return "closing"
            old = self._groups.get(log_path)
            if old is not None:
                if old.running():
                    return "running"
                old.waiter.join(KILL_WAIT_S)  # its exit code must not land on the new command's
            os.makedirs(posixpath.dirname(log_path), exist_ok=True)
            os.makedirs(cwd, exist_ok=True)
            for stale in (exit_file, f"{exit_file}.tmp"):
                if os.path.exists(stale):
                    os.unlink(stale)
            with _all_signals(), open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    ["sh", "-c", 'exec "$@"', "sh", *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=command_env(env),
                    start_new_session=True,
                )
            self._groups[log_path] = _Group(proc, exit_file)
            return proc.pid

    def _group(self, log_path: str, pid: int) -> _Group | None:
        """The command started with log_path as pid; None once stopped or replaced."""
        with self._lock:
            group = self._groups.get(log_path)
        return group if group is not None and group.proc.pid == pid else None

    def find(self, log_path: str) -> int | None:
        """The pid of the command started with log_path (for a start whose reply was lost)."""
        with self._lock:
            group = self._groups.get(log_path)
        return None if group is None else group.proc.pid

    def status(self, log_path: str, pid: int) -> tuple[bool, int | None]:
        """(known, returncode): known is False once the command was stopped or replaced, and
        then its exit code is in its exit file."""
        group = self._group(log_path, pid)
        return (False, None) if group is None else (True, group.proc.poll())

    def stop(self, log_path: str, pid: int, grace_s: float) -> list[int]:
        """SIGTERM the group, wait up to grace_s, SIGKILL; returns the pids that survived.

        A group that ended is forgotten (its exit code is on disk); survivors keep it, so that a
        later stop can try again.
        """
        group = self._group(log_path, pid)
        if group is None:
            return []
        pgid = group.proc.pid
        ours = group.running() or start_time(pgid) in ("", group.started)
        if ours and group_members(pgid):  # else its pid belongs to a newer process: not ours
            _signal_group(pgid, signal.SIGTERM)
            _signal_group(pgid, signal.SIGCONT)  # a stopped (frozen) process must run to handle it
            if not _wait_empty(pgid, grace_s):
                _signal_group(pgid, signal.SIGKILL)
                _wait_empty(pgid, KILL_WAIT_S)
        group.waiter.join(KILL_WAIT_S)  # the exit code is on disk before the group is forgotten
        survivors = group_members(pgid) if ours else []
        if not survivors:
            with self._lock:
                if self._groups.get(log_path) is group:
                    del self._groups[log_path]
        return survivors

    def close_if_idle(self) -> bool:
        """Forget commands that left nothing behind; with none left, close (True): no start is
        accepted any more and the caller kills this agent."""
        with self._lock:
            for log_path, group in list(self._groups.items()):
                if not group.has_members():
                    group.waiter.join(KILL_WAIT_S)
                    del self._groups[log_path]
            self._closing = self._closing or not self._groups
            return self._closing


def run_command(
    argv: list[str], timeout_s: float, input: bytes | None
) -> tuple[int | None, bytes, bytes]:
    """(returncode, stdout, stderr); returncode None when it timed out (its group is killed)."""
    try:
        with _all_signals():
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=command_env({}),
                start_new_session=True,
            )
    except OSError as exc:  # a missing program reads like a shell's 127
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return code, b"", f"{argv[0]}: {exc.strerror or exc}".encode()
    try:
        out, err = proc.communicate(input or b"", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def stream_lines(argv: list[str]) -> Iterator[str]:
    """argv's output lines as it prints them (a Ray streaming generator); its group is killed
    when the generator is cancelled or its consumer goes away."""
    with _all_signals():
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=command_env({}), start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            yield line.decode(errors="replace")
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def read_chunks(path: str, chunk_size: int) -> Iterator[bytes]:
    """The file's bytes in order, chunk_size at a time (a Ray streaming generator)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def list_files(directory: str, pattern: str) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of the regular files in directory matching pattern, sorted by path.

    A directory that does not exist (yet) lists as empty.
    """
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    files = []
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and fnmatch.fnmatchcase(entry.name, pattern):
            info = entry.stat(follow_symlinks=False)
            files.append((posixpath.join(directory, entry.name), info.st_size, info.st_mtime))
    return sorted(files)


def read_exit_code(exit_file: str) -> int | None:
    """The exit code written next to a log, if the command has ended."""
    try:
        with open(exit_file) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None
