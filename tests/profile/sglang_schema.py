"""Run with the engine venv's python: what the installed SGLang accepts and how it names traces.

Importing SGLang's server modules needs torchvision, which the CPU venv leaves out, so the facts
are read from the installed package's own source files (located without importing them) and its
own code is executed on our values:
  fields  ProfileReq's fields (with BaseReq's) from sglang/srt/managers/io_struct.py
  check   a JSON body (argv[2]) converted with msgspec into a Struct with exactly those fields
          and annotations, unknown keys refused, as the server would type-check it
  routes  the methods of /start_profile and /stop_profile in sglang/srt/entrypoints/http_server.py
  name    the file name SGLang's _stop_profile builds, run from its source with the given ranks
Prints one JSON document.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import typing
from pathlib import Path

ROOT = Path(importlib.util.find_spec("sglang").submodule_search_locations[0])  # no import
IO_STRUCT = ROOT / "srt" / "managers" / "io_struct.py"
HTTP_SERVER = ROOT / "srt" / "entrypoints" / "http_server.py"
PROFILER = ROOT / "srt" / "managers" / "scheduler_components" / "profiler_manager.py"


def _classes(path: Path) -> dict[str, ast.ClassDef]:
    tree = ast.parse(path.read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def profile_req_fields() -> dict[str, str]:
    classes = _classes(IO_STRUCT)
    fields: dict[str, str] = {}
    for name in ("BaseReq", "ProfileReq"):
        for stmt in classes[name].body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                fields[stmt.target.id] = ast.unparse(stmt.annotation)
    return fields


def check(body: dict) -> str:
    import msgspec

    namespace = {**vars(typing), "ProfileReqType": int}
    fields = [(name, eval(annotation, namespace), None)
              for name, annotation in profile_req_fields().items()]
    struct = msgspec.defstruct("ProfileReq", fields, kw_only=True, forbid_unknown_fields=True)
    try:
        msgspec.convert(body, struct, strict=True)
    except msgspec.ValidationError as exc:
        return str(exc)
    return "ok"


def routes() -> dict[str, list[str]]:
    tree = ast.parse(HTTP_SERVER.read_text())
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("api_route"):
                path = ast.literal_eval(deco.args[0])
                methods = next((ast.literal_eval(k.value) for k in deco.keywords if k.arg == "methods"), [])
                found[path] = methods
    return {path: found.get(path, []) for path in ("/start_profile", "/stop_profile")}


def file_name(profile_id: str, prefix: str | None, ranks: dict[str, int], stage: str | None) -> str:
    """SGLang's own statements, from `filename_parts = [...]` to `filename = ...`, executed."""
    tree = ast.parse(PROFILER.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        starts = [i for i, stmt in enumerate(body) if isinstance(stmt, ast.Assign)
                  and ast.unparse(stmt.targets[0]) == "filename_parts"]
        ends = [i for i, stmt in enumerate(body) if isinstance(stmt, ast.Assign)
                and ast.unparse(stmt.targets[0]) == "filename"]
        if starts and ends:
            code = ast.Module(body=body[starts[0]: ends[0] + 1], type_ignores=[])
            break
    else:
        raise SystemExit("SGLang's file-name code not found")

    class Parallel:
        tp_rank, dp_rank, pp_rank, moe_ep_rank = ranks["tp"], ranks["dp"], ranks["pp"], ranks["ep"]
        num_dp_ranks, pp_size, moe_ep_size = ranks["dp_size"], ranks["pp_size"], ranks["ep_size"]

    class Self:
        pass

    me = Self()
    me.profile_id = profile_id
    scope = {
        "self": me, "get_parallel": Parallel, "stage_prefix": f"{prefix}-" if prefix else "",
        "stage_suffix": f"-{stage}" if stage else "",
    }
    exec(compile(code, str(PROFILER), "exec"), scope)  # noqa: S102 - SGLang's own code
    return scope["filename"]


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "fields":
        print(json.dumps(profile_req_fields()))
    elif command == "check":
        print(json.dumps(check(json.loads(sys.argv[2]))))
    elif command == "routes":
        print(json.dumps(routes()))
    elif command == "name":
        args = json.loads(sys.argv[2])
        print(json.dumps(file_name(args["id"], args.get("prefix"), args["ranks"], args.get("stage"))))
