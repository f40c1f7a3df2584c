"""Backends: how a command reaches a node. `make_backend(config.scheduler)` picks one."""

from __future__ import annotations

from magpie_trace.backends.base import Backend, CommandResult, ProcessHandle, RemoteFile
from magpie_trace.config import SchedulerConfig
from magpie_trace.errors import ConfigError

__all__ = ["Backend", "CommandResult", "ProcessHandle", "RemoteFile", "make_backend"]


def make_backend(scheduler: SchedulerConfig) -> Backend:
    """One backend object for all of the scheduler's nodes (Ray is imported only when asked for)."""
    if scheduler.backend == "local":
        from magpie_trace.backends.local import LocalBackend

        return LocalBackend(scheduler)
    if scheduler.backend == "ssh":
        from magpie_trace.backends.ssh import SshBackend

        return SshBackend(scheduler)
    if scheduler.backend == "ray":
        try:
            from magpie_trace.backends.ray import RayBackend
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "ray":
                raise
            raise ConfigError(
                "scheduler.backend: ray needs Ray, which is not installed here: "
                "pip install 'magpie-trace[ray]'"
            ) from None

        return RayBackend(scheduler)
    if scheduler.backend == "slurm":
        from magpie_trace.backends.slurm import SlurmBackend

        return SlurmBackend(scheduler)
    raise ConfigError(
        f"scheduler.backend: {scheduler.backend} is not supported (local, ssh, ray, slurm)"
    )
