"""Keep every env value of the config out of plans, run folders, result files and argv.

Masking goes by value, not by name: DATABASE_URL, WANDB_KEY, GITHUB_PAT and HF_HUB_AUTH hold
secrets as surely as HF_TOKEN does, and no list of names knows them all. So every value of
`scheduler.env`, `server.env`, a node's, a group's and the router's `env` is a secret in outputs, unless its name is in
`scheduler.public_env` (e.g. NCCL_SOCKET_IFNAME, worth seeing in a plan). Secret-looking names
stay masked whatever the list says. Values reach the nodes only through a process's environment
or a script on stdin, never as argv words (which `ps` shows every user).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from magpie_trace.config import Config

_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|CREDENTIAL|PRIVATE_KEY)", re.I)
MASK = "***"
# In free text (error messages, log lines) and argv words a value is replaced wherever it occurs;
# values this short would blank out ordinary words and digits (HF_HUB_OFFLINE=1 masked
# `--node-rank 1`), and are no secret anyway. In env maps every value is masked.
MIN_TEXT_SECRET = 4


def is_secret(name: str) -> bool:
    """A name that always means a secret, whatever scheduler.public_env says."""
    return bool(_SECRET_NAME.search(name))


class Secrets:
    """The secret values of one config, and how each kind of output is masked."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = frozenset(v for v in values if v)
        self._words = frozenset(v for v in self.values if len(v) >= MIN_TEXT_SECRET)
        long = sorted(self._words, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, long))) if long else None

    @classmethod
    def of(cls, config: "Config") -> "Secrets":
        sched = config.scheduler
        public = set(sched.public_env)
        envs = [sched.env, config.server.env, *(node.env for node in sched.nodes),
                *(group.env for group in config.server.groups)]
        if config.router is not None:
            envs.append(config.router.env)
        return cls(
            value for env in envs for name, value in env.items()
            if name not in public or is_secret(name)
        )

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """A copy of env with every secret value (and every secret-looking name's) as ***."""
        return {k: MASK if is_secret(k) or v in self.values else v for k, v in env.items()}

    def argv(self, argv: list[str]) -> list[str]:
        """argv with each word that is a secret, or `--option=<secret>`, masked."""
        masked = []
        for word in argv:
            option, sep, value = word.partition("=")
            if word in self._words:
                word = MASK
            elif sep and value in self._words:
                word = f"{option}={MASK}"
            masked.append(word)
        return masked

    def text(self, text: str) -> str:
        """Free text (an error message, a log line) with every secret value in it replaced."""
        return self._pattern.sub(MASK, text) if self._pattern else text

    def config(self, data: dict[str, Any]) -> dict[str, Any]:
        """A config's to_dict() as written to a run folder: env maps and extra_args masked.

        Other keys stay as they are: later stages read them back (the model name, paths).
        """
        return _walk(data, self)


def _walk(value: Any, secrets: Secrets) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "env" and isinstance(item, dict):
                out[key] = secrets.env(item)
            elif key == "extra_args" and isinstance(item, list):
                out[key] = secrets.argv([str(word) for word in item])
            else:
                out[key] = _walk(item, secrets)
        return out
    if isinstance(value, list):
        return [_walk(item, secrets) for item in value]
    return value
