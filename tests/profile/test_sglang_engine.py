"""SGLang's profiler request and trace names, checked against the installed SGLang 0.5.23
(the engine venv): our /start_profile body fits its real `ProfileReq`, the routes take POST, and
our parser reads back every name its own naming code builds."""

from __future__ import annotations

import fnmatch
import json
import subprocess
from pathlib import Path

import pytest

from magpie_trace.config import ProfileConfig
from magpie_trace.engines import get_engine

pytestmark = pytest.mark.engine

SCRIPT = Path(__file__).with_name("sglang_schema.py")


def ask(python: Path, *args: str) -> object:
    result = subprocess.run([str(python), str(SCRIPT), *args], capture_output=True, text=True, check=False,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_start_body_fits_the_real_profile_req(engine_python):
    fields = ask(engine_python, "fields")
    assert {"output_dir", "start_step", "num_steps", "activities", "with_stack", "record_shapes",
            "profile_id", "profile_prefix"} <= set(fields)
    sglang = get_engine("sglang")
    for profile in (
        ProfileConfig(enabled=True),
        ProfileConfig(enabled=True, start_step=10, num_steps=5, activities=["CPU", "CUDA"],
                      with_stack=True, record_shapes=True),
    ):
        call = sglang.start_profile_call(profile, "20240101-120000-p1")
        assert set(call.body) <= set(fields)
        assert ask(engine_python, "check", json.dumps(call.body)) == "ok"
    # The check itself refuses what SGLang would silently drop or reject.
    assert "unknown field" in ask(engine_python, "check", json.dumps({"num_step": 3}))
    assert "Expected" in ask(engine_python, "check", json.dumps({"num_steps": "3"}))


def test_routes_accept_post(engine_python):
    routes = ask(engine_python, "routes")
    sglang = get_engine("sglang")
    start, stop = sglang.start_profile_call(ProfileConfig(), "x"), sglang.stop_profile_call()
    assert start.method in routes[start.path] and stop.method in routes[stop.path]


@pytest.mark.parametrize(
    "ranks",
    [
        {"tp": 5, "dp": 0, "pp": 0, "ep": 0, "dp_size": 1, "pp_size": 1, "ep_size": 1},
        {"tp": 3, "dp": 1, "pp": 0, "ep": 2, "dp_size": 2, "pp_size": 1, "ep_size": 4},
        {"tp": 7, "dp": 3, "pp": 1, "ep": 15, "dp_size": 4, "pp_size": 2, "ep_size": 16},
        {"tp": 0, "dp": 0, "pp": 1, "ep": 0, "dp_size": 1, "pp_size": 2, "ep_size": 1},
    ],
)
@pytest.mark.parametrize("stage", [None, "EXTEND"])
def test_parser_reads_sglangs_own_names(engine_python, ranks, stage):
    profile_id = "20240101-120000-p1"
    name = ask(engine_python, "name", json.dumps({"id": profile_id, "ranks": ranks, "stage": stage}))
    sglang = get_engine("sglang")
    assert any(fnmatch.fnmatchcase(name, p) for p in sglang.trace_patterns(profile_id))
    parsed = sglang.parse_trace_name(name)
    assert parsed is not None and parsed.profile_id == profile_id and parsed.stage == stage
    assert parsed.tp == ranks["tp"]
    for key, size in (("dp", "dp_size"), ("pp", "pp_size"), ("ep", "ep_size")):
        assert getattr(parsed, key) == (ranks[key] if ranks[size] > 1 else None), key
