"""`magpie-trace`: a thin command line over the library (parse, call, print)."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from typing import Any, Callable

import click
import orjson

from magpie_trace import interrupts
from magpie_trace.config import Config, load_config
from magpie_trace.console import NORMAL, QUIET, VERBOSE, Display
from magpie_trace.errors import MagpieError


def error_object(exc: BaseException, code: int) -> dict[str, Any]:
    """What `--json` prints on failure: the same one line, its kind and exit code, and the node
    when one is to blame."""
    error: dict[str, Any] = {"type": type(exc).__name__, "message": _message(exc), "exit_code": code}
    node = getattr(exc, "node", None)
    if node is not None:
        error["node"] = node
    return {"ok": False, "error": error}


def _message(exc: BaseException) -> str:
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, KeyboardInterrupt):
        return interrupts.describe()
    return str(exc) or type(exc).__name__


def _fail(exc: BaseException, code: int, as_json: bool) -> None:
    try:
        if as_json:
            print_json(error_object(exc, code))
        click.echo(f"error: {_message(exc)}", err=True)
    except OSError:
        interrupts.output_closed(interrupt=False)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User-facing failures become one line on stderr and the error's exit code (with --json, also a
    JSON error object on stdout). Ctrl-C, SIGTERM, SIGHUP and a closed output all end the same way
    (teardown first), exit 128 + the signal. Anything else is a bug: its traceback is shown (after
    the JSON error object, with --json)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        interrupts.install()
        try:
            return fn(*args, **kwargs)
        except MagpieError as exc:
            _fail(exc, exc.exit_code, as_json)
        except KeyboardInterrupt as exc:
            _fail(exc, interrupts.exit_code(), as_json)
        except BrokenPipeError:  # the final output's reader had gone: all is done but saying so
            interrupts.output_closed(interrupt=False)
            sys.exit(interrupts.exit_code())
        except click.ClickException:
            raise  # a usage error: click prints it; Commands.invoke adds the JSON object
        except Exception as exc:
            if as_json:
                print_json(error_object(exc, 1))
            raise

    return wrapper


def print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def _set_verbosity(level: int) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_root().meta["magpie_trace.verbosity"] = level

    return callback


def verbosity_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-v / -q, accepted before or after the command name."""
    fn = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity(QUIET),
                      help="Show only errors and the result (no progress).")(fn)
    return click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbosity(VERBOSE),
                        help="Time every progress line; a line for every change of a count.")(fn)


def display() -> Display:
    """The progress view for this command, at the -v/-q level given."""
    ctx = click.get_current_context(silent=True)
    level = ctx.find_root().meta.get("magpie_trace.verbosity", NORMAL) if ctx else NORMAL
    return Display(level)


config_argument = click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set server.tp=16 (repeatable).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for tools.")


def read_config(config_path: str, overrides: tuple[str, ...]) -> Config:
    return load_config(config_path, list(overrides))


class Commands(click.Group):
    """The command group; a usage error (bad option, bad value) of a command run with --json also
    prints the JSON error object."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        wants_json = "--json" in args
        ctx = super().make_context(info_name, args, parent, **extra)
        ctx.meta["magpie_trace.json"] = wants_json
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if ctx.meta.get("magpie_trace.json"):
                print_json(error_object(exc, exc.exit_code))
            raise


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="magpie-trace")
@verbosity_options
def main() -> None:
    """Launch, benchmark, profile and merge traces of multi-node vLLM / SGLang servers."""


@main.command("plan")
@verbosity_options
@config_argument
@set_option
@json_option
@handle_errors
def plan_command(config_path: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Show, per node, the role, ranks, command and env that `launch` would use."""
    from magpie_trace.plan import make_plan

    config = read_config(config_path, overrides)
    if not config.scheduler.nodes:  # the backend decides them (slurm: the allocation's)
        from magpie_trace.backends import make_backend

        backend = make_backend(config.scheduler)
        try:
            with display() as say:
                backend.acquire_nodes(say, config.source, ask=False)
        finally:
            backend.close()
    plan = make_plan(config)
    if as_json:
        print_json(plan.to_dict())
        return
    echo_plan(plan)


def echo_plan(plan: Any) -> None:
    """Groups and router (if any), then per node: host, role, ranks, the exact command and env
    (secrets masked)."""
    shown = plan.to_dict()  # argv and env as masked for output
    if plan.has_groups:
        click.echo(f"{plan.engine} on {len(plan.nodes)} node(s) via {plan.backend}, "
                   f"{len(plan.groups)} group(s); endpoint(s) {', '.join(plan.endpoints)}")
        for group in plan.groups:
            layout = group.layout
            nodes = ", ".join(node.name for node in plan.nodes if node.index in group.nodes)
            kv = f"; KV port {group.bootstrap_port}" if group.bootstrap_port is not None else ""
            click.echo(f"  group {group.name} ({group.role}): TP{layout.tp} PP{layout.pp} "
                       f"DP{layout.dp} EP{layout.ep} on {nodes}; API {', '.join(group.api_urls)}{kv}")
        if plan.router is not None:
            router = plan.router
            click.echo(f"\n[router] {router.kind} on {router.node_name} at {router.url}")
            click.echo("  command: " + shlex.join(shown["router"]["argv"]))
            for key, value in sorted(shown["router"]["env"].items()):
                click.echo(f"  env: {key}={value}")
    else:
        layout = plan.layout
        click.echo(
            f"{plan.engine} on {layout.nnodes} node(s) via {plan.backend}: TP{layout.tp} PP{layout.pp} "
            f"DP{layout.dp} EP{layout.ep} = {layout.world_size} ranks; endpoint {plan.head_url}"
        )
    for node, info in zip(plan.nodes, shown["nodes"]):
        layout = node.layout
        ranks = ", ".join(
            f"{r.global_rank}(tp{r.tp} pp{r.pp} dp{r.dp}" + (f" ep{r.ep})" if layout.ep > 1 else ")")
            for r in node.ranks
        )
        group = f" group={node.group}" if node.group else ""
        click.echo(f"\n[{node.name}] host={node.host} address={node.address} role={node.role}{group}")
        click.echo(f"  ranks: {ranks}")
        argv = info["argv"]
        click.echo("  command: " + (shlex.join(argv) if argv else "(nothing: placed by the head)"))
        for key, value in sorted(info["env"].items()):
            click.echo(f"  env: {key}={value}")


run_option = click.option(
    "--run", "run", metavar="RUN", help="A run id under output.dir, or a run folder (default: the latest)."
)


@main.command("launch")
@verbosity_options
@config_argument
@set_option
@click.option("--no-preflight", is_flag=True, help="Skip the per-node checks before starting.")
@json_option
@handle_errors
def launch_command(
    config_path: str, overrides: tuple[str, ...], no_preflight: bool, as_json: bool
) -> None:
    """Start the server on every node at once and wait until it is ready.

    Ready means the head's health endpoint answers and every node's process is alive. On any
    failure (or Ctrl-C) every node is stopped again and the failing node is named.
    """
    from magpie_trace.backends import make_backend
    from magpie_trace.launch import launch
    from magpie_trace.plan import make_plan
    from magpie_trace.rundir import new_run_dir

    config = read_config(config_path, overrides)
    backend = make_backend(config.scheduler)
    try:
        with display() as say:
            backend.acquire_nodes(say, config.source)
            plan = make_plan(config)
            run_dir = new_run_dir(config.output.dir, plan.run_id)
            with run_dir.lock("launch"):
                state = launch(plan, run_dir, backend, preflight=not no_preflight, progress=say)
    except BaseException:
        backend.close()
        raise
    if as_json:
        print_json({"run_dir": str(run_dir.root), "url": plan.head_url, **state.to_dict()})
        return
    click.echo(f"ready: {plan.head_url}  (run {run_dir.root}; stop with `magpie-trace stop {config_path}`)")


@main.command("stop")
@verbosity_options
@config_argument
@set_option
@run_option
@handle_errors
def stop_command(config_path: str, overrides: tuple[str, ...], run: str | None) -> None:
    """Stop every process the run started, on every node; fetch the node logs."""
    from magpie_trace.launch import plan_for_run, stop
    from magpie_trace.rundir import find_run_dir

    config = read_config(config_path, overrides)
    run_dir = find_run_dir(config.output.dir, run)
    state = stop(plan_for_run(run_dir), run_dir, requested_by=f"magpie-trace stop (pid {os.getpid()})")
    if state is None:
        click.echo(f"nothing to stop in {run_dir.root}")
        return
    click.echo(f"stopped {len(state.handles) - len(state.lost)} node(s); logs in {run_dir.logs}")
    for name, why in state.lost.items():
        click.echo(f"{name}: lost, counted as stopped ({why})")


profile_id_option = click.option(
    "--profile-id", metavar="ID", help="The capture's id (default: profile: the next <run id>-p<n>; "
    "collect: the run's latest capture).",
)


@main.command("profile")
@verbosity_options
@config_argument
@set_option
@run_option
@profile_id_option
@click.option("--duration", type=float, metavar="S", help="Seconds to keep the capture open "
              "(default: profile.duration_s, or until the step window closes when one is set).")
@json_option
@handle_errors
def profile_command(
    config_path: str, overrides: tuple[str, ...], run: str | None, profile_id: str | None,
    duration: float | None, as_json: bool,
) -> None:
    """Profile every rank of the running server at once and wait for every rank's trace file."""
    from magpie_trace.backends import make_backend
    from magpie_trace.launch import load_state, plan_for_run
    from magpie_trace.monitor import monitors_for
    from magpie_trace.nodewatch import process_guard
    from magpie_trace.profile import capture
    from magpie_trace.rundir import find_run_dir

    run_dir = find_run_dir(read_config(config_path, overrides).output.dir, run)
    plan = plan_for_run(run_dir)
    handles = load_state(run_dir).handles if run_dir.state.exists() else {}
    backend = make_backend(plan.config.scheduler)
    try:
        interval = plan.config.benchmark.telemetry_interval_s
        with run_dir.lock("profile"), display() as say, \
                monitors_for(plan, backend, handles, interval) as monitors, \
                process_guard(plan, backend, handles, "the profile capture", monitors.check) as guard:
            monitors.wait_first_samples()
            record = capture(plan, backend, run_dir, profile_id, duration, progress=say, guard=guard)
    finally:
        backend.close()
    if as_json:
        print_json(record.to_dict())
        return
    ranks = sum(1 for trace in record.traces if trace.kind == "rank")
    click.echo(f"capture {record.profile_id}: {ranks} rank trace(s) complete on "
               f"{len(plan.nodes)} node(s); collect with `magpie-trace collect {config_path}`")


@main.command("collect")
@verbosity_options
@config_argument
@set_option
@run_option
@profile_id_option
@click.option("--allow-missing", is_flag=True,
              help="Take a partial capture: collect the ranks that have a complete trace and list "
                   "the missing ones (in manifest.json too) instead of failing.")
@json_option
@handle_errors
def collect_command(
    config_path: str, overrides: tuple[str, ...], run: str | None, profile_id: str | None,
    allow_missing: bool, as_json: bool,
) -> None:
    """Bring every rank's trace into <run>/traces as node<N>-TP<R>.trace.json.gz + manifest.json."""
    from magpie_trace.backends import make_backend
    from magpie_trace.collect import collect, tracelens_command
    from magpie_trace.launch import plan_for_run
    from magpie_trace.rundir import find_run_dir

    run_dir = find_run_dir(read_config(config_path, overrides).output.dir, run)
    plan = plan_for_run(run_dir)
    backend = make_backend(plan.config.scheduler)
    try:
        with run_dir.lock("collect"), display() as say:
            result = collect(plan, backend, run_dir, profile_id, progress=say,
                             allow_missing=allow_missing)
    finally:
        backend.close()
    missing = result.manifest["missing"]
    if missing:
        ranks = ", ".join(f"{m['node_name']} {m['rank']}" for m in missing)
        click.echo(f"warning: partial capture: {len(missing)} rank(s) missing: {ranks}", err=True)
    command = tracelens_command(result.manifest, result.traces_dir)
    if as_json:
        print_json({"traces_dir": str(result.traces_dir), "fetched": result.fetched,
                    "reused": result.reused, "tracelens_command": command, **result.manifest})
        return
    click.echo(f"{len(result.manifest['files'])} trace(s) in {result.traces_dir} "
               f"({result.fetched} fetched, {result.reused} already there); "
               f"manifest {result.manifest_path}")
    if command:
        click.echo(f"TraceLens collective report: {command}")
    else:
        click.echo("TraceLens collective report: TP numbers repeat across DP/PP groups here, so "
                   "TraceLens cannot rank these files by name; use `magpie-trace merge` output")



def _vllm_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`vllm bench serve`'s common flags (magpie_trace.bench.flags maps them to config keys)."""
    options = [
        click.option("--model", help="The model name requests carry (default: what /v1/models lists)."),
        click.option("--served-model-name", help="As vLLM: the name requests carry (--model then names the tokenizer)."),
        click.option("--backend", help="openai (/v1/completions) or openai-chat (/v1/chat/completions)."),
        click.option("--endpoint", help="/v1/completions or /v1/chat/completions."),
        click.option("--dataset-name", help="random, prefix_repetition, sharegpt, custom (jsonl), mooncake, burstgpt."),
        click.option("--dataset-path", help="The dataset file (sharegpt, custom, mooncake, burstgpt)."),
        click.option("--input-len", type=int, help="Input tokens (random)."),
        click.option("--output-len", type=int, help="Output tokens."),
        click.option("--random-input-len", type=int, help="Input tokens of random prompts."),
        click.option("--random-output-len", type=int, help="Output tokens of random prompts."),
        click.option("--random-range-ratio", type=float, help="Lengths uniform on [L(1-r), L(1+r)]."),
        click.option("--random-prefix-len", type=int, help="A prefix of this many tokens shared by every prompt."),
        click.option("--prefix-repetition-prefix-len", type=int, help="prefix_repetition: tokens per prefix."),
        click.option("--prefix-repetition-suffix-len", type=int, help="prefix_repetition: unique tokens after it."),
        click.option("--prefix-repetition-num-prefixes", type=int, help="prefix_repetition: distinct prefixes."),
        click.option("--prefix-repetition-output-len", type=int, help="prefix_repetition: output tokens."),
        click.option("--sharegpt-output-len", type=int, help="Fixed output length for ShareGPT prompts."),
        click.option("--custom-output-len", type=int, help="Output length for custom prompts without one."),
        click.option("--turns", type=int, help="User turns per conversation (sharegpt: 0 = all)."),
        click.option("--max-concurrency", type=int, multiple=True, help="Concurrency cap (repeat for a sweep)."),
        click.option("--request-rate", type=float, multiple=True, help="Req/s, inf for no pacing (repeat for a sweep)."),
        click.option("--burstiness", type=float, help="Gamma shape of arrival gaps (1 Poisson)."),
        click.option("--ramp-up-strategy", type=click.Choice(["linear", "exponential"]), help="Raise the rate over each point."),
        click.option("--ramp-up-start-rps", type=float, help="Ramp start rate."),
        click.option("--ramp-up-end-rps", type=float, help="Ramp end rate."),
        click.option("--duration", type=float, help="Seconds per load point (it also ends after --num-prompts)."),
        click.option("--seed", type=int, help="Prompts and arrival gaps."),
        click.option("--ignore-eos/--no-ignore-eos", default=None, help="Generate exactly the output length."),
        click.option("--tokenizer", help="Local tokenizer (HF name or folder); default: the server's /tokenize."),
        click.option("--num-warmups", type=int, help="Warmup requests before the first point."),
        click.option("--metric-percentiles", help="Comma-separated percentiles, e.g. 50,90,99."),
        click.option("--percentile-metrics", help="Accepted: every metric's percentiles are reported (queue times under a cap)."),
        click.option("--host", help="As vLLM: the server's host (with --port, instead of --url)."),
        click.option("--port", type=click.IntRange(1, 65535), help="As vLLM: the server's port (default 8000 with --host)."),
        click.option("--goodput", multiple=True, help="SLO KEY:MS (ttft, tpot, e2el); repeatable."),
        click.option("--label", help="The results' label (vLLM's --label)."),
        click.option("--sglang-result", is_flag=True, default=None, help="Also write SGLang bench_serving's JSONL."),
        click.option("--result-dir", type=click.Path(file_okay=False), help="Same as --out."),
        click.option("--result-filename", help="Also copy each point's vLLM file to --result-dir/NAME (NAME-<point> for several); never over a file."),
        click.option("--save-result", is_flag=True, help="Accepted for vLLM's command lines: results are always saved."),
        click.option("--save-detailed", is_flag=True, help="Accepted: per-request lists are always saved."),
        click.option("--disable-tqdm", is_flag=True, help="Accepted: the progress line shows only on a terminal."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("bench")
@verbosity_options
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@set_option
@run_option
@click.option("--url", "--base-url", "url", metavar="URL", help="Benchmark this already-running endpoint instead of a run.")
@click.option("--concurrency", "-c", type=int, multiple=True, help="Concurrency (repeat for a sweep).")
@click.option("--num-prompts", "-n", type=int, help="Requests per load point.")
@_vllm_flags
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: <run>/bench); each invocation writes a new attempt-NNN in it.")
@json_option
@handle_errors
def bench_command(
    config_path: str | None, overrides: tuple[str, ...], run: str | None, url: str | None,
    concurrency: tuple[int, ...], num_prompts: int | None, out: str | None, as_json: bool,
    result_dir: str | None, save_result: bool, save_detailed: bool, disable_tqdm: bool, **flags: Any,
) -> None:
    """Benchmark the running server through its endpoint; stop at once if a node is lost.

    Takes `vllm bench serve`'s common flags; with --url no config file is needed.
    """
    import dataclasses

    from magpie_trace.bench import run_benchmark, sweep_points
    from magpie_trace.bench.flags import base_url
    from magpie_trace.bench.flags import overrides as flag_overrides
    from magpie_trace.bench.results import check_result_filename, export_new, result_file_targets
    from magpie_trace.config import benchmark_config

    flags["max_concurrency"] = (*concurrency, *flags["max_concurrency"])
    flags["num_prompts"] = num_prompts
    host, port = flags.pop("host"), flags.pop("port")
    result_filename = flags.pop("result_filename")
    if result_filename is not None:
        check_result_filename(result_filename)  # before a run folder is made for it
    if host is not None or port is not None:
        if url:
            raise click.UsageError("give --url, or --host and --port, not both")
        url = base_url(host, port)
    extra = [*flag_overrides(flags, with_config=config_path is not None), *overrides]
    out = out or result_dir
    if config_path is None:
        if not url:
            raise click.UsageError("give a CONFIG, or --url to benchmark an endpoint without one")
        config = benchmark_config(extra)
    else:
        config = read_config(config_path, tuple(extra))
    labels = [p.label for p in sweep_points(config.benchmark)]

    def vllm_files(root: Any) -> list[Any]:
        """Checked before the run: a name that would overwrite a file is refused then."""
        return result_file_targets(root, result_filename, labels) if result_filename else []

    if url:
        from magpie_trace.plan import new_run_id
        from magpie_trace.rundir import new_run_dir

        out_dir = out or new_run_dir(config.output.dir, new_run_id(), latest=False).bench
        targets = vllm_files(out_dir)
        with display() as say:
            result = run_benchmark(config, None, out_dir, url=url, say=say)
    else:
        from magpie_trace.backends import make_backend
        from magpie_trace.launch import load_state, plan_for_run
        from magpie_trace.rundir import find_run_dir

        run_dir = find_run_dir(config.output.dir, run)
        plan = plan_for_run(run_dir)
        state = load_state(run_dir)
        config = dataclasses.replace(plan.config, benchmark=config.benchmark)
        targets = vllm_files(out or run_dir.bench)
        backend = make_backend(plan.config.scheduler)
        try:
            with run_dir.lock("bench"), display() as say:
                result = run_benchmark(
                    config, plan, out or run_dir.bench, backend=backend, handles=state.handles, say=say,
                )
        finally:
            backend.close()
    for point, target in zip(result.points, targets):  # vLLM's --result-filename: where its readers look
        export_new(result.out_dir / "points" / f"{point['point']}.json", target)
    if as_json:
        print_json(result.data)
        return
    click.echo(f"{'point':<14}{'done':>6}{'fail':>5}{'req/s':>9}{'out tok/s':>11}"
               f"{'TTFT p50':>10}{'p99':>9}{'TPOT p50':>10}{'p99':>9}  (ms)")
    for p in result.points:
        click.echo(f"{p['point']:<14}{p['completed']:>6}{p['failed']:>5}"
                   f"{p['request_throughput'] or 0:>9.2f}{p['output_throughput'] or 0:>11.1f}"
                   f"{p.get('median_ttft_ms') or 0:>10.2f}{p.get('p99_ttft_ms') or 0:>9.2f}"
                   f"{p.get('median_tpot_ms') or 0:>10.2f}{p.get('p99_tpot_ms') or 0:>9.2f}")
    click.echo(f"results: {result.result_path}")


def print_run_summary(result: Any) -> None:
    """Where everything is, and how to open it in TraceLens and Perfetto."""
    outputs = result.outputs
    click.echo(f"\nrun {result.run_id}: {result.run_dir}")
    for key in ("report.html", "report.md", "bench", "traces", "merged"):
        if key in outputs:
            click.echo(f"  {key:<12} {outputs[key]}")
    if "perfetto" in outputs:
        click.echo(f"\nPerfetto:  open https://ui.perfetto.dev and load {outputs['perfetto']}")
    if result.tracelens_command:
        click.echo(f"TraceLens: {result.tracelens_command}")


@main.command("run")
@verbosity_options
@config_argument
@set_option
@click.option(
    "--from", "from_stage", type=click.Choice(["launch", "bench", "collect", "merge", "analyze", "report"]),
    help="Resume the run (--run, default the latest) from this stage.",
)
@run_option
@json_option
@handle_errors
def run_command(
    config_path: str, overrides: tuple[str, ...], from_stage: str | None, run: str | None, as_json: bool
) -> None:
    """The whole job: launch, benchmark with a profile window, collect, merge, report, tear down."""
    from magpie_trace.run import run as run_all

    config = read_config(config_path, overrides)
    with display() as say:
        result = run_all(config, from_stage=from_stage, run_ref=run, progress=say)
    if as_json:
        print_json(result.to_dict())
    else:
        print_run_summary(result)


@main.command("submit", context_settings={"ignore_unknown_options": True})
@verbosity_options
@config_argument
@set_option
@click.option("--dry-run", is_flag=True, help="Print the batch script and the sbatch command; submit nothing.")
@click.argument("sbatch_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- SBATCH_OPTIONS...]")
@handle_errors
def submit_command(
    config_path: str, overrides: tuple[str, ...], dry_run: bool, sbatch_args: tuple[str, ...]
) -> None:
    """Run the whole job (`magpie-trace run`) as a Slurm batch job in its own allocation.

    The allocation comes from scheduler.slurm; options after `--` go to sbatch as they are.
    Prints the job id, the run folder it will write, and how to follow it.
    """
    from magpie_trace.submit import prepare, submit

    config = read_config(config_path, overrides)
    submission = prepare(config, config_path, list(overrides), list(sbatch_args))
    if dry_run:
        click.echo(submission.script, nl=False)
        click.echo(f"\n# would be written to {submission.script_path} and submitted with:")
        click.echo("# " + shlex.join(submission.sbatch_argv))
        return
    submit(submission)
    click.echo(f"submitted Slurm job {submission.job_id}")
    click.echo(f"  run folder  {submission.run_dir} (written once the job runs)")
    click.echo(f"  follow      squeue --jobs={submission.job_id}; tail -f {submission.output_path}")


@main.command("demo")
@verbosity_options
@click.option("--output", "output", default="magpie-runs", show_default=True, help="Where the run folder goes.")
@set_option
@json_option
@handle_errors
def demo_command(output: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Run the whole flow on this machine: the simulator on two local "nodes" whose clocks differ."""
    from importlib.resources import files

    from magpie_trace.plan import make_plan, new_run_id
    from magpie_trace.ports import free_port
    from magpie_trace.run import run as run_all

    demo = files("magpie_trace").joinpath("demo.yaml")
    ports = [f"server.port={free_port()}", f"server.rendezvous_port={free_port()}"]
    config = load_config(str(demo), [f"output.dir={output}", *ports, *overrides])
    config.output.run_id = config.output.run_id or new_run_id()
    if not as_json:
        echo_plan(make_plan(config))
        click.echo("")
    with display() as say:
        result = run_all(config, progress=say)
    if as_json:
        print_json(result.to_dict())
    else:
        print_run_summary(result)


@main.command("report")
@verbosity_options
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@set_option
@run_option
@handle_errors
def report_command(config_path: str | None, overrides: tuple[str, ...], run: str | None) -> None:
    """(Re)write report.md and report.html of a run from its files.

    `report --run RUN_FOLDER` needs no config (the run folder holds what the report reads); with
    CONFIG, --run may also be a run id under its output.dir (default: the latest run there).
    """
    from pathlib import Path

    from magpie_trace.errors import ConfigError
    from magpie_trace.report import write_report
    from magpie_trace.rundir import find_run_dir

    if config_path is None:
        if not run or not Path(run).is_dir():
            raise ConfigError("report: give the run folder (--run DIR), or CONFIG to find the run in its output.dir")
        run_dir = find_run_dir(Path(run).parent, run)
    else:
        run_dir = find_run_dir(read_config(config_path, overrides).output.dir, run)
    with run_dir.lock("report"):
        md, html = write_report(run_dir)
    click.echo(f"{md}\n{html}")


def _range(text: str | None, kind: type) -> tuple[Any, Any] | None:
    if text is None:
        return None
    try:
        lo, hi = text.split(":")
        return kind(lo), kind(hi)
    except ValueError:
        raise click.BadParameter(f"expected START:END, got {text!r}") from None


@main.command("merge")
@verbosity_options
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "output_dir", default=None,
              help="Output folder [default: RUN/merged for a run's RUN/traces, else INPUT_DIR-merged].")
@click.option("--window", default=None, metavar="START:END",
              help="Cut every rank at the same aligned instants: ms from the reference rank's profile start.")
@click.option("--steps", default=None, metavar="FIRST:LAST", help="Cut to these step annotations of the reference rank.")
@click.option("--outputs", default="aligned,merged,tables,alignment", show_default=True,
              help="Comma-separated subset of aligned,merged,tables,alignment,events (events: the events table "
                   "of `analyze`, collective ids in the aligned traces, flows in the merged one).")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
@click.option("--reference-node", default=None, help="Node whose clock the others are aligned to.")
@json_option
@handle_errors
def merge_command(input_dir: str, output_dir: str | None, window: str | None, steps: str | None, outputs: str,
                  jobs: int, reference_node: str | None, as_json: bool) -> None:
    """Align the nodes' clocks; write per-rank traces (TraceLens), one Perfetto trace, tables, alignment.json."""
    from pathlib import Path

    from magpie_trace.merge import MergeOptions, merge
    from magpie_trace.merge.bytescan import compile_notice

    options = MergeOptions(
        outputs=tuple(o.strip() for o in outputs.split(",") if o.strip()), jobs=jobs,
        window_ms=_range(window, float), steps=_range(steps, int), reference_node=reference_node,
    )
    source = Path(input_dir)
    default = source.with_name("merged" if source.name == "traces" else source.name + "-merged")
    target = Path(output_dir) if output_dir else default
    with display() as say:
        if notice := compile_notice():
            say(notice)
        result = merge(source, target, options)
    if as_json:
        print_json(result.to_dict())
        return
    click.echo(f"merged {len(result.files)} file(s), {result.input_bytes / 1e6:.0f} MB, "
               f"{result.collectives} matched collectives, in {result.seconds:.1f}s -> {result.output_dir}")
    for node, rep in result.nodes.items():
        if not rep["aligned"]:
            click.echo(f"  {node}: not aligned ({rep['unaligned']})")
            continue
        placed = ", ".join(rep["placed_by"])
        click.echo(f"  {node}: offset {rep['offset_ns'] / 1e3:+.1f} us, drift {rep['drift_ppm']:+.2f} ppm, "
                   f"{rep['method']} ({placed}), {rep['n_anchors']} anchors, +-{rep['uncertainty_us']:.1f} us")
    for warning in result.warnings:
        click.echo(f"  warning: {warning}")
    if result.tracelens_command:
        click.echo(f"TraceLens: {result.tracelens_command}")


@main.command("analyze")
@verbosity_options
@click.argument("merged_dir", type=click.Path(file_okay=False))
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes building the events table.")
@click.option("--rebuild", is_flag=True, help="Rebuild the events table even if it is up to date.")
@click.option("--no-plots", is_flag=True, help="Write the tables only.")
@json_option
@handle_errors
def analyze_command(merged_dir: str, jobs: int, rebuild: bool, no_plots: bool, as_json: bool) -> None:
    """Exposed communication, per node and step, and who waits for whom: SQL over a merge's events."""
    from pathlib import Path

    from magpie_trace.analyze import AnalyzeOptions, analyze

    result = analyze(Path(merged_dir), AnalyzeOptions(jobs=jobs, rebuild=rebuild, plots=not no_plots))
    if as_json:
        print_json(result.to_dict())
        return
    ev = result.events
    click.echo(f"events: {ev['events']:,} from {ev['ranks']} rank(s) "
               f"({'built' if ev['built'] else 'up to date'}) -> {ev['folder']}")
    for row in result.nodes:
        click.echo(f"  {row['node']}: {row['domain']}, exposed comm {row['exposed_comm_pct'] or 0:.1f}% of time, "
                   f"{row['comm_hidden_pct'] or 0:.1f}% of comm hidden, idle {row['idle_us'] / 1e3:.1f} ms per rank")
    for row in result.stragglers:
        click.echo(f"  {row['node']}: last to arrive in {row['steps_as_straggler']} step(s), "
                   f"{row['longest_streak']} in a row")
    for warning in result.warnings:
        click.echo(f"  warning: {warning}")
    click.echo(f"tables and plots in {Path(merged_dir) / 'analysis'} ({result.seconds:.1f}s)")


@main.command("query")
@verbosity_options
@click.argument("merged_dir", type=click.Path(file_okay=False))
@click.argument("sql")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Write the result to this .csv or .parquet file instead of printing it.")
@json_option
@handle_errors
def query_command(merged_dir: str, sql: str, output: str | None, as_json: bool) -> None:
    """Run SQL against a merge's events and tables (events, steps, segments, ranks, collectives, nodes,
    breakdown, ...; see docs/analyze.md)."""
    from pathlib import Path

    from magpie_trace.analyze import query

    columns, rows = query(Path(merged_dir), sql, Path(output) if output else None)
    if output:
        click.echo(f"wrote {output}")
    elif as_json:
        print_json([dict(zip(columns, row)) for row in rows])
    elif columns:
        click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join("" if v is None else str(v) for v in row))


if __name__ == "__main__":
    main()
