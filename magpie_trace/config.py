"""The run configuration: one YAML file for cluster, server, profile, benchmark and output.

Loading is strict on purpose: an unknown key, a wrong type or a missing model is refused with one
line naming the file and the key, because a typo in a multi-node launch costs a cluster allocation.
Key names follow Magpie's (`scheduler.nodes`, `scheduler.head_node`, `scheduler.worker_nodes`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import posixpath
import pwd
import re
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

# Names that become file and folder names (node names, run ids): no separators, no `..`, no
# leading dot or dash (a hidden file, an option), so every path built from them stays in its root.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# A POSIX environment variable name. Anything else (`--split-string=...`) must never reach `env`.
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A config is a few kB. The caps keep a hostile or broken file (a YAML bomb, a binary) to one
# line and well under a second: PyYAML reads ~1 MB/s, and aliases can multiply the values.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64


def check_name(value: str, what: str) -> str:
    """Refuse a node name or run id that could leave its folder; returns the value."""
    if not NAME_PATTERN.match(value):
        raise ConfigError(
            f"{what}: {value!r} is not a valid name (letters, digits, '.', '_', '-'; starting "
            "with a letter or digit; at most 128)"
        )
    return value


def under(root: str, *parts: str) -> str:
    """root joined with parts, refused (ConfigError) unless the result stays inside root.

    Names are checked where they are read; this is the second line of defence wherever the tool
    builds a path from one (a node name, a run id), so no name can lead outside its root.
    """
    path = posixpath.normpath(posixpath.join(root, *parts))
    rel = posixpath.relpath(path, posixpath.normpath(root))
    if any(posixpath.isabs(part) for part in parts) or rel == ".." or rel.startswith("../"):
        raise ConfigError(f"path {posixpath.join(root, *parts)!r} would leave {root}")
    return path


def default_workdir(user: str | None = None) -> str:
    """The per-user default root of the node workdirs: `/tmp/magpie-trace-<user>`.

    One root per user, so nobody else's files (or symlinks) are ever in the way; the backends
    create it 0700 and refuse it when it is a symlink or another user owns it.
    """
    if user is None:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
    if not NAME_PATTERN.match(user):
        user = str(os.getuid())
    return f"/tmp/magpie-trace-{user}"


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
    public_env: list[str] = field(default_factory=list)
    workdir: str | None = None
    ssh: SshConfig = field(default_factory=SshConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def node_workdir(self, node: NodeConfig) -> str:
        """The node's own working directory on that node (logs, local traces).

        Per node, so several "nodes" on one machine (local backend, test sshds) never share files.
        The default root is per user: the ssh login user where one is configured.
        """
        if node.workdir:
            return node.workdir
        user = (node.ssh_user or self.ssh.user) if self.backend == "ssh" else None
        root = self.workdir or default_workdir(user if user and NAME_PATTERN.match(user) else None)
        return under(root, node.name)


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
    hang_after_s: float | None = None  # the head stops producing tokens, every process still running
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
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}); not a config file") from None
    raw = parse_yaml(text, source)
    return config_from_dict(raw if raw is not None else {}, source=source, overrides=overrides)


class _TooDeep(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops at MAX_CONFIG_DEPTH nested collections.

    PyYAML scans lazily, so stopping while composing also stops its scanner, whose cost grows
    with the square of the nesting (5000 `[` took 3 s; libyaml's C loader crashes on 100000).
    """

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_CONFIG_DEPTH:
                raise _TooDeep
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str, source: str) -> Any:
    """YAML to plain data; every failure (syntax, nesting too deep) is one ConfigError line."""
    loader = None
    try:
        loader = _Loader(text)  # its reader already refuses control characters
        return loader.get_single_data()
    except (_TooDeep, RecursionError):
        raise ConfigError(f"{source}: not valid YAML: nested more than {MAX_CONFIG_DEPTH} deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = (str(getattr(exc, "problem", None) or exc).splitlines() or ["unreadable"])[0]
        raise ConfigError(f"{source}:{where} not valid YAML: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def check_expansion(raw: Any, source: str) -> None:
    """Refuse recursive aliases and aliases that multiply into a huge document (YAML bombs).

    YAML aliases share one object however often they are used, so loading is cheap; walking
    the result is not. Walk it once, iteratively, with a budget, before anything else does.
    """
    seen = 0
    stack: list[tuple[Any, tuple[int, ...]]] = [(raw, ())]
    while stack:
        value, path = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{source}: more than {MAX_CONFIG_VALUES} values once aliases are expanded "
                "(a YAML bomb?); not a config file"
            )
        if isinstance(value, (dict, list)):
            if id(value) in path:
                raise ConfigError(f"{source}: a YAML alias refers to itself (recursive anchor)")
            inner = (*path, id(value))
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, inner) for item in items)


def config_from_dict(
    raw: Any, source: str = "<config>", overrides: list[str] | None = None
) -> Config:
    """Build a validated Config from plain data (what YAML gives)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {_kind(raw)}")
    check_expansion(raw, source)
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
    except (yaml.YAMLError, RecursionError):
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


def _key(key: Any) -> str:
    """A key as shown in a message: quoted when it is empty or could break the one line."""
    text = str(key)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


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
        path = f"{prefix}.{_key(key_s)}" if prefix else _key(key_s)
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
        # The option of the value's own shape says best what is wrong (a NaN, not "not a list").
        shaped = [e for o, e in zip(options, errors)
                  if (typing.get_origin(o) in (list, dict)) == isinstance(value, (list, dict))]
        raise (shaped or errors)[0]
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
            _coerce(args[0], k, source, f"{path} key"): _coerce(args[1], v, source, f"{path}.{_key(k)}")
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
            if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", value):
                return int(value)
            raise ConfigError(f"{source}: {path}: expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf  # as `vllm bench serve --request-rate inf` spells it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {path}: expected a number, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isnan(number):
            raise ConfigError(f"{source}: {path}: expected a number, got nan")
        return number
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: {path}: expected a string, got {_kind(value)}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{source}: {path}: unsupported type {tp!r}")


# --------------------------------------------------------------------------------------------
# Validation that needs more than one key


# Numeric bounds: (key, lowest, lowest allowed itself?), and finite: a timeout of .inf is no bound.
# Refused at load, never after a launch. (Benchmark sizes and rates: validate_benchmark.)
_BOUNDS: tuple[tuple[str, float, bool], ...] = (
    ("scheduler.gpus_per_node", 1, True),
    ("scheduler.ssh.connect_timeout_s", 0, False),
    ("server.ready_timeout_s", 0, False),
    ("server.sim.ttft_ms", 0, True),
    ("server.sim.itl_ms", 0, True),
    ("server.sim.startup_s", 0, True),
    ("server.sim.layers", 1, True),
    ("server.sim.hang_after_s", 0, True),
    ("profile.delay_iterations", 0, True),
    ("profile.max_iterations", 0, True),
    ("profile.start_step", 0, True),
    ("profile.num_steps", 1, True),
    ("profile.start_after_s", 0, True),
    ("profile.duration_s", 0, False),
    ("profile.timeout_s", 0, False),
    ("benchmark.warmup_requests", 0, True),
    ("benchmark.request_timeout_s", 0, False),
    ("benchmark.stall_timeout_s", 0, False),
    ("benchmark.telemetry_interval_s", 0, False),
    ("benchmark.max_duration_s", 0, False),
)


def _check_bounds(config: Config) -> None:
    for key, lowest, inclusive in _BOUNDS:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is None:
            continue
        infinite = isinstance(value, float) and not math.isfinite(value)
        if infinite or value < lowest or (value == lowest and not inclusive):
            need = f"at least {lowest:g}" if inclusive else f"more than {lowest:g}"
            raise ConfigError(f"{config.source}: {key}: {value!r} is out of range (must be finite, {need})")


def _check_env(env: dict[str, str], where: str, src: str) -> None:
    for name, value in env.items():
        if not ENV_NAME_PATTERN.match(name):
            raise ConfigError(
                f"{src}: {where}: {name!r} is not a valid environment variable name "
                "([A-Za-z_][A-Za-z0-9_]*)"
            )
        if "\0" in value:
            raise ConfigError(f"{src}: {where}.{name}: contains a NUL byte")


def _check_absolute(path: str | None, key: str, src: str) -> None:
    if path is not None and not posixpath.isabs(path):
        raise ConfigError(f"{src}: {key}: {path!r} must be an absolute path (it is a path on every node)")


def validate(config: Config) -> None:
    """Checks across keys; fills derived defaults (node names and addresses)."""
    src = config.source
    sched, server = config.scheduler, config.server
    _check_bounds(config)
    if sched.backend == "slurm":
        _validate_slurm(src, sched.slurm)
    elif not sched.nodes:
        raise ConfigError(f"{src}: scheduler.nodes: at least one node is needed (the head first)")
    _check_env(sched.env, "scheduler.env", src)
    _check_env(server.env, "server.env", src)
    for name in sched.public_env:
        if not ENV_NAME_PATTERN.match(name):
            raise ConfigError(f"{src}: scheduler.public_env: {name!r} is not an environment variable name")
    _check_absolute(sched.workdir, "scheduler.workdir", src)
    _check_absolute(sched.shared_dir, "scheduler.shared_dir", src)
    _check_absolute(config.profile.dir, "profile.dir", src)
    if config.output.run_id is not None:
        check_name(config.output.run_id, f"{src}: output.run_id")
    seen_names: dict[str, int] = {}
    seen_hosts: dict[tuple[str, int | None, str | None], int] = {}
    for i, node in enumerate(sched.nodes):
        if not node.host.strip():
            raise ConfigError(f"{src}: scheduler.nodes[{i}].host: empty")
        node.name = node.name or f"node{i}"
        check_name(node.name, f"{src}: scheduler.nodes[{i}].name")
        node.address = node.address or node.host
        _check_env(node.env, f"scheduler.nodes[{i}].env", src)
        _check_absolute(node.workdir, f"scheduler.nodes[{i}].workdir", src)
        if node.ssh_port is not None and not 0 < node.ssh_port < 65536:
            raise ConfigError(f"{src}: scheduler.nodes[{i}].ssh_port: {node.ssh_port} is not a TCP port")
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
    if sched.ssh.port is not None and not 0 < sched.ssh.port < 65536:
        raise ConfigError(f"{src}: scheduler.ssh.port: {sched.ssh.port} is not a TCP port")
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
    for mapping, key in ((server.sim.clock_offset_ms, "clock_offset_ms"), (server.sim.die_after_s, "die_after_s")):
        for index, value in mapping.items():
            if not math.isfinite(value) or (key == "die_after_s" and value < 0):
                raise ConfigError(f"{src}: server.sim.{key}.{index}: {value!r} is out of range")
    for i, group in enumerate(server.groups):
        _check_env(group.env, f"server.groups[{i}].env", src)
    if config.router is not None:
        _check_env(config.router.env, "router.env", src)
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
    for value in bench.percentiles:
        if not 0.0 < value <= 100.0:
            raise ConfigError(f"{src}: benchmark.percentiles: {value:g} is not a percentile in (0, 100]")
    for key, value in bench.goodput.items():
        if key not in ("ttft", "tpot", "e2el"):
            raise ConfigError(f"{src}: benchmark.goodput.{_key(key)}: unknown SLO (ttft, tpot, e2el)")
        if not value > 0:
            raise ConfigError(f"{src}: benchmark.goodput.{key}: {value:g} ms must be more than 0")


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
