"""Every config key is documented in docs/config.md (so the reference cannot drift)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from magpie_trace.config import Config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()


def keys(cls: type, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name == "source":
            continue
        tp = hints[field.name]
        inner = [a for a in typing.get_args(tp)] or [tp]
        target = next((a for a in inner if dataclasses.is_dataclass(a)), None)
        if typing.get_origin(tp) is list and target is not None:
            yield from keys(target, "")  # node entries: documented by their own name
            yield prefix + field.name
        elif target is not None:
            yield from keys(target, f"{prefix}{field.name}.")
        else:
            yield prefix + field.name


def test_every_key_is_in_the_reference():
    missing = []
    for key in keys(Config):
        parts = key.split(".")
        candidates = {key, ".".join(parts[1:]), parts[-1]} - {""}
        if not any(f"`{c}`" in DOC for c in candidates):
            missing.append(key)
    assert not missing, f"undocumented config keys: {missing}"
