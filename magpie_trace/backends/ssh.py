"""Nodes reached with the user's own OpenSSH client.

Using `ssh` itself (not a Python ssh library) means ~/.ssh/config, ProxyJump, the agent and keys
work as they do in the user's terminal. One control master per node (ControlMaster/ControlPersist)
makes the many small calls of a launch cheap. The remote command line is built only from
shlex.quote'd words, so no config value is ever interpreted by the remote shell.
"""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import tempfile
import threading
import weakref

from magpie_trace.backends.base import CommandResult
from magpie_trace.backends.posix import PosixBackend
from magpie_trace.config import NodeConfig, SchedulerConfig
from magpie_trace.errors import NodeError

# ssh's own failures (unreachable, auth refused, host key) exit 255; remote commands rarely do.
_SSH_FAILED = 255


class SshBackend(PosixBackend):
    name = "ssh"

    def __init__(self, scheduler: SchedulerConfig) -> None:
        super().__init__(scheduler)
        # Short private dir: the control socket path must stay under ~104 bytes.
        self._control_dir = tempfile.mkdtemp(prefix="mt-ssh-")
        self._masters: dict[str, list[str]] = {}  # node name -> argv that ends its master
        self._lock = threading.Lock()
        # Also at interpreter exit, so a forgotten close() leaves no master or directory behind.
        self._close = weakref.finalize(
            self, _close_masters, self._control_dir, self._masters, self._lock
        )

    def ssh_argv(self, node: NodeConfig) -> list[str]:
        """`ssh [options] -- host`: user options first (for ssh the first value wins), then ours."""
        ssh = self.scheduler.ssh
        argv = ["ssh"]
        for option in ssh.options:
            argv += ["-o", option]
        argv += [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, math.ceil(ssh.connect_timeout_s))}",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control_dir}/%C",
            "-o", "ControlPersist=60",
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "-T",
        ]  # fmt: skip
        user = node.ssh_user or ssh.user
        port = node.ssh_port or ssh.port
        identity = node.ssh_identity or ssh.identity
        if user:
            argv += ["-l", user]
        if port:
            argv += ["-p", str(port)]
        if identity:
            argv += ["-i", identity]
        return [*argv, "--", node.host]

    def command(self, node: NodeConfig, argv: list[str]) -> list[str]:
        with self._lock:
            if node.name not in self._masters:
                options = self.ssh_argv(node)[:-2]
                self._masters[node.name] = [*options, "-O", "exit", "--", node.host]
        return [*self.ssh_argv(node), " ".join(shlex.quote(word) for word in argv)]

    def settle(self, node: NodeConfig, result: CommandResult) -> CommandResult:
        if result.returncode != _SSH_FAILED:
            return result
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else "ssh failed (exit 255)"
        raise NodeError(node.name, f"ssh {node.host}: {detail}")

    def close(self) -> None:
        """End the control masters this backend opened and remove their sockets' directory.

        The backend is not usable afterwards.
        """
        self._close()


def _close_masters(control_dir: str, masters: dict[str, list[str]], lock: threading.Lock) -> None:
    with lock:
        argvs = list(masters.values())
        masters.clear()
    for argv in argvs:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass  # the master ends by itself after ControlPersist
    shutil.rmtree(control_dir, ignore_errors=True)
