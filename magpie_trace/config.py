"""The run configuration: one YAML file for cluster, server, profile, benchmark and output.

Loading is strict on purpose: an unknown key, a wrong type or a missing model is refused with one
line naming the file and the key, because a typo in a multi-node launch costs a cluster allocation.
Key names follow Magpie's (`scheduler.nodes`, `scheduler.head_node`, `scheduler.worker_nodes`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import posixpath
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from magpie_trace.errors import ConfigError
from magpie_trace.groups import validate_deployment

BACKENDS = ("local", "ssh", "ray", "slurm")
ENGINES = ("vllm", "sglang", "sim")


@dataclass
class NodeConfig:
    """One node. `host` is how the backend reaches it; `address` is what the engines use to find it."""

    host: str
    name: str = ""
    address: str = ""
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_identity: str | None = None
    ray_node_id: str | None = None
    ray_labels: dict[str, str] = field(default_factory=dict)
    gpus: int | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class SshConfig:
    """Defaults for every ssh node; per-node `ssh_*` keys win. Options go to `ssh -o`."""

    user: str | None = None
    port: int | None = None
    identity: str | None = None
    options: list[str] = field(default_factory=list)
    connect_timeout_s: float = 10.0


@dataclass
class RayConfig:
    """An existing Ray cluster to join (`auto` finds the local one)."""

    address: str = "auto"
    namespace: str = "magpie-trace"


@dataclass
class SlurmConfig:
    """The Slurm allocation to run in: the current one (SLURM_JOB_ID), `job_id`, or one asked for
    with these settings (salloc options), held for the run and released at its end."""

    job_id: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    gres: str | None = None
    constraint: str | None = None
    salloc_args: list[str] = field(default_factory=list)
    srun_args: list[str] = field(default_factory=list)
    wait_s: float = 600.0


@dataclass
class SchedulerConfig:
    backend: Literal["local", "ssh", "ray", "slurm"] = "local"
    nodes: list[NodeConfig] = field(default_factory=list)
    gpus_per_node: int = 8
    shared_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/tmp/magpie-trace"
    ssh: SshConfig = field(default_factory=SshConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def node_workdir(self, node: NodeConfig) -> str:
        """The node's own working directory on that node (logs, local traces).

        Per node, so several "nodes" on one machine (local backend, test sshds) never share files.
        """
        return node.workdir or posixpath.join(self.workdir, node.name)


@dataclass
class SimConfig:
    """The built-in simulator engine: fixed latencies, per-node clock offsets, failure injection.

    Per-node maps are keyed by node index.
    """

    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    startup_s: float = 0.5
    clock_offset_ms: dict[int, float] = field(default_factory=dict)
    clock_drift_ppm: dict[int, float] = field(default_factory=dict)
    die_after_s: dict[int, float] = field(default_factory=dict)
    layers: int = 4
    transfer_ms: float = 5.0  # a prefill group's KV handoff to a decode group


@dataclass
class GroupConfig:
    """One server of a deployment (a prefill pool member, a decode server, a replica), on nodes of
    its own. Unset sizes and ports come from the server section; extra_args and env add to it."""

    name: str = ""
    role: Literal["prefill", "decode", "serve"] = "serve"
    nodes: list[str] = field(default_factory=list)  # scheduler.nodes names or indices, head first
    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    ep: int | None = None
    host: str | None = None  # the API server's bind address (server.host when unset)
    port: int | None = None
    rendezvous_port: int | None = None
    dp_rpc_port: int | None = None
    bootstrap_port: int | None = None  # SGLang's bootstrap / vLLM's NIXL side channel / sim KV port
    kv_connector: str | None = None  # vLLM's --kv-transfer-config connector (NixlConnector)
    transfer_backend: str | None = None  # SGLang's --disaggregation-transfer-backend (mooncake)
    ib_device: str | None = None  # SGLang's --disaggregation-ib-device
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RouterConfig:
    """A real router in front of the groups: sglang-router or vllm-router, on one node."""

    kind: Literal["sglang-router", "vllm-router"] = "sglang-router"
    node: str = ""  # a scheduler.nodes name or index; the head when empty
    host: str = "0.0.0.0"
    port: int | None = None
    metrics_port: int | None = None  # the router's --prometheus-port
    policy: str | None = None
    prefill_policy: str | None = None
    decode_policy: str | None = None
    command: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0


@dataclass
class ServerConfig:
    engine: Literal["vllm", "sglang", "sim"] = "vllm"
    model: str = ""
    served_model_name: str | None = None
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    port: int | None = None
    rendezvous_port: int | None = None
    dp_rpc_port: int | None = None
    executor: Literal["mp", "ray"] = "mp"
    host: str = "0.0.0.0"
    command: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 900.0
    sim: SimConfig = field(default_factory=SimConfig)
    groups: list[GroupConfig] = field(default_factory=list)  # several servers; none: one server


@dataclass
class ProfileConfig:
    """torch.profiler on every rank. Arming happens at launch; the window is opened over HTTP."""

    enabled: bool = False
    dir: str | None = None
    activities: list[str] = field(default_factory=list)
    record_shapes: bool = False
    with_stack: bool = False
    with_memory: bool = False
    with_flops: bool = False
    delay_iterations: int = 0
    max_iterations: int = 0
    start_step: int | None = None
    num_steps: int | None = None
    start_after_s: float = 2.0
    concurrency: int | None = None
    duration_s: float = 3.0
    timeout_s: float = 600.0


@dataclass
class BenchmarkConfig:
    """The load, with vLLM `vllm bench serve` defaults and names where they exist."""

    enabled: bool = True
    model: str | None = None
    label: str | None = None
    endpoint: Literal["completions", "chat"] = "completions"
    dataset: Literal["random", "sharegpt", "jsonl", "custom", "mooncake", "burstgpt"] = "random"
    dataset_path: str | None = None
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    prefix_len: int = 0
    num_prefixes: int = 1
    turns: int = 1
    sharegpt_output_len: int | None = None
    trace_block_size: int = 512
    trace_speedup: float = 1.0
    ignore_eos: bool = True
    num_prompts: int = 200
    concurrency: list[int] | None = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128])
    request_rate: list[float] | float | None = None
    burstiness: float = 1.0
    ramp_up_strategy: Literal["linear", "exponential"] | None = None
    ramp_up_start_rps: float | None = None
    ramp_up_end_rps: float | None = None
    duration_s: float | None = None
    warmup_requests: int = 2
    seed: int = 0
    tokenizer: str | None = None
    server_tokenizer: bool = True
    percentiles: list[float] = field(default_factory=lambda: [50.0, 90.0, 95.0, 99.0])
    goodput: dict[str, float] = field(default_factory=dict)
    sglang_result: bool = False
    request_timeout_s: float = 600.0
    stall_timeout_s: float = 30.0
    telemetry_interval_s: float = 1.0
    max_duration_s: float = 3600.0
    spread: Literal["round_robin", "least_outstanding"] = "round_robin"  # over several endpoints

    @property
    def rates(self) -> list[float | None]:
        """The request rates of the sweep; None (no pacing) when none is set."""
        if self.request_rate is None:
            return [None]
        return list(self.request_rate) if isinstance(self.request_rate, list) else [self.request_rate]


@dataclass
class OutputConfig:
    dir: str = "magpie-runs"
    run_id: str | None = None
    merge: bool = True


@dataclass
class Config:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    router: RouterConfig | None = None
    source: str = "<config>"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


# --------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `key.path=value` overrides, validate. Raises ConfigError."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return config_from_dict(raw if raw is not None else {}, source=source, overrides=overrides)


def config_from_dict(
    raw: Any, source: str = "<config>", overrides: list[str] | None = None
) -> Config:
    """Build a validated Config from plain data (what YAML gives)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {_kind(raw)}")
    raw = _normalise_nodes(_deep_copy(raw), source)
    for item in overrides or []:
        _apply_override(raw, item, source)
    config = _build(Config, raw, source, "")
    config.source = source
    validate(config)
    return config


def benchmark_config(overrides: list[str], source: str = "<command line>") -> Config:
    """A Config with only a benchmark section (`bench --url` without a config file)."""
    raw: dict[str, Any] = {}
    for item in overrides:
        _apply_override(raw, item, source)
    unknown = sorted(set(raw) - {"benchmark", "output"})
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: only benchmark.* and output.* apply without a config file")
    config = Config(
        benchmark=_build(BenchmarkConfig, raw.get("benchmark", {}), source, "benchmark"),
        output=_build(OutputConfig, raw.get("output", {}), source, "output"),
        source=source,
    )
    validate_benchmark(config.benchmark, source)
    return config


def parse_override(item: str) -> tuple[list[str], Any]:
    """`server.tp=16` -> (["server", "tp"], 16); the value is read as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. server.tp=16")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    keys, value = parse_override(item)
    target = raw
    for depth, key in enumerate(keys[:-1]):
        nxt = target.get(key)
        if nxt is None:
            nxt = target[key] = {}
        if not isinstance(nxt, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"--set {item!r}: {where} is not a section")
        target = nxt
    target[keys[-1]] = value
    if keys[0] == "scheduler" and len(keys) > 1 and keys[1] in ("head_node", "worker_nodes"):
        _normalise_nodes(raw, source)


def _normalise_nodes(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept Magpie's `head_node` + `worker_nodes` as well as `nodes` (head first)."""
    sched = raw.get("scheduler")
    if not isinstance(sched, dict):
        return raw
    has_split = "head_node" in sched or "worker_nodes" in sched
    if has_split and "nodes" in sched and sched["nodes"]:
        raise ConfigError(
            f"{source}: scheduler: give either nodes or head_node + worker_nodes, not both"
        )
    if has_split:
        head = sched.pop("head_node", None)
        workers = sched.pop("worker_nodes", None) or []
        if head is None:
            raise ConfigError(f"{source}: scheduler.head_node: missing (worker_nodes needs a head)")
        if not isinstance(workers, list):
            raise ConfigError(
                f"{source}: scheduler.worker_nodes: expected a list, got {_kind(workers)}"
            )
        sched["nodes"] = [head, *workers]
    nodes = sched.get("nodes")
    if isinstance(nodes, list):
        sched["nodes"] = [{"host": n} if isinstance(n, str) else n for n in nodes]
    return raw


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        key_s = str(key)
        path = f"{prefix}.{key_s}" if prefix else key_s
        if key_s not in names:
            close = difflib.get_close_matches(key_s, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: {path}: unknown key{hint}")
        kwargs[key_s] = _coerce(hints[key_s], value, source, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, source, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise ConfigError(f"{source}: {path}: {value!r} is not one of: {allowed}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {path}: expected a list, got {_kind(value)}")
        return [_coerce(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path}: expected a mapping, got {_kind(value)}")
        return {
            _coerce(args[0], k, source, f"{path} key"): _coerce(args[1], v, source, f"{path}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {path}: expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise ConfigError(f"{source}: {path}: expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf  # as `vllm bench serve --request-rate inf` spells it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {path}: expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: {path}: expected a string, got {_kind(value)}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{source}: {path}: unsupported type {tp!r}")


# --------------------------------------------------------------------------------------------
# Validation that needs more than one key


def validate(config: Config) -> None:
    """Checks across keys; fills derived defaults (node names and addresses)."""
    src = config.source
    sched, server = config.scheduler, config.server
    if sched.backend == "slurm":
        _validate_slurm(src, sched.slurm)
    elif not sched.nodes:
        raise ConfigError(f"{src}: scheduler.nodes: at least one node is needed (the head first)")
    if sched.gpus_per_node < 1:
        raise ConfigError(f"{src}: scheduler.gpus_per_node: must be at least 1")
    seen_names: dict[str, int] = {}
    seen_hosts: dict[tuple[str, int | None, str | None], int] = {}
    for i, node in enumerate(sched.nodes):
        if not node.host.strip():
            raise ConfigError(f"{src}: scheduler.nodes[{i}].host: empty")
        node.name = node.name or f"node{i}"
        node.address = node.address or node.host
        if node.name in seen_names:
            raise ConfigError(
                f"{src}: scheduler.nodes[{i}]: name {node.name!r} is already used by "
                f"scheduler.nodes[{seen_names[node.name]}]"
            )
        seen_names[node.name] = i
        ident = (node.host, node.ssh_port, node.workdir)
        if ident in seen_hosts and sched.backend != "local":
            raise ConfigError(
                f"{src}: scheduler.nodes[{i}]: host {node.host!r} is listed twice "
                f"(also scheduler.nodes[{seen_hosts[ident]}])"
            )
        seen_hosts.setdefault(ident, i)
        if node.gpus is not None and node.gpus < 1:
            raise ConfigError(f"{src}: scheduler.nodes[{i}].gpus: must be at least 1")
    if not server.model.strip():
        raise ConfigError(f"{src}: server.model: missing (a model name or path is required)")
    for key in ("tp", "pp", "dp", "ep"):
        if getattr(server, key) < 1:
            raise ConfigError(f"{src}: server.{key}: must be at least 1")
    for key in ("port", "rendezvous_port", "dp_rpc_port"):
        value = getattr(server, key)
        if value is not None and not 0 < value < 65536:
            raise ConfigError(f"{src}: server.{key}: {value} is not a TCP port")
    if server.executor == "ray" and server.engine != "vllm":
        raise ConfigError(f"{src}: server.executor: ray is only for engine vllm")
    validate_deployment(config)
    validate_benchmark(config.benchmark, src)


FILE_DATASETS = ("sharegpt", "jsonl", "custom", "mooncake", "burstgpt")


def validate_benchmark(bench: BenchmarkConfig, src: str) -> None:
    """Checks across benchmark keys (also for `bench --url` without a config file)."""
    if bench.dataset in FILE_DATASETS and not bench.dataset_path:
        raise ConfigError(f"{src}: benchmark.dataset_path: required for dataset {bench.dataset}")
    if bench.concurrency is not None and (not bench.concurrency or any(c < 1 for c in bench.concurrency)):
        raise ConfigError(f"{src}: benchmark.concurrency: needs one or more values >= 1 (or null: no cap)")
    if any(r is not None and not r > 0 for r in bench.rates):
        raise ConfigError(f"{src}: benchmark.request_rate: every rate must be > 0 (inf: no pacing)")
    if isinstance(bench.request_rate, list) and not bench.request_rate:
        raise ConfigError(f"{src}: benchmark.request_rate: an empty list (give null for no pacing)")
    if not bench.burstiness > 0:
        raise ConfigError(f"{src}: benchmark.burstiness: must be > 0")
    if bench.ramp_up_strategy is not None:
        start, end = bench.ramp_up_start_rps, bench.ramp_up_end_rps
        if start is None or end is None:
            raise ConfigError(f"{src}: benchmark.ramp_up_strategy: needs ramp_up_start_rps and ramp_up_end_rps")
        if bench.request_rate is not None:
            raise ConfigError(f"{src}: benchmark.request_rate: not with ramp_up_strategy (the ramp sets the rate)")
        if not 0 < start <= end:
            raise ConfigError(f"{src}: benchmark.ramp_up_start_rps: need 0 < start <= ramp_up_end_rps")
    if bench.duration_s is not None and not bench.duration_s > 0:
        raise ConfigError(f"{src}: benchmark.duration_s: must be > 0 (or null: bounded by num_prompts only)")
    if not 0.0 <= bench.range_ratio < 1.0:
        raise ConfigError(f"{src}: benchmark.range_ratio: must be in [0, 1)")
    for key in ("num_prompts", "input_len", "output_len", "num_prefixes", "trace_block_size"):
        if getattr(bench, key) < 1:
            raise ConfigError(f"{src}: benchmark.{key}: must be at least 1")
    if bench.prefix_len < 0:
        raise ConfigError(f"{src}: benchmark.prefix_len: must be >= 0")
    if bench.turns < 0 or (bench.turns == 0 and bench.dataset != "sharegpt"):
        raise ConfigError(f"{src}: benchmark.turns: must be >= 1 (0, every turn, is for sharegpt only)")
    if bench.turns != 1 and bench.dataset not in ("random", "sharegpt"):
        raise ConfigError(f"{src}: benchmark.turns: multi-turn conversations come from random or sharegpt")
    if (bench.prefix_len or bench.num_prefixes != 1) and bench.dataset != "random":
        raise ConfigError(f"{src}: benchmark.prefix_len: shared prefixes are for dataset random")
    if not bench.trace_speedup > 0:
        raise ConfigError(f"{src}: benchmark.trace_speedup: must be > 0")
    for key in bench.goodput:
        if key not in ("ttft", "tpot", "e2el"):
            raise ConfigError(f"{src}: benchmark.goodput.{key}: unknown SLO (ttft, tpot, e2el)")


# Slurm takes these as one word each (salloc/sbatch options, #SBATCH lines): no spaces, no newlines.
_SLURM_WORDS = ("job_id", "partition", "account", "qos", "time", "gres", "constraint")


def _validate_slurm(src: str, slurm: SlurmConfig) -> None:
    """scheduler.nodes may be left out with slurm: the allocation decides them."""
    for key in _SLURM_WORDS:
        value = getattr(slurm, key)
        if value is not None and (not value.strip() or any(c.isspace() or not c.isprintable() for c in value)):
            raise ConfigError(f"{src}: scheduler.slurm.{key}: {value!r} is not one word")
    if slurm.job_id is not None and not slurm.job_id.isdigit():
        raise ConfigError(f"{src}: scheduler.slurm.job_id: {slurm.job_id!r} is not a Slurm job id")
    for key in ("nodes", "gpus_per_node"):
        value = getattr(slurm, key)
        if value is not None and value < 1:
            raise ConfigError(f"{src}: scheduler.slurm.{key}: must be at least 1")
    if not slurm.wait_s > 0:
        raise ConfigError(f"{src}: scheduler.slurm.wait_s: must be more than 0")
