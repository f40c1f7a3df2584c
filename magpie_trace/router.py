"""The router in front of a deployment's groups: sglang-router or vllm-router, on one node.

Both are the PyPI wheels that carry their Rust binaries. What they take and answer was seen on
sglang-router 0.3.2 and vllm-router 0.1.17 (docs/engines.md has the details):
- PD mode: `--pd-disaggregation` (sglang-router) or `--vllm-pd-disaggregation` (vllm-router),
  then `--prefill URL [BOOTSTRAP_PORT]` per prefill server and `--decode URL` per decode server;
  regular mode: `--worker-urls URL ...`. Policies: `--policy`, `--prefill-policy`, `--decode-policy`.
- Both open a Prometheus port (default 29000, a clash between users of one node): always given.
- `--worker-startup-check-interval 1`: the default 30 s would delay readiness by up to 30 s;
  `--worker-startup-timeout-secs`: server.ready_timeout_s (vllm-router exits after 600 s).
- `GET /workers` lists every worker with `url`, `worker_type` and `is_healthy`. sglang-router's
  `/health` answers 200 before its workers are registered, so readiness is read from /workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from magpie_trace.secrets import Secrets

if TYPE_CHECKING:
    from magpie_trace.config import RouterConfig

DEFAULT_PORT = 8080
DEFAULT_METRICS_PORT = 29000
WORKERS_PATH = "/workers"
HEALTH_PATH = "/health"
_COMMANDS = {"sglang-router": ("sglang-router", "launch"), "vllm-router": ("vllm-router",)}
_PD_FLAG = {"sglang-router": "--pd-disaggregation", "vllm-router": "--vllm-pd-disaggregation"}
# vLLM's --kv-transfer-config connector -> vllm-router's --kv-connector (its PD handshake).
_VLLM_ROUTER_CONNECTORS = {"NixlConnector": "nixl", "MooncakeConnector": "mooncake",
                           "MoRIIOConnector": "moriio"}


@dataclass(frozen=True)
class Worker:
    """One API server the router sends requests to."""

    url: str
    role: str  # "prefill" | "decode" | "serve"
    group: str
    bootstrap_port: int | None = None  # prefill: what the router hands the decode (SGLang)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "role": self.role, "group": self.group,
                "bootstrap_port": self.bootstrap_port}


@dataclass
class RouterPlan:
    """The router's process: where it runs, its argv, its URL and the workers it must see."""

    kind: str
    index: int  # the node it runs on (scheduler index)
    node_name: str
    address: str
    port: int
    metrics_port: int
    command: list[str]
    args: list[str]
    env: dict[str, str]
    workers: list[Worker]
    log_path: str
    workdir: str
    ready_timeout_s: float
    url: str = field(init=False)
    # Launch starts, watches and stops it like a node's command, under this name.
    name: str = field(default="router", init=False)

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.url = f"http://{host}:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]

    def to_dict(self, secrets: Secrets | None = None) -> dict[str, Any]:
        """As shown and written: argv and env masked by `secrets` (None: in clear)."""
        return {
            "kind": self.kind, "node": self.index, "node_name": self.node_name, "url": self.url,
            "metrics_port": self.metrics_port,
            "argv": secrets.argv(self.argv) if secrets else self.argv,
            "env": secrets.env(self.env) if secrets else dict(self.env),
            "workers": [worker.to_dict() for worker in self.workers], "log_path": self.log_path,
        }


def router_ports(router: RouterConfig) -> tuple[int, int]:
    return router.port or DEFAULT_PORT, router.metrics_port or DEFAULT_METRICS_PORT


def default_command(kind: str) -> list[str]:
    """The router's console script (on the router node's PATH); router.command replaces it."""
    return list(_COMMANDS[kind])


def router_args(router: RouterConfig, workers: list[Worker], kv_connector: str | None,
                startup_timeout_s: float) -> list[str]:
    """The router's arguments: its address, its workers (PD pairs or replicas), its policies, and
    how long it waits for its workers (the servers' own ready timeout: vllm-router gives up after
    600 s by default, and exits)."""
    port, metrics_port = router_ports(router)
    args = ["--host", router.host, "--port", str(port)]
    if any(worker.role != "serve" for worker in workers):
        args.append(_PD_FLAG[router.kind])
        for worker in workers:
            if worker.role == "prefill":
                args += ["--prefill", worker.url]
                if worker.bootstrap_port is not None:
                    args.append(str(worker.bootstrap_port))
        for worker in workers:
            if worker.role == "decode":
                args += ["--decode", worker.url]
        if router.kind == "vllm-router" and kv_connector in _VLLM_ROUTER_CONNECTORS:
            args += ["--kv-connector", _VLLM_ROUTER_CONNECTORS[kv_connector]]
    else:
        args += ["--worker-urls", *(worker.url for worker in workers)]
    for flag, value in (("--policy", router.policy), ("--prefill-policy", router.prefill_policy),
                        ("--decode-policy", router.decode_policy)):
        if value is not None:
            args += [flag, value]
    args += ["--prometheus-port", str(metrics_port), "--worker-startup-check-interval", "1",
             "--worker-startup-timeout-secs", str(math.ceil(startup_timeout_s))]
    return args + list(router.extra_args)


def unready_workers(payload: Any, workers: list[Worker]) -> list[Worker]:
    """The workers a router's GET /workers answer does not list as healthy (all, if unreadable)."""
    listed = payload.get("workers") if isinstance(payload, dict) else None
    if not isinstance(listed, list):
        return list(workers)
    healthy = {str(entry.get("url", "")).rstrip("/") for entry in listed
               if isinstance(entry, dict) and entry.get("is_healthy") is True}
    return [worker for worker in workers if worker.url.rstrip("/") not in healthy]
