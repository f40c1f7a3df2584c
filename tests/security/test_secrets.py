"""Issue 11 finding 6: every env value of the config is a secret in outputs and never in argv.

Found over ssh: config.yaml stored every secret in clear; names like DATABASE_URL, WANDB_KEY,
GITHUB_PAT, HF_HUB_AUTH were shown in `plan --json`, plan.json and result.json; and preflight put
`env K=V` on the ssh command line, where `ps` shows it to every user of both machines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from magpie_trace.config import SimConfig
from magpie_trace.launch import load_state
from magpie_trace.run import run
from magpie_trace.rundir import RunDir
from tests.launch.simcluster import sim_config
from tests.procs import leftover_processes, wait_for
from tests.security.argv_audit import argv_seen

SECRETS = {
    "DATABASE_URL": "postgres://admin:hunter2-db@db.internal/prod",
    "WANDB_KEY": "wandb-0123456789abcdef",
    "GITHUB_PAT": "ghp_patpatpat0123456789",
    "HF_HUB_AUTH": "hf-auth-zyxwvu987",
}
PUBLIC = {"NCCL_SOCKET_IFNAME": "lo"}


def secret_config(scheduler, tmp_path):
    scheduler.env = {"DATABASE_URL": SECRETS["DATABASE_URL"], **PUBLIC}
    scheduler.public_env = list(PUBLIC)
    scheduler.nodes[1].env = {"GITHUB_PAT": SECRETS["GITHUB_PAT"], "HF_HUB_AUTH": SECRETS["HF_HUB_AUTH"]}
    config = sim_config(scheduler, tmp_path, env={"WANDB_KEY": SECRETS["WANDB_KEY"]},
                        sim=SimConfig(startup_s=0.2, ttft_ms=5, itl_ms=2))
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 16, 8, 8
    bench.concurrency, bench.warmup_requests = [2], 1
    return config


def leaks(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode()
    return [name for name, value in SECRETS.items() if value.encode() in data]


def test_secrets_stay_out_of_argv_and_every_output_over_ssh(ssh_scheduler, tmp_path):
    config = secret_config(ssh_scheduler(2), tmp_path)
    environ: dict[str, bytes] = {}

    def on_progress(message: str) -> None:
        if message == "stage bench":  # every node is up: read what each engine process got
            run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
            for name, handle in load_state(run_dir).handles.items():
                environ[name] = Path(f"/proc/{handle.pid}/environ").read_bytes()

    with argv_seen() as seen:
        result = run(config, progress=on_progress)
    run_dir = RunDir(result.run_dir)

    # The nodes got every value, public or not, through their environment.
    assert sorted(leaks(environ["node0"])) == ["DATABASE_URL", "WANDB_KEY"]
    assert sorted(leaks(environ["node1"])) == sorted(SECRETS)
    assert b"NCCL_SOCKET_IFNAME=lo\0" in environ["node0"]
    # No command line this run started, here or on a node (they are the ssh clients' argv),
    # ever held a value: preflight's engine probe among them.
    assert seen, "no subprocess was seen"
    assert [argv for argv in seen if leaks(" ".join(argv))] == []
    # Nor any file of the run folder: config.yaml, plan.json, result.json, run.json, logs, report.
    files = [p for p in run_dir.root.rglob("*") if p.is_file()]
    assert {"config.yaml", "plan.json", "result.json", "run.json", "report.html"} <= {p.name for p in files}
    assert {str(p.relative_to(run_dir.root)): leaks(p.read_bytes()) for p in files
            if leaks(p.read_bytes())} == {}
    stored = yaml.safe_load(run_dir.config.read_text())
    assert stored["scheduler"]["env"] == {"DATABASE_URL": "***", "NCCL_SOCKET_IFNAME": "lo"}
    assert stored["server"]["env"] == {"WANDB_KEY": "***"}
    assert stored["scheduler"]["nodes"][1]["env"] == {"GITHUB_PAT": "***", "HF_HUB_AUTH": "***"}
    assert result.ok and result.bench_valid
    state = load_state(run_dir)
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)

    # `plan --json` and `plan` show the public value and mask the rest.
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    for extra in (["--json"], []):
        proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "plan", str(path), *extra],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert leaks(proc.stdout + proc.stderr) == [] and "NCCL_SOCKET_IFNAME" in proc.stdout
        assert '"NCCL_SOCKET_IFNAME": "lo"' in proc.stdout or "NCCL_SOCKET_IFNAME=lo" in proc.stdout


def test_masking_goes_by_value_in_env_argv_and_text():
    from magpie_trace.secrets import Secrets

    secrets = Secrets(["s3cr3t-value", "1"])
    assert secrets.env({"A": "s3cr3t-value", "B": "1", "C": "2", "HF_TOKEN": "x"}) == {
        "A": "***", "B": "***", "C": "2", "HF_TOKEN": "***"}
    # argv words and free text: long values wherever they occur; a one-character value is no
    # secret to hunt, and masking it would hide `--node-rank 1` (HF_HUB_OFFLINE=1 did).
    assert secrets.argv(["--api-key", "s3cr3t-value", "--key=s3cr3t-value", "--n=1", "--node-rank", "1"]) == [
        "--api-key", "***", "--key=***", "--n=1", "--node-rank", "1"]
    assert secrets.text("auth s3cr3t-value failed on node1") == "auth *** failed on node1"


def test_a_recorded_config_masks_env_maps_and_extra_args_only():
    from magpie_trace.secrets import Secrets

    config = {"server": {"env": {"HF_TOKEN": "hf_abc", "DB": "postgres://u:pw@h", "VLLM_HOST_IP": "10.0.0.1"},
                         "extra_args": ["--api-key", "postgres://u:pw@h"], "model": "/models/x"},
              "benchmark": {"tokenizer": "meta-llama/Llama-3.1-8B"}}
    out = Secrets(["hf_abc", "postgres://u:pw@h"]).config(config)
    assert out["server"]["env"] == {"HF_TOKEN": "***", "DB": "***", "VLLM_HOST_IP": "10.0.0.1"}
    assert out["server"]["extra_args"] == ["--api-key", "***"]
    assert out["server"]["model"] == "/models/x"  # later stages read it back
    assert out["benchmark"]["tokenizer"] == "meta-llama/Llama-3.1-8B"
    assert config["server"]["env"]["HF_TOKEN"] == "hf_abc"  # the input is not modified


def test_a_node_log_quoted_in_an_error_is_masked_in_run_json(tmp_path):
    from magpie_trace.errors import MagpieError
    from tests.launch.simcluster import local_scheduler

    scheduler = local_scheduler(tmp_path, 1)
    scheduler.env = {"DATABASE_URL": SECRETS["DATABASE_URL"]}
    config = sim_config(scheduler, tmp_path, command=["sh", "-c", 'echo "connecting to $DATABASE_URL"; exit 3'])
    with pytest.raises(MagpieError) as info:
        run(config)
    assert "exited with code 3 during startup" in str(info.value)
    run_dir = RunDir(next(Path(config.output.dir).glob("2*")))
    assert SECRETS["DATABASE_URL"] in (run_dir.logs / "node0.log").read_text()  # the engine's own log
    run_json = (run_dir.root / "run.json").read_text()
    assert "connecting to ***" in run_json and leaks(run_json) == []
