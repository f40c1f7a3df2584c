"""Keep tokens and passwords out of logs, plans and result files."""

from __future__ import annotations

import re

_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|CREDENTIAL|PRIVATE_KEY)", re.I)
MASK = "***"


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def mask_env(env: dict[str, str]) -> dict[str, str]:
    """A copy of env with secret-looking values replaced by ***."""
    return {k: (MASK if is_secret(k) else v) for k, v in env.items()}
