"""A fresh clone runs its tests on its own: nothing in the package or the tests reads the developers'
shared folder beside the repository, and every real trace the tests carry has its provenance written down."""

from __future__ import annotations

import re
from pathlib import Path

from tests.real_traces import TRACES

ROOT = Path(__file__).resolve().parents[1]
# Spelled in pieces so this file does not match itself.
OUTSIDE = re.compile(
    "|".join([r"\.\./" + "shared", "/work/" + "shared", r"""["']""" + "shared" + r"""["']\s*/\s*["']traces"""])
)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".sh", ".cfg", ".ini", ""}


def text_files(top: Path) -> list[Path]:
    return [p for p in top.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]


def test_nothing_names_the_shared_folder():
    files = text_files(ROOT / "magpie_trace") + text_files(ROOT / "tests")
    assert len(files) > 50  # the scan saw the tree, not an empty glob
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []


def test_the_pattern_catches_what_it_must():
    for line in ['p = Path("..") / "shared' + '" / "traces"', "see ../" + "shared/traces", "/work/" + "shared/x"]:
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search('shared_dir=str(tmp_path / "shared")')


def test_every_carried_trace_has_its_provenance():
    readme = (TRACES.parent / "README.md").read_text()
    files = sorted(p.relative_to(TRACES.parent).as_posix() for p in TRACES.rglob("*") if p.is_file())
    assert len(files) >= 9
    for name in files:
        assert name in readme, f"{name} is missing from tests/data/README.md's checksums"
