"""`magpie-trace submit`: the whole run as a Slurm batch job, for clusters whose login nodes must
not run long jobs.

The batch script asks for the allocation (#SBATCH lines from scheduler.slurm) and runs
`magpie-trace run CONFIG` inside it, with the run id fixed now so the run folder is known before
the job starts. Paths and options reach sbatch as argv words; the script's own command line is
built from shlex-quoted words only, and holds no env value (those stay in the config file).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from magpie_trace.backends.slurm_allocation import JOB_NAME, allocation_options, first_line, slurm
from magpie_trace.config import Config, parse_override
from magpie_trace.errors import ConfigError, MagpieError
from magpie_trace.fsutil import atomic_write_text
from magpie_trace.plan import new_run_id


@dataclass
class Submission:
    """What submit wrote (or would write) and where the run will be."""

    script: str
    script_path: Path
    sbatch_argv: list[str]
    run_dir: Path
    output_path: Path
    job_id: str | None = None


def prepare(
    config: Config, config_path: str, overrides: list[str], sbatch_args: list[str]
) -> Submission:
    """The batch script and the sbatch command line, nothing written yet."""
    src = config.source
    slurm_config = config.scheduler.slurm
    if slurm_config.job_id is not None:
        raise ConfigError(f"{src}: scheduler.slurm.job_id: submit makes an allocation of its own; "
                          "leave job_id out")
    for item in overrides:
        keys, _ = parse_override(item)
        if "env" in keys:
            raise ConfigError(f"--set {keys[0]}...: env values go in the config file, not in a "
                              "batch script's command line (every user can read it)")
    hosts = [node.host for node in config.scheduler.nodes]
    count = len(hosts) or slurm_config.nodes
    if count is None:
        raise ConfigError(f"{src}: scheduler.slurm.nodes: how many nodes the batch job asks for "
                          "(scheduler.nodes lists none)")
    # B:TERM@120: SIGTERM to the run 2 minutes before the time limit, so it tears down and writes
    # its results while it can (at the limit Slurm waits only KillWait before SIGKILL).
    directives = [f"--job-name={JOB_NAME}", f"--nodes={count}", "--signal=B:TERM@120",
                  *allocation_options(slurm_config)]
    if hosts:
        directives.append(f"--nodelist={','.join(hosts)}")
    for word in slurm_config.salloc_args:
        if not word.strip() or any(c.isspace() for c in word):
            raise ConfigError(f"{src}: scheduler.slurm.salloc_args: {word!r} cannot be an "
                              "#SBATCH option (one word, no spaces)")
    directives += slurm_config.salloc_args
    run_id = config.output.run_id or new_run_id()
    output_dir = Path(config.output.dir).resolve()
    argv = [sys.executable, "-m", "magpie_trace.cli", "run", str(Path(config_path).resolve()),
            *(word for item in overrides for word in ("--set", item)),
            "--set", f"output.run_id={run_id}"]
    script = "\n".join([
        "#!/bin/sh",
        *(f"#SBATCH {directive}" for directive in directives),
        "# Written by `magpie-trace submit`: the whole run inside this job's allocation.",
        f"cd -- {shlex.quote(os.getcwd())} || exit 1",
        f"exec {shlex.join(argv)}",
        "",
    ])
    script_path = output_dir / f"{run_id}.sbatch"
    output_path = output_dir / f"{run_id}.slurm.out"
    sbatch = ["sbatch", "--parsable", f"--output={output_path}", *sbatch_args, str(script_path)]
    return Submission(script, script_path, sbatch, output_dir / run_id, output_path)


def submit(submission: Submission) -> Submission:
    """Write the script next to the run folder to be and hand it to sbatch."""
    submission.script_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(submission.script_path, submission.script)
    result = slurm(submission.sbatch_argv, timeout_s=60.0)
    job_id = result.stdout.strip().split(";", 1)[0]
    if result.returncode != 0 or not job_id.isdigit():
        detail = first_line(result.stderr) or f"exit code {result.returncode}"
        raise MagpieError(f"sbatch refused {submission.script_path}: {detail}")
    submission.job_id = job_id
    return submission
