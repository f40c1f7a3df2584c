"""The `ray` backend: commands run under a detached agent actor pinned to their Ray node.

It joins an existing Ray cluster (`scheduler.ray.address`, `auto` or host:port of the GCS) and
never starts one. Each config node maps to exactly one alive Ray node: by `ray_node_id`, else by
`ray_labels` (every pair must be among the Ray node's labels), else by `host` (the Ray node's IP
or hostname). No match, or more than one, is a NodeError naming the config node and what was seen.

Started commands are owned by one agent per Ray node: a named, detached actor (0 CPUs, hard
NodeAffinity) whose name is derived from the Ray node id, in the configured namespace. It is made
on the node's first start (parallel starts share it) and killed once the last of its commands is
stopped, so it outlives `magpie-trace launch`, a later process (`magpie-trace stop`) finds it from
the ProcessHandle, and it leaves nothing behind. One agent rather than one actor per command: each
actor is a new Ray worker process (about a CPU-second to start), and a node's commands are few.
The code that runs on the nodes is ray_node.py, shipped by value: nodes need Ray, not
magpie-trace.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import ray
from ray import cloudpickle
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from magpie_trace import fsutil, interrupts
from magpie_trace.backends import ray_node
from magpie_trace.backends.base import (
    Backend,
    CommandResult,
    LineStream,
    ProcessHandle,
    RemoteFile,
)
from magpie_trace.backends.posix import exit_path
from magpie_trace.config import NodeConfig, SchedulerConfig
from magpie_trace.errors import MagpieError, NodeError, NodeGone

# Pickle the node-side functions and actor class by value rather than by module reference.
cloudpickle.register_pickle_by_value(ray_node)

_ProcessAgent = ray.remote(ray_node.ProcessAgent)
_run_command = ray.remote(ray_node.run_command)
_read_chunks = ray.remote(ray_node.read_chunks)
_stream_lines = ray.remote(ray_node.stream_lines)
_list_files = ray.remote(ray_node.list_files)
_read_exit_code = ray.remote(ray_node.read_exit_code)

AGENT_PREFIX = "magpie-trace-agent"
# Concurrent calls an agent serves: stops wait out their grace period in parallel.
AGENT_THREADS = 32
# A start that meets an agent closing after its last stop retries on a new one.
AGENT_ATTEMPTS = 20
AGENT_RETRY_S = 0.05
CHUNK_BYTES = 8 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
# A node's first call starts a Ray worker process there (about a second; more on a busy node).
CONTROL_TIMEOUT_S = 60.0
_SHOWN_NODES = 8


def agent_name(ray_node_id: str) -> str:
    """The Ray actor name of the agent that owns the commands started on that Ray node."""
    return f"{AGENT_PREFIX}:{ray_node_id}"


class RayBackend(Backend):
    """Run commands on the nodes of an existing Ray cluster, through Ray only (no ssh)."""

    name = "ray"

    def __init__(self, scheduler: SchedulerConfig) -> None:
        """Joins the cluster now, in the caller's thread: Ray wants its first init in the main
        thread (signal handlers), and a bad address should fail before any node is touched."""
        super().__init__(scheduler)
        self._lock = threading.Lock()
        self._prepared: dict[str, tuple[NodeConfig, ActorHandle]] = {}
        self._checked = False
        self._connected_here = False
        self._connect()

    # -- connection and node mapping ------------------------------------------------------------

    def _connect(self) -> None:
        """Check the address once, then join the cluster (or reuse this process's connection)."""
        with self._lock:
            if self._checked and ray.is_initialized():
                return
            address = self.scheduler.ray.address
            _check_reachable(address)
            self._checked = True
            if ray.is_initialized():
                return
            handlers = interrupts.current()
            try:
                ray.init(
                    address=address,
                    namespace=self.scheduler.ray.namespace,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise MagpieError(
                    f"scheduler.ray.address: cannot join the Ray cluster at {address}: "
                    f"{_first_line(exc)}"
                ) from None
            finally:
                interrupts.reinstall(handlers)  # ray.init makes SIGTERM a bare sys.exit
            self._connected_here = True

    def ray_node_id(self, node: NodeConfig) -> str:
        """The id of the one alive Ray node that node maps to (NodeError otherwise)."""
        self._connect()
        nodes = ray.nodes()
        if node.ray_node_id:
            rule = f"ray_node_id {node.ray_node_id}"
            matches = [n for n in nodes if n["NodeID"] == node.ray_node_id]
        elif node.ray_labels:
            rule = "ray_labels " + _labels_text(node.ray_labels)
            matches = [n for n in nodes if _has_labels(n, node.ray_labels)]
        else:
            rule = f"host {node.host}"
            matches = [
                n
                for n in nodes
                if node.host in (n["NodeManagerAddress"], n.get("NodeManagerHostname"))
            ]
        alive = [n for n in matches if n["Alive"]]
        if len(alive) == 1:
            return str(alive[0]["NodeID"])
        if alive:
            raise NodeError(
                node.name,
                f"{rule} matches {len(alive)} Ray nodes ({_describe(alive)}); "
                "set ray_node_id or ray_labels to pick one",
            )
        if matches:
            raise _gone(node, matches[0])
        seen = _describe([n for n in nodes if n["Alive"]]) or "none"
        raise NodeError(node.name, f"no alive Ray node has {rule}; alive Ray nodes: {seen}")

    def _on(self, node_id: str) -> dict[str, Any]:
        """Task options: 0 CPUs (never waits behind the engine), that node only, no retries."""
        return {
            "num_cpus": 0,
            "max_retries": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
        }

    def _get(self, node: NodeConfig, ref: Any, what: str, timeout_s: float) -> Any:
        try:
            return ray.get(ref, timeout=timeout_s)
        except RayError as exc:
            raise _node_error(node, what, exc, timeout_s) from None

    def _check_node(self, node: NodeConfig, node_id: str) -> None:
        """NodeError if the Ray node with node_id is gone."""
        known = [n for n in ray.nodes() if n["NodeID"] == node_id]
        if not known or not known[0]["Alive"]:
            raise _gone(node, known[0] if known else {"NodeID": node_id})

    def _agent(self, node: NodeConfig, handle: ProcessHandle) -> ActorHandle | None:
        """The handle's agent; None when there is none (it closed after its last stop).
        NodeError if its Ray node is gone."""
        name = handle.extra.get("actor")
        if handle.backend != self.name or not name:
            raise NodeError(node.name, f"pid {handle.pid} was not started by the ray backend")
        self._connect()
        try:
            return ray.get_actor(name, namespace=handle.extra["namespace"])
        except ValueError:
            self._check_node(node, str(handle.extra["ray_node_id"]))
            return None

    def _agent_died(
        self, node: NodeConfig, handle: ProcessHandle, what: str, exc: RayActorError
    ) -> None:
        """A call to the handle's agent met a dead agent: fine if it closed after its last stop
        (it held nothing, so the exit code is on disk); NodeError if the node is gone or the
        agent died holding the command."""
        self._check_node(node, str(handle.extra["ray_node_id"]))
        if self._exit_file_code(node, handle) is None:
            raise _node_error(node, what, exc, CONTROL_TIMEOUT_S)

    def _exit_file_code(self, node: NodeConfig, handle: ProcessHandle) -> int | None:
        options = self._on(str(handle.extra["ray_node_id"]))
        ref = _read_exit_code.options(**options).remote(handle.extra["exit_path"])
        return self._get(node, ref, f"cannot check pid {handle.pid}", CONTROL_TIMEOUT_S)

    def _status(self, node: NodeConfig, handle: ProcessHandle) -> tuple[bool, int | None]:
        """(known, returncode) from the handle's agent; known is False once the command was
        stopped or replaced, or its agent closed."""
        agent = self._agent(node, handle)
        if agent is None:
            return False, None
        what = f"cannot check pid {handle.pid}"
        try:
            known, code = ray.get(
                agent.status.remote(handle.log_path, handle.pid), timeout=CONTROL_TIMEOUT_S
            )
        except RayActorError as exc:
            self._agent_died(node, handle, what, exc)
            return False, None
        except RayError as exc:
            raise _node_error(node, what, exc, CONTROL_TIMEOUT_S) from None
        return known, code

    def _close_if_idle(self, node: NodeConfig, agent: ActorHandle) -> None:
        """Kill the agent if it holds no command any more (it then refuses new ones)."""
        try:
            idle = ray.get(agent.close_if_idle.remote(), timeout=CONTROL_TIMEOUT_S)
        except RayActorError:
            return  # a parallel stop closed it first
        except RayError as exc:
            raise _node_error(node, "cannot close its Ray actor", exc, CONTROL_TIMEOUT_S) from None
        if idle:
            ray.kill(agent)

    def _agent_on(self, node_id: str) -> ActorHandle:
        """The Ray node's agent, created if there is none (its worker boots in the background)."""
        return _ProcessAgent.options(
            name=agent_name(node_id),
            namespace=self.scheduler.ray.namespace,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_restarts=0,
            max_concurrency=AGENT_THREADS,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote()

    # -- Backend --------------------------------------------------------------------------------

    def prepare(self, node: NodeConfig) -> None:
        """Boot the node's agent now, so that start does not wait for a new Ray worker process.

        An agent prepared here holds nothing until a start; close() kills it if it still holds
        nothing then, and the last stop kills it otherwise.
        """
        node_id = self.ray_node_id(node)
        with self._lock:
            self._prepared.setdefault(node_id, (node, self._agent_on(node_id)))

    def start(
        self,
        node: NodeConfig,
        argv: list[str],
        env: dict[str, str],
        log_path: str,
        cwd: str | None = None,
    ) -> ProcessHandle:
        self.check_start(argv, log_path)
        # A Ray driver that the command starts (vLLM's Ray executor) joins this same cluster.
        full_env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address, **env}
        exit_file = exit_path(log_path)
        workdir = cwd or self.workdir(node)
        what = f"cannot start {argv[0]}"
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        for _ in range(AGENT_ATTEMPTS):
            node_id = self.ray_node_id(node)
            name = agent_name(node_id)
            agent = self._agent_on(node_id)
            ref = agent.start.remote(argv, full_env, log_path, workdir, exit_file)
            try:
                pid = ray.get(ref, timeout=max(deadline - time.monotonic(), 1.0))
            except RayActorError:
                pid = "closing"  # killed as it closed after we found it (or the node went)
            except RayTaskError as exc:  # e.g. cwd cannot be made: the agent may hold nothing
                self._close_if_idle(node, agent)
                raise _node_error(node, what, exc, CONTROL_TIMEOUT_S) from None
            except RayError as exc:
                raise _node_error(node, what, exc, CONTROL_TIMEOUT_S) from None
            if pid == "running":
                raise NodeError(
                    node.name,
                    f"a command logging to {log_path} is still running (Ray actor {name}); "
                    "stop it first",
                )
            if isinstance(pid, int):
                return self._handle(node, pid, log_path, node_id)
            ray.kill(agent)  # closing, so it holds nothing; its last stopper may not have killed it
            if time.monotonic() >= deadline:
                break
            time.sleep(AGENT_RETRY_S)
        raise NodeError(node.name, f"{what}: its Ray actor {name} kept closing or dying")

    def _handle(self, node: NodeConfig, pid: int, log_path: str, node_id: str) -> ProcessHandle:
        return ProcessHandle(
            node=node.name,
            pid=pid,
            pgid=pid,
            log_path=log_path,
            backend=self.name,
            extra={
                "exit_path": exit_path(log_path),
                "actor": agent_name(node_id),
                "namespace": self.scheduler.ray.namespace,
                "ray_node_id": node_id,
            },
        )

    def recover(self, node: NodeConfig, log_path: str, wait_s: float = 2.0) -> ProcessHandle | None:
        """Ask the node's agent, which keys its commands by log path."""
        node_id = self.ray_node_id(node)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                agent = ray.get_actor(agent_name(node_id), namespace=self.scheduler.ray.namespace)
                pid = ray.get(agent.find.remote(log_path), timeout=CONTROL_TIMEOUT_S)
            except (ValueError, RayActorError):
                pid = None  # no agent there: nothing of ours was started
            except RayError as exc:
                raise _node_error(node, "cannot look for its command", exc, CONTROL_TIMEOUT_S) from None
            if pid is not None:
                return self._handle(node, pid, log_path, node_id)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def alive(self, node: NodeConfig, handle: ProcessHandle) -> bool:
        known, code = self._status(node, handle)
        return known and code is None

    def exit_code(self, node: NodeConfig, handle: ProcessHandle) -> int | None:
        known, code = self._status(node, handle)
        return code if known else self._exit_file_code(node, handle)

    def stop(self, node: NodeConfig, handle: ProcessHandle, grace_s: float = 10.0) -> None:
        agent = self._agent(node, handle)
        if agent is None:
            return  # stopped before, and its agent closed
        what = f"cannot stop group {handle.pgid}"
        ref = agent.stop.remote(handle.log_path, handle.pid, grace_s)
        timeout_s = grace_s + 2 * ray_node.KILL_WAIT_S + CONTROL_TIMEOUT_S
        try:
            survivors = ray.get(ref, timeout=timeout_s)
        except RayActorError as exc:
            self._agent_died(node, handle, what, exc)
            return  # its agent closed meanwhile: the command was stopped before
        except RayError as exc:
            raise _node_error(node, what, exc, timeout_s) from None
        if survivors:  # the agent keeps the group, so that a later stop can try again
            raise NodeError(
                node.name, f"{len(survivors)} processes of group {handle.pgid} survived SIGKILL"
            )
        self._close_if_idle(node, agent)

    def run(
        self, node: NodeConfig, argv: list[str], timeout_s: float = 60.0, input: bytes | None = None
    ) -> CommandResult:
        if not argv:
            raise ValueError("empty argv")
        ref = _run_command.options(**self._on(self.ray_node_id(node))).remote(
            argv, timeout_s, input
        )
        code, out, err = self._get(
            node, ref, f"cannot run {argv[0]}", timeout_s + CONTROL_TIMEOUT_S
        )
        if code is None:
            raise NodeError(node.name, f"{argv[0]} timed out after {timeout_s:g} s")
        return CommandResult(
            code, out.decode(errors="surrogateescape"), err.decode(errors="replace")
        )

    def fetch(self, node: NodeConfig, remote_path: str, local_path: str) -> None:
        """Streams the file in chunks (at most two in flight), written to a temp file + rename."""
        options = self._on(self.ray_node_id(node))
        chunks = _read_chunks.options(**options, _generator_backpressure_num_objects=2).remote(
            remote_path, CHUNK_BYTES
        )
        what = f"cannot fetch {remote_path}"
        tmp = fsutil.temp_path_for(local_path)
        try:
            with open(tmp, "wb") as out:
                try:
                    out.writelines(self._get(node, ref, what, CONTROL_TIMEOUT_S) for ref in chunks)
                except RayError as exc:
                    raise _node_error(node, what, exc, CONTROL_TIMEOUT_S) from None
            os.replace(tmp, local_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def stream(self, node: NodeConfig, argv: list[str]) -> LineStream:
        if not argv:
            raise ValueError("empty argv")
        options = self._on(self.ray_node_id(node))
        lines = _stream_lines.options(**options, _generator_backpressure_num_objects=16).remote(argv)
        return _RayStream(self, node, lines)

    def listdir(self, node: NodeConfig, directory: str, pattern: str = "*") -> list[RemoteFile]:
        """Regular files only, sorted by path; a directory that does not exist (yet) is empty."""
        ref = _list_files.options(**self._on(self.ray_node_id(node))).remote(directory, pattern)
        entries = self._get(node, ref, f"cannot list {directory}", CONTROL_TIMEOUT_S)
        return [RemoteFile(path, size, mtime) for path, size, mtime in entries]

    def close(self) -> None:
        """Kill prepared agents that hold nothing; leave the cluster if this backend joined it.
        Started commands keep running."""
        with self._lock:
            prepared, self._prepared = list(self._prepared.values()), {}
        for node, agent in prepared:
            try:
                self._close_if_idle(node, agent)
            except NodeError:
                pass  # its node is gone: nothing of ours is left there to release
        with self._lock:
            if self._connected_here:
                ray.shutdown()
                self._connected_here = False


class _RayStream(LineStream):
    """A streaming task pinned to the node; cancelling it kills the command's group there."""

    def __init__(self, backend: RayBackend, node: NodeConfig, lines: Any) -> None:
        self.backend = backend
        self.node = node
        self.lines = lines
        self.error = "its output ended"

    def readline(self) -> str | None:
        try:
            return str(ray.get(next(self.lines)))
        except StopIteration:
            return None
        except RayError as exc:
            try:
                self.backend.ray_node_id(self.node)
            except NodeError as gone:
                self.error = str(gone)[len(self.node.name) + 2 :]
            else:
                self.error = _first_line(exc)
            return None

    def close(self) -> None:
        try:
            ray.cancel(self.lines)
        except RayError:
            pass  # its node is gone, and the command with it

    def why_ended(self) -> str:
        return self.error


def _check_reachable(address: str) -> None:
    """Refuse to start a cluster; fail fast (not after Ray's minutes of retries) on a dead GCS.

    Ray Client (ray://) is refused too: this backend needs a driver on a cluster node (streamed
    fetch, the GCS address passed to commands).
    """
    if address in ("", "local"):
        raise MagpieError(
            f"scheduler.ray.address: {address!r} would start a new Ray instance; "
            "give 'auto' or host:port of the existing cluster's GCS"
        )
    if "://" in address:
        raise MagpieError(
            f"scheduler.ray.address: {address}: Ray Client addresses are not supported; run "
            "magpie-trace on a node of the cluster with 'auto' or the GCS host:port"
        )
    host, sep, port = address.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise MagpieError(
            f"scheduler.ray.address: cannot reach the Ray cluster at {address}: "
            f"{exc.strerror or exc}"
        ) from None


def _node_error(node: NodeConfig, what: str, exc: RayError, timeout_s: float) -> NodeError:
    """One line naming the node for a failure that Ray reported."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause
        return NodeError(node.name, f"{what}: {_first_line(reason)}")
    if isinstance(exc, RayActorError):
        return NodeError(node.name, f"{what}: its Ray actor is gone (was the Ray node removed?)")
    if isinstance(exc, GetTimeoutError):
        return NodeError(node.name, f"{what}: no answer through Ray within {timeout_s:g} s")
    return NodeError(node.name, f"{what}: {_first_line(exc)}")


def _gone(node: NodeConfig, ray_node: dict[str, Any]) -> NodeGone:
    reason = _first_line(ray_node.get("DeathReasonMessage") or "no longer in the cluster")
    return NodeGone(node.name, f"Ray node {ray_node['NodeID']} is gone: {reason}")


def _has_labels(ray_node: dict[str, Any], labels: dict[str, str]) -> bool:
    have = ray_node.get("Labels") or {}
    return all(have.get(key) == value for key, value in labels.items())


def _labels_text(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def _describe(nodes: list[dict[str, Any]]) -> str:
    """Ray nodes as `<id> <ip> {user labels}`, for error messages."""
    parts = []
    for n in nodes[:_SHOWN_NODES]:
        labels = {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}
        parts.append(f"{n['NodeID']} {n['NodeManagerAddress']} {_labels_text(labels)}")
    if len(nodes) > _SHOWN_NODES:
        parts.append(f"... {len(nodes) - _SHOWN_NODES} more")
    return "; ".join(parts)


def _first_line(value: object) -> str:
    lines = [line.strip() for line in str(value).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(value).__name__
