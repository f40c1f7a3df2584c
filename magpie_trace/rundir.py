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

A run folder is made exclusively (never shared with another run) and a command that works in it
holds its lock (`.lock`, flock) meanwhile; `stop` does not wait for it, so an operator can always
stop a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from magpie_trace.config import check_name, under
from magpie_trace.errors import ConfigError, MagpieError


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

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def create(self, latest: bool = True) -> "RunDir":
        """Make the folder; one that exists already belongs to another run and is refused."""
        _check_output_dir(self.root.parent)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.root.mkdir()
        except FileExistsError:
            raise MagpieError(
                f"run {self.run_id}: {self.root} already exists (another run's folder); "
                "give another output.run_id, or resume it with `run --from STAGE --run RUN`"
            ) from None
        if latest:
            _point_latest(self.root)
        return self

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run folder for `command` until the block ends (or this process does).

        `run` holds the whole folder; a stage command (`bench`, `profile`, ...) holds its own part
        of it, so a capture may open while a benchmark loads the server, but two benchmarks may
        not, nor anything while a `run` works in the folder. A second holder is refused at once,
        naming the first, instead of mixing its results in. The kernel drops a lock with its
        process, however that ends.
        """
        with contextlib.ExitStack() as held:
            if command == "run":
                self._take(self.lock_path, fcntl.LOCK_EX, command, held)
            else:
                self._take(self.lock_path, fcntl.LOCK_SH, command, held)
                self._take(self.root / f".lock-{command}", fcntl.LOCK_EX, command, held)
            yield

    def _take(self, path: Path, mode: int, command: str, held: contextlib.ExitStack) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        held.callback(os.close, fd)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = ", ".join(self._holders()) or "another magpie-trace command"
            raise MagpieError(
                f"run {self.run_id}: {self.root} is in use by {holders}; wait for it to end, "
                "or stop it with `magpie-trace stop`"
            ) from None
        if mode == fcntl.LOCK_EX:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"magpie-trace {command} (pid {os.getpid()})\n".encode(), 0)

    def _holders(self) -> list[str]:
        """What holds a lock in the folder now, as its holder wrote it."""
        found = []
        for path in sorted(self.root.glob(".lock*")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held exclusively: its holder wrote who it is
                found.append(os.read(fd, 200).decode(errors="replace").strip())
            finally:
                os.close(fd)
        return [holder for holder in found if holder]


def new_run_dir(output_dir: str | Path, run_id: str, latest: bool = True) -> RunDir:
    """A new run folder; `latest` points at it unless it launches nothing (`bench --url`), so
    that `stop CONFIG` and the other commands keep finding the run that launch started."""
    return RunDir(Path(under(str(output_dir), check_name(run_id, "run id")))).create(latest)


def _check_output_dir(base: Path) -> None:
    if base.exists() and not base.is_dir():
        raise ConfigError(f"output.dir: {base} is a file, not a folder")


def find_run_dir(output_dir: str | Path, run: str | None = None) -> RunDir:
    """The run named `run` (an id under output_dir, or a path), else the latest one."""
    base = Path(output_dir)
    _check_output_dir(base)
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
