"""Shared test fixtures. Each fixture module registers itself in pytest_plugins below."""

pytest_plugins: list[str] = [
    "tests.fixtures.engine_env",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.slurm_cluster",
    "tests.fixtures.sshd",
]
