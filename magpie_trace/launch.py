"""Start every node's command at once, wait until the server is truly ready, tear it all down.

Ready means the head's health endpoint answers 200 AND every node's process is still alive: a
worker that died during startup must not hide behind a head that is still loading. With several
groups, every group's API servers must answer, and a router must list every one of them healthy.
Every started process group (the router's too) is recorded in state.json before anything else can
fail, so `stop` (and Ctrl-C, and any failure) ends exactly what was started and nothing else.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import yaml

from magpie_trace import interrupts, router
from magpie_trace.backends import make_backend
from magpie_trace.backends.base import Backend, ProcessHandle, exit_text
from magpie_trace.config import NodeConfig, under
from magpie_trace.errors import MagpieError, NodeError, NodeGone
from magpie_trace.fanout import on_nodes
from magpie_trace.fsutil import atomic_write_bytes, atomic_write_text
from magpie_trace.plan import NodePlan, Plan
from magpie_trace.router import RouterPlan
from magpie_trace.rundir import RunDir
from magpie_trace.secrets import Secrets

STATE_SCHEMA = "magpie-trace/state/1"
Progress = Callable[[str], None]


@dataclass
class LaunchState:
    """What launch started, persisted so a later `stop` in another process ends exactly that."""

    run_id: str
    backend: str
    handles: dict[str, ProcessHandle] = field(default_factory=dict)
    started_at: float = 0.0
    ready_at: float | None = None
    stopped_at: float | None = None
    stop_requested: dict[str, Any] | None = None  # {by, at}: an operator's `magpie-trace stop`
    lost: dict[str, str] = field(default_factory=dict)  # node -> why it counts as stopped
    # node -> log path of a start under way: recorded before it begins, so that a start whose
    # reply never came (Ctrl-C) is still found on its node (Backend.recover) and stopped
    starting: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            "run_id": self.run_id,
            "backend": self.backend,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "stopped_at": self.stopped_at,
            "stop_requested": self.stop_requested,
            "lost": self.lost,
            "starting": self.starting,
            "handles": {name: h.to_dict() for name, h in self.handles.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LaunchState":
        return cls(
            run_id=data["run_id"],
            backend=data["backend"],
            handles={n: ProcessHandle.from_dict(h) for n, h in data.get("handles", {}).items()},
            started_at=data.get("started_at", 0.0),
            ready_at=data.get("ready_at"),
            stopped_at=data.get("stopped_at"),
            stop_requested=data.get("stop_requested"),
            lost=dict(data.get("lost") or {}),
            starting=dict(data.get("starting") or {}),
        )


def save_state(run_dir: RunDir, state: LaunchState) -> None:
    atomic_write_bytes(run_dir.state, orjson.dumps(state.to_dict(), option=orjson.OPT_INDENT_2))


def load_state(run_dir: RunDir) -> LaunchState:
    try:
        return LaunchState.from_dict(orjson.loads(run_dir.state.read_bytes()))
    except FileNotFoundError:
        raise MagpieError(f"{run_dir.root}: nothing was launched in this run (no state.json)") from None
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise MagpieError(f"{run_dir.state}: unreadable launch state ({exc})") from None


def plan_for_run(run_dir: RunDir) -> Plan:
    """The plan of an existing run, from the config it was launched with (overrides included)."""
    from magpie_trace.config import load_config
    from magpie_trace.plan import make_plan

    return make_plan(load_config(run_dir.config), run_id=run_dir.run_id)


def write_run_inputs(run_dir: RunDir, plan: Plan) -> None:
    """The resolved config and plan, so every later stage and the report read the same inputs.

    Both with secrets masked: a later stage needs no env value (only launch starts processes,
    and it reads the user's own config).
    """
    config = Secrets.of(plan.config).config(plan.config.to_dict())
    atomic_write_text(run_dir.config, yaml.safe_dump(config, sort_keys=False))
    atomic_write_bytes(run_dir.plan, orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2))


def launch(
    plan: Plan,
    run_dir: RunDir,
    backend: Backend | None = None,
    preflight: bool = True,
    progress: Progress | None = None,
) -> LaunchState:
    """Preflight, start every node at once, wait until ready. On any failure everything is stopped."""
    from magpie_trace.preflight import run_preflight

    say = progress or (lambda _msg: None)
    owned = backend is None
    backend = backend or make_backend(plan.config.scheduler)
    write_run_inputs(run_dir, plan)
    if preflight:
        say("preflight on every node")
        try:
            run_preflight(plan, backend, run_dir)
        except BaseException:
            if owned:
                backend.close()  # releases what preflight prepared; nothing was started
            raise
    state = LaunchState(run_id=plan.run_id, backend=plan.backend, started_at=time.time())
    try:
        start_nodes(plan, backend, run_dir, state)
        waiting = ", ".join(url + plan.health_path for url in plan.api_urls)
        say(f"started {len(state.handles)} process(es); waiting for {waiting}")
        wait_ready(plan, backend, state, plan.config.server.ready_timeout_s)
        if plan.router is not None:
            say(f"waiting for {plan.router.url}{router.WORKERS_PATH} to list every worker healthy")
            wait_router(plan, backend, state)
        state.ready_at = time.time()
        save_state(run_dir, state)
        say(f"ready after {state.ready_at - state.started_at:.1f} s")
        return state
    except BaseException:
        with interrupts.shielded():
            try:
                stop(plan, run_dir, backend, state)
            except MagpieError:
                pass  # the launch failure is the one to report; state.json keeps what is left
            if owned:
                backend.close()
        raise


def start_nodes(plan: Plan, backend: Backend, run_dir: RunDir, state: LaunchState) -> None:
    """Start every node's command (and the router) in parallel, recording each handle the moment
    it exists."""
    lock = threading.Lock()
    save_state(run_dir, state)

    def start(node: NodePlan | RouterPlan) -> None:
        argv = node.argv
        if argv is None:
            return
        with lock:
            state.starting[node.name] = node.log_path
            save_state(run_dir, state)
        handle = backend.start(
            plan.node_config(node.index), argv, node.env, node.log_path, cwd=node.workdir
        )
        with lock:
            state.handles[node.name] = handle
            del state.starting[node.name]
            save_state(run_dir, state)

    on_nodes(start, plan.processes)


def wait_ready(plan: Plan, backend: Backend, state: LaunchState, timeout_s: float) -> None:
    """Poll every API server's health endpoint (the head's, for one server) and every node's
    liveness until ready or timeout."""
    pending = {node.api_url: node for node in plan.nodes if node.serves_http}
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while True:
        check_alive(plan, backend, state, during="startup")
        for url in list(pending):
            ok, last_error = http_ok(url + plan.health_path)
            if not ok:
                break
            del pending[url]
        if not pending:
            # One more liveness pass: a node may have died while the head came up.
            check_alive(plan, backend, state, during="startup")
            return
        if time.monotonic() >= deadline:
            url, head = next(iter(pending.items()))
            tail = _log_tail(plan, backend, state, head)
            raise NodeError(
                plan.label(head.name),
                f"not healthy after {timeout_s:g} s ({url}{plan.health_path}: {last_error})" + tail,
            )
        time.sleep(0.5)


def wait_router(plan: Plan, backend: Backend, state: LaunchState) -> None:
    """Poll the router's GET /workers until it lists every group's API server healthy (its own
    /health can answer before it has registered them), watching every process meanwhile."""
    assert plan.router is not None
    url = plan.router.url + router.WORKERS_PATH
    deadline = time.monotonic() + plan.router.ready_timeout_s
    missing, last_error = list(plan.router.workers), "no answer yet"
    while True:
        check_alive(plan, backend, state, during="startup")
        ok, body = http_get(url)
        if ok:
            try:
                missing = router.unready_workers(orjson.loads(body), plan.router.workers)
                last_error = "lists as healthy only some of its workers"
            except orjson.JSONDecodeError:
                last_error = "answers no JSON"
            if not missing:
                return
        else:
            last_error = body
        if time.monotonic() >= deadline:
            names = ", ".join(f"{w.url} (group {w.group})" for w in missing)
            raise NodeError(
                plan.label(plan.router.name),
                f"not ready after {plan.router.ready_timeout_s:g} s: {url} {last_error}; "
                f"missing: {names}" + _log_tail(plan, backend, state, plan.router),
            )
        time.sleep(0.5)


def check_alive(plan: Plan, backend: Backend, state: LaunchState, during: str) -> None:
    """Raise NodeError naming the first node whose process has exited, with its code and log.

    Every node is asked at once: one round trip per pass, however many nodes there are.
    """
    started = [node for node in plan.processes if node.name in state.handles]
    alive = on_nodes(
        lambda node: backend.alive(plan.node_config(node.index), state.handles[node.name]), started
    )
    for node in started:
        if alive[node.name]:
            continue
        config = plan.node_config(node.index)
        handle = state.handles[node.name]
        code = exit_text(backend.exit_code(config, handle))
        raise NodeError(
            plan.label(node.name),
            f"process exited with {code} during {during}" + _log_tail(plan, backend, state, node),
        )


def http_ok(url: str, timeout_s: float = 2.0) -> tuple[bool, str]:
    """GET url; (True, "") on 200, else (False, what went wrong)."""
    ok, body = http_get(url, timeout_s)
    return ok, "" if ok else body


def http_get(url: str, timeout_s: float = 2.0) -> tuple[bool, str]:
    """GET url; (True, body) on 200, else (False, what went wrong)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            if response.status != 200:
                return False, f"HTTP {response.status}"
            return True, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, str(reason)


def _log_tail(plan: Plan, backend: Backend, state: LaunchState, node: NodePlan | RouterPlan) -> str:
    handle = state.handles.get(node.name)
    path = handle.log_path if handle else node.log_path
    text = backend.tail(plan.node_config(node.index), path, lines=5).strip()
    if not text:
        return f"; log {path} is empty"
    lines = [line.strip() for line in text.splitlines() if line.strip()][-3:]
    return f"; last log lines ({path}): " + " | ".join(lines)


def stop(
    plan: Plan,
    run_dir: RunDir,
    backend: Backend | None = None,
    state: LaunchState | None = None,
    grace_s: float = 10.0,
    requested_by: str | None = None,
) -> LaunchState | None:
    """Stop every process group this run started, on every node at once; fetch the logs.

    `requested_by` (an operator's `magpie-trace stop`) is recorded in state.json first, so a run
    still going in another process says it was stopped rather than blaming the node whose engine
    happened to end first; a run's own teardown keeps that record.

    A node that is gone (NodeGone: its Ray node died) counts as stopped and is recorded in
    state.lost; the others are stopped all the same. Any other failure is raised after every
    node was tried and the state saved, so `stop` can be run again.
    """
    backend = backend or make_backend(plan.config.scheduler)
    on_disk = load_state(run_dir) if run_dir.state.exists() else None
    if state is None:
        if on_disk is None:
            return None
        state = on_disk
    if requested_by is not None:
        state.stop_requested = {"by": requested_by, "at": time.time()}
        save_state(run_dir, state)
    elif on_disk is not None and state.stop_requested is None:
        state.stop_requested = on_disk.stop_requested
    by_name = {node.name: node for node in plan.processes}
    lock = threading.Lock()

    def stop_one(node: NodePlan | RouterPlan) -> None:
        config = plan.node_config(node.index)
        try:
            handle = state.handles.get(node.name) or _recover(config, node.name)
            if handle is None:
                return
            backend.stop(config, handle, grace_s=grace_s)
        except NodeGone as exc:
            with lock:
                state.lost[node.name] = str(exc).split(": ", 1)[-1]
                state.starting.pop(node.name, None)
            return
        try:
            backend.fetch(config, handle.log_path, under(str(run_dir.logs), f"{node.name}.log"))
        except MagpieError:
            pass  # a node that cannot be reached keeps its log; the stop itself succeeded

    def _recover(config: NodeConfig, name: str) -> ProcessHandle | None:
        """A start that was under way when the launch ended: its command, if it began."""
        log_path = state.starting.get(name)
        if log_path is None:
            return None
        handle = backend.recover(config, log_path)
        with lock:
            del state.starting[name]
            if handle is not None:
                state.handles[name] = handle
            save_state(run_dir, state)
        return handle

    names = [*state.handles, *(name for name in state.starting if name not in state.handles)]
    targets = [by_name[name] for name in names if name in by_name]
    try:
        on_nodes(stop_one, targets)
        state.stopped_at = time.time()
    finally:
        save_state(run_dir, state)
    return state


class RunStopped(MagpieError):
    """The run was ended on purpose by `magpie-trace stop`: no node is to blame."""


def operator_stop(run_dir: RunDir, since: float, during: str) -> RunStopped | None:
    """The RunStopped to report instead of a node failure, if an operator stopped the run."""
    try:
        request = load_state(run_dir).stop_requested if run_dir.state.exists() else None
    except MagpieError:
        return None
    if not request or request.get("at", 0) < since:
        return None
    clock = time.strftime("%H:%M:%S", time.localtime(request["at"]))
    return RunStopped(
        f"stopped by {request['by']} at {clock} during {during}; every node was stopped as asked "
        "(what was measured before is kept, marked invalid)"
    )
