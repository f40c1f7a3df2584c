"""The backend seam: the only place that knows how a command reaches a node.

One small interface, one class per transport (local, ssh, ray, slurm); callers never branch on the
transport. Every method takes the node's config so the same backend object serves all nodes.
"""

from __future__ import annotations

import abc
import posixpath
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

from magpie_trace.config import NodeConfig, SchedulerConfig


@dataclass
class ProcessHandle:
    """A process (and its whole process group) started on a node.

    It is plain data so a run can persist it (state.json) and a later `magpie-trace stop`, in
    another process, can stop exactly what was started: never kill by name pattern.
    """

    node: str
    pid: int
    pgid: int
    log_path: str
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProcessHandle":
        return cls(**data)


def tag_path(log_path: str) -> str:
    """Where the node-side launcher records "pid pgid starttime" before the command runs."""
    return log_path + ".pid"


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class RemoteFile:
    path: str
    size: int
    mtime: float


class LineStream(abc.ABC):
    """The output of one long-lived command on a node, a line at a time (a node's monitor)."""

    @abc.abstractmethod
    def readline(self) -> str | None:
        """The next line (blocking); None once the command has ended or the channel is gone."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the command (it also ends by itself when its channel closes)."""

    def why_ended(self) -> str:
        """Why readline returned None, for the error that names the node."""
        return "its output ended"


class Backend(abc.ABC):
    """Run commands and move files on nodes.

    Implementations raise NodeError (naming the node) for transport failures: unreachable host,
    authentication refused, Ray node gone.
    """

    name: str = "base"

    def __init__(self, scheduler: SchedulerConfig) -> None:
        self.scheduler = scheduler

    def workdir(self, node: NodeConfig) -> str:
        """The node's own working directory on the node (SchedulerConfig.node_workdir)."""
        return self.scheduler.node_workdir(node)

    @staticmethod
    def check_start(argv: list[str], log_path: str) -> None:
        """Refuse what no transport can start: an empty command or a relative log path."""
        if not argv:
            raise ValueError("start: empty argv")
        if not posixpath.isabs(log_path):
            raise ValueError(f"start: log_path must be absolute, got {log_path!r}")

    @abc.abstractmethod
    def start(
        self,
        node: NodeConfig,
        argv: list[str],
        env: dict[str, str],
        log_path: str,
        cwd: str | None = None,
    ) -> ProcessHandle:
        """Start argv detached in its own session and process group; stdout+stderr to log_path.

        log_path is absolute; its directory and cwd (default: workdir(node)) are created. env is
        added to the node's environment. The exit code is recorded next to the log (exit_path).
        """

    def acquire_nodes(
        self,
        progress: Callable[[str], None] | None = None,
        source: str = "<config>",
        ask: bool = True,
    ) -> None:
        """Settle scheduler.nodes before a plan is made: the config lists them for local, ssh and
        ray (nothing to do); slurm takes them from its allocation, asking Slurm for one when
        there is none (not when ask is False), and close() gives that back. source names the
        config in errors."""

    def recover(self, node: NodeConfig, log_path: str, wait_s: float = 2.0) -> ProcessHandle | None:
        """The command a start with this log_path launched, found from what the node side
        recorded first (for a start whose reply was lost: Ctrl-C while it was in flight); None
        when nothing was started. Waits up to wait_s for a start that may still be under way."""
        return None

    def prepare(self, node: NodeConfig) -> None:
        """Get ready to start a command on the node soon (preflight calls it); nothing by default.

        Whatever it sets up holds no command: close() releases it if no start used it.
        """

    @abc.abstractmethod
    def alive(self, node: NodeConfig, handle: ProcessHandle) -> bool:
        """Is the started process still running?"""

    @abc.abstractmethod
    def exit_code(self, node: NodeConfig, handle: ProcessHandle) -> int | None:
        """The exit code once it has ended (None while running or when it cannot be known)."""

    @abc.abstractmethod
    def stop(self, node: NodeConfig, handle: ProcessHandle, grace_s: float = 10.0) -> None:
        """SIGTERM the whole process group, wait up to grace_s, then SIGKILL. No orphans."""

    @abc.abstractmethod
    def run(
        self, node: NodeConfig, argv: list[str], timeout_s: float = 60.0, input: bytes | None = None
    ) -> CommandResult:
        """Run argv to completion on the node and return its output."""

    @abc.abstractmethod
    def fetch(self, node: NodeConfig, remote_path: str, local_path: str) -> None:
        """Copy one file from the node to this machine (local_path is written atomically)."""

    @abc.abstractmethod
    def listdir(self, node: NodeConfig, directory: str, pattern: str = "*") -> list[RemoteFile]:
        """Files in directory on the node matching the glob pattern (non-recursive)."""

    @abc.abstractmethod
    def stream(self, node: NodeConfig, argv: list[str]) -> LineStream:
        """Start argv on the node for as long as the caller reads it, over one channel opened
        once (one process, one ssh session, one Ray task). It gets EOF on stdin when closed."""

    def tail(self, node: NodeConfig, path: str, lines: int = 20) -> str:
        """The last lines of a file on the node (for error messages); empty if unreadable."""
        try:
            result = self.run(node, ["tail", "-n", str(lines), path], timeout_s=15.0)
        except Exception:  # noqa: BLE001 - best effort, only used to decorate another error
            return ""
        return result.stdout if result.returncode == 0 else ""

    def close(self) -> None:
        """Release connections (ssh control masters, Ray actors)."""
