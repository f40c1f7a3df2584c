"""What local and ssh share: every node operation is a fixed POSIX sh script plus argument words.

The scripts are constants; config values (argv, paths, env) only ever travel as separate words, so
a value cannot become code. The local backend runs the words directly, the ssh backend joins them
with shlex.quote for the remote shell: one implementation, two transports, identical behaviour
(exit-code file, process-group stop, listing).

A started command runs under a small wrapper that is the leader of its own session. The wrapper
reports "pid pgid starttime" (starttime from /proc, so a reused pid is never mistaken for ours),
waits for the command and writes its exit code to `<log_path>.exit`, so any process can learn the
outcome later: `magpie-trace stop` after `launch` has exited, on any node.
"""

from __future__ import annotations

import abc
import fnmatch
import math
import os
import posixpath
import shlex
import subprocess
import threading
from collections.abc import Callable
from typing import IO

from magpie_trace import fsutil
from magpie_trace.backends.base import (
    Backend,
    CommandResult,
    LineStream,
    ProcessHandle,
    RemoteFile,
    export_lines,
    tag_path,
)
from magpie_trace.config import ENV_NAME_PATTERN, NodeConfig
from magpie_trace.errors import NodeError

# Sets state, pgrp and start (clock ticks since boot) for pid $1; fails when there is no such pid.
PROC_STAT = r"""
st() { s=; { read -r s < /proc/$1/stat; } 2>/dev/null || return 1
  s=${s##*) }; set -- $s; state=$1; pgrp=$3; start=${20}; }
"""

# safe_dir DIR: make the absolute DIR (0700 where missing) on a node that other users share, and
# refuse it (exit status 1, the reason on stderr) when a folder on the way is a symlink or folder
# of another user (root excepted) or writable by others without the sticky bit (as /tmp has), or
# DIR itself is not ours alone. So a link planted in /tmp is never followed. ray_node.safe_dir
# is the same rule in Python.
SAFE_DIR = r"""
safe_dir() {
  d=$1; me=$(id -u); p=; rest=${d#/}
  while [ -n "$rest" ]; do
    c=${rest%%/*}; case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    [ -n "$c" ] || continue
    p=$p/$c
    [ -e "$p" ] || [ -L "$p" ] || mkdir -m 700 -- "$p" 2>/dev/null
    info=$(stat -c '%u %a %F' -- "$p" 2>/dev/null) || { echo "cannot create $p" >&2; return 1; }
    set -- $info
    if [ "$3" = symbolic ]; then
      [ "$1" = 0 ] || [ "$1" = "$me" ] || {
        echo "$p is a symlink of uid $1, not yours (uid $me) or root's: refused" >&2; return 1; }
      info=$(stat -L -c '%u %a %F' -- "$p" 2>/dev/null) || { echo "$p is a dangling symlink" >&2; return 1; }
      set -- $info
    fi
    [ "$3" = directory ] || { echo "$p is not a folder" >&2; return 1; }
    [ "$1" = 0 ] || [ "$1" = "$me" ] || {
      echo "$p belongs to uid $1, not to you (uid $me): refused" >&2; return 1; }
    if [ $((0$2 & 02)) -ne 0 ] && [ $((0$2 & 01000)) -eq 0 ]; then
      echo "$p is writable by every user: refused" >&2; return 1; fi
  done
  set -- $(stat -L -c '%u %a' -- "$d")
  [ "$1" = "$me" ] || { echo "$d belongs to uid $1, not to you (uid $me): refused" >&2; return 1; }
  [ $((0$2 & 022)) -eq 0 ] || {
    echo "$d is writable by other users: refused (chmod go-w $d)" >&2; return 1; }
}
"""

# $1 = exit file, $2 = tag file, rest = the command. Runs as the session leader (setsid -f).
# The tag ("pid pgid starttime") is written before anything else, so a start whose reply is lost
# (Ctrl-C reached the ssh client) can still be found and stopped (recover).
_WRAPPER = PROC_STAT + r"""
f=$1; t=$2; shift 2
st $$; printf '%s\n' "$$ $pgrp $start" > "$t.tmp" && mv -f -- "$t.tmp" "$t"
echo "$$ $pgrp $start" >&3; exec 3>&-
trap : TERM INT HUP
"$@"
c=$?
printf '%s\n' "$c" > "$f.tmp" && mv -f -- "$f.tmp" "$f"
"""

# Read from stdin after the env exports: $1 log, $2 exit file, $3 tag file, $4 cwd, rest = the
# command.
# setsid -f (not `&`): a background job of a non-interactive shell would start with SIGINT ignored.
_START = SAFE_DIR + r"""
log=$1; f=$2; t=$3; cwd=$4; shift 4
safe_dir "$cwd" && safe_dir "${log%/*}" || exit 97
cd -- "$cwd" || exit 97
rm -f -- "$f" "$f.tmp" "$t" "$t.tmp"
info=$(setsid -f sh -c "$WRAPPER" sh "$f" "$t" "$@" 3>&1 >"$log" 2>&1 </dev/null)
[ -n "$info" ] || { echo "setsid did not start the command" >&2; exit 98; }
echo "$info"
"""

# $1 pid, $2 starttime, $3 exit file -> "exited CODE" | "running" | "gone"
_STATUS = PROC_STAT + r"""
if [ -f "$3" ]; then read -r c < "$3"; echo "exited $c"; exit 0; fi
if st $1 && [ "$state" != Z ] && [ "$start" = "$2" ]; then echo running; else echo gone; fi
"""

# $1 pgid, $2 leader starttime, $3 grace in tenths of a second -> "gone" | "stopped" | "killed" |
# "remaining N". The group is ours unless its leader's pid now belongs to a younger process. The
# grace is measured on the clock (/proc/uptime), not in polls: a scan of /proc is slow on a busy
# node.
_STOP = PROC_STAT + r"""
G=$1; S=$2
members() { n=0; for d in /proc/[0-9]*; do st "${d#/proc/}" || continue
  [ "$pgrp" = "$G" ] && [ "$state" != Z ] && n=$((n + 1)); done; }
now() { read -r u _ < /proc/uptime; f=${u#*.}; now=$(( ${u%.*} * 10 + ${f%"${f#?}"} )); }
wait_empty() { now; end=$((now + $1)); while :; do members; [ $n -eq 0 ] && return 0
  now; [ $now -ge $end ] && return 1; sleep 0.1; done; }
if st $G && [ "$start" != "$S" ]; then echo gone; exit 0; fi
members; if [ $n -eq 0 ]; then echo gone; exit 0; fi
kill -TERM -$G 2>/dev/null
kill -CONT -$G 2>/dev/null  # a stopped (frozen) process must run to handle SIGTERM
if wait_empty $3; then echo stopped; exit 0; fi
kill -KILL -$G 2>/dev/null
if wait_empty 50; then echo killed; else echo "remaining $n"; fi
"""

# $1 tag file, $2 tenths of a second to wait for it -> "pid pgid starttime", or nothing.
RECOVER_SCRIPT = r"""
i=0; while [ ! -f "$1" ] && [ $i -lt $2 ]; do sleep 0.1; i=$((i + 1)); done
[ -f "$1" ] && cat -- "$1"
exit 0
"""

# $1 directory -> NUL-separated "size<TAB>mtime<TAB>name" of regular files; exit 3 if no directory.
_LIST = r"""
[ -d "$1" ] || exit 3
find "$1" -mindepth 1 -maxdepth 1 -type f -printf '%s\t%T@\t%f\0'
"""

_CONTROL_TIMEOUT_S = 30.0


def exit_path(log_path: str) -> str:
    """Where the exit code of the command logging to log_path is written (on its node)."""
    return log_path + ".exit"


def start_script(env: dict[str, str], *script: str) -> str:
    """A start script, env exported first (shlex-quoted values; sent on stdin, never in argv)."""
    return "\n".join([*export_lines(env), *script])


def check_env(node: NodeConfig, env: dict[str, str]) -> None:
    """Refuse a variable name that an export line could not carry as it is."""
    for name in env:
        if not ENV_NAME_PATTERN.match(name):
            raise NodeError(node.name, f"env: {name!r} is not a valid variable name")


class PosixBackend(Backend):
    """A Backend whose node operations are sh scripts; subclasses say how argv reaches the node."""

    @abc.abstractmethod
    def command(self, node: NodeConfig, argv: list[str]) -> list[str]:
        """The local argv that runs argv on the node (the words arrive there unchanged)."""

    def settle(self, node: NodeConfig, result: CommandResult) -> CommandResult:
        """The command's own result: raise NodeError when the transport failed rather than the
        command, and drop the transport's own messages from stderr."""
        return result

    def abandon(self, proc: subprocess.Popen[bytes]) -> None:
        """End a transport process that ran past its timeout (a subclass may let it clean up)."""
        proc.kill()

    # ---------------------------------------------------------------------------------------

    def run(
        self, node: NodeConfig, argv: list[str], timeout_s: float = 60.0, input: bytes | None = None
    ) -> CommandResult:
        return self._execute(node, argv, timeout_s, input)

    def _execute(
        self,
        node: NodeConfig,
        argv: list[str],
        timeout_s: float | None,
        input: bytes | None = None,
        stdout: IO[bytes] | None = None,
    ) -> CommandResult:
        """Run argv on the node; stdout is captured unless a file is given (fetch streams)."""
        if not argv:
            raise ValueError("empty argv")
        local_argv = self.command(node, argv)
        try:
            proc = subprocess.Popen(
                local_argv,
                stdin=subprocess.PIPE,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            if local_argv[0] == argv[0]:  # local: a missing program reads like a shell's 127
                return CommandResult(127, "", f"{argv[0]}: {exc.strerror or exc}")
            detail = exc.strerror or exc
            raise NodeError(node.name, f"cannot run {local_argv[0]}: {detail}") from None
        with proc:
            try:
                out, err = proc.communicate(input if input is not None else b"", timeout_s)
            except subprocess.TimeoutExpired:
                self.abandon(proc)
                proc.communicate()
                raise NodeError(node.name, f"{argv[0]} timed out after {timeout_s:g} s") from None
            except BaseException:  # Ctrl-C: the transport process must not linger either
                self.abandon(proc)
                raise
        result = CommandResult(
            proc.returncode,
            (out or b"").decode(errors="surrogateescape"),
            err.decode(errors="replace"),
        )
        return self.settle(node, result)

    def stream(self, node: NodeConfig, argv: list[str]) -> LineStream:
        if not argv:
            raise ValueError("empty argv")
        try:
            proc = subprocess.Popen(
                self.command(node, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            raise NodeError(node.name, f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        return _ProcessStream(proc, self.abandon)

    def _script(
        self, node: NodeConfig, script: str, args: list[str], timeout_s: float = _CONTROL_TIMEOUT_S
    ) -> CommandResult:
        return self.run(node, ["sh", "-c", script, "sh", *args], timeout_s=timeout_s)

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
        workdir = cwd or self.workdir(node)
        result = self.run(
            node,
            ["sh", "-s", "--", log_path, exit_file, tag_path(log_path), workdir, *argv],
            timeout_s=_CONTROL_TIMEOUT_S,
            input=start_script(env, f"WRAPPER={shlex.quote(_WRAPPER)}", _START).encode(),
        )
        fields = result.stdout.split()
        if result.returncode != 0 or len(fields) != 3 or not fields[0].isdigit():
            detail = _last_line(result.stderr) or f"exit code {result.returncode}"
            raise NodeError(node.name, f"cannot start {argv[0]}: {detail}")
        pid, pgid, starttime = int(fields[0]), int(fields[1]), fields[2]
        if pgid != pid:
            raise NodeError(node.name, f"{argv[0]} did not get its own process group")
        return self._handle(node, pid, starttime, log_path)

    def _handle(self, node: NodeConfig, pid: int, starttime: str, log_path: str) -> ProcessHandle:
        return ProcessHandle(
            node=node.name,
            pid=pid,
            pgid=pid,
            log_path=log_path,
            backend=self.name,
            extra={"starttime": starttime, "exit_path": exit_path(log_path)},
        )

    def recover(self, node: NodeConfig, log_path: str, wait_s: float = 2.0) -> ProcessHandle | None:
        """From the tag the wrapper wrote first (waiting wait_s for a start still under way)."""
        ticks = str(max(0, math.ceil(wait_s * 10)))
        result = self._script(node, RECOVER_SCRIPT, [tag_path(log_path), ticks], timeout_s=wait_s + _CONTROL_TIMEOUT_S)
        fields = result.stdout.split()
        if result.returncode != 0 or len(fields) != 3 or not fields[0].isdigit() or fields[0] != fields[1]:
            return None
        return self._handle(node, int(fields[0]), fields[2], log_path)

    def _status(self, node: NodeConfig, handle: ProcessHandle) -> list[str]:
        args = [str(handle.pid), str(handle.extra.get("starttime", "")), _exit_file(handle)]
        result = self._script(node, _STATUS, args)
        if result.returncode != 0:
            detail = _last_line(result.stderr)
            raise NodeError(node.name, f"cannot check pid {handle.pid}: {detail}")
        return result.stdout.split()

    def alive(self, node: NodeConfig, handle: ProcessHandle) -> bool:
        return self._status(node, handle) == ["running"]

    def exit_code(self, node: NodeConfig, handle: ProcessHandle) -> int | None:
        status = self._status(node, handle)
        if len(status) == 2 and status[0] == "exited" and status[1].lstrip("-").isdigit():
            return int(status[1])
        return None

    def stop(self, node: NodeConfig, handle: ProcessHandle, grace_s: float = 10.0) -> None:
        ticks = max(1, math.ceil(grace_s * 10))
        args = [str(handle.pgid), str(handle.extra.get("starttime", "")), str(ticks)]
        result = self._script(node, _STOP, args, timeout_s=grace_s + _CONTROL_TIMEOUT_S)
        words = result.stdout.split()
        if result.returncode != 0 or not words:
            raise NodeError(
                node.name, f"cannot stop group {handle.pgid}: {_last_line(result.stderr)}"
            )
        if words[0] == "remaining":
            raise NodeError(
                node.name, f"{words[1]} processes of group {handle.pgid} survived SIGKILL"
            )

    def fetch(self, node: NodeConfig, remote_path: str, local_path: str) -> None:
        tmp = fsutil.temp_path_for(local_path)
        try:
            with open(tmp, "wb") as out:
                result = self._execute(node, ["cat", "--", remote_path], None, stdout=out)
            if result.returncode != 0:
                raise NodeError(
                    node.name, f"cannot fetch {remote_path}: {_last_line(result.stderr)}"
                )
            os.replace(tmp, local_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def listdir(self, node: NodeConfig, directory: str, pattern: str = "*") -> list[RemoteFile]:
        """Regular files only; a directory that does not exist (yet) lists as empty."""
        where = directory if directory.startswith("/") else "./" + directory
        result = self._script(node, _LIST, [where])
        if result.returncode == 3:
            return []
        if result.returncode != 0:
            raise NodeError(node.name, f"cannot list {directory}: {_last_line(result.stderr)}")
        files = []
        for entry in result.stdout.split("\0"):
            if not entry:
                continue
            size, mtime, name = entry.split("\t", 2)
            if fnmatch.fnmatchcase(name, pattern):
                files.append(RemoteFile(posixpath.join(directory, name), int(size), float(mtime)))
        return sorted(files, key=lambda f: f.path)


class _ProcessStream(LineStream):
    """A local process (the command itself, or the ssh client running it on the node). It has its
    own session: Ctrl-C at the terminal is ours to handle, not a reason for it to die first."""

    def __init__(
        self, proc: subprocess.Popen[bytes], abandon: Callable[[subprocess.Popen[bytes]], None]
    ) -> None:
        self.proc = proc
        self.abandon = abandon  # the backend's way to end its transport process
        self._reading = threading.Lock()  # held by readline: stdout is not closed under a reader

    def readline(self) -> str | None:
        assert self.proc.stdout is not None
        with self._reading:
            if self.proc.stdout.closed:
                return None
            line = self.proc.stdout.readline()
        return line.decode(errors="replace") if line else None

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the command sees EOF and ends
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.abandon(self.proc)
            self.proc.wait()
        # A reader in another thread now reads EOF and lets go; one held by a pipe that something
        # else keeps open is left with it rather than have its buffer closed under it.
        if self.proc.stdout is not None and self._reading.acquire(timeout=5):
            try:
                self.proc.stdout.close()
            finally:
                self._reading.release()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def why_ended(self) -> str:
        code = self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        return _last_line(err) or f"it exited with code {code}"


def _exit_file(handle: ProcessHandle) -> str:
    return str(handle.extra.get("exit_path") or exit_path(handle.log_path))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
