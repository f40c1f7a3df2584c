"""One output folder per run, with a stable layout every stage reads and writes.

```
<output.dir>/<run_id>/
  config.yaml        the config as resolved (overrides applied)
  plan.json          the plan (secrets masked)
  state.json         what launch started: one process handle per node (for stop)
  logs/<node>.log    each node's engine log, fetched at stop
  preflight.json     per-node checks and measured clock offsets
  bench/attempt-NNN/ one folder per bench invocation: result.json, points/, requests.jsonl, sweep.csv, plots/
  traces/            node<N>-TP<R>.trace.json.gz ... + manifest.json
  merged/            aligned per-rank traces, merged Perfetto trace, tables, alignment.json
  report.md, report.html
```
`<output.dir>/latest` points at the newest run so later commands find it without arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from magpie_trace.errors import MagpieError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def preflight(self) -> Path:
        return self.root / "preflight.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    @property
    def traces(self) -> Path:
        return self.root / "traces"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    def create(self, latest: bool = True) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        if latest:
            _point_latest(self.root)
        return self


def new_run_dir(output_dir: str | Path, run_id: str, latest: bool = True) -> RunDir:
    """A new run folder; `latest` points at it unless it launches nothing (`bench --url`), so
    that `stop CONFIG` and the other commands keep finding the run that launch started."""
    return RunDir(Path(output_dir) / run_id).create(latest)


def find_run_dir(output_dir: str | Path, run: str | None = None) -> RunDir:
    """The run named `run` (an id under output_dir, or a path), else the latest one."""
    base = Path(output_dir)
    if run:
        candidate = Path(run)
        if not candidate.is_dir():
            candidate = base / run
        if not candidate.is_dir():
            raise MagpieError(f"run {run!r}: no such run folder (looked in {base})")
        return RunDir(candidate.resolve())
    latest = base / "latest"
    if not latest.exists():
        raise MagpieError(f"{base}: no run yet (run `magpie-trace launch` first, or pass --run)")
    return RunDir(latest.resolve())


def _point_latest(root: Path) -> None:
    link = root.parent / "latest"
    tmp = root.parent / f".latest.{os.getpid()}"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(root.name)
        os.replace(tmp, link)
    except OSError:
        pass
