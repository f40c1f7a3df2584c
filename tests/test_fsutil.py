"""Outputs are written atomically and follow the umask (0644 under 022), so colleagues on a shared
file system can read them; a name planted where the temp file goes is never written through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from magpie_trace import fsutil


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_outputs_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    fsutil.atomic_write_text(tmp_path / "report.md", "# report\n")
    streamed = fsutil.temp_path_for(tmp_path / "sub" / "merged.json.gz")
    streamed.write_bytes(b"x")
    os.replace(streamed, tmp_path / "sub" / "merged.json.gz")
    for path in (tmp_path / "report.md", tmp_path / "sub" / "merged.json.gz"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "results.json"
    fsutil.atomic_write_text(target, "old")
    with pytest.raises(TypeError):  # the write itself fails, after the temp file was made
        fsutil.atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_temp_names_are_new_files_never_a_planted_link(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(fsutil.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".out.json.aaaaaaaa.tmp").symlink_to(victim)  # planted at the first name tried
    fsutil.atomic_write_text(tmp_path / "out.json", "data")
    assert victim.read_text() == "keep"
    assert (tmp_path / "out.json").read_text() == "data"
    assert Path(tmp_path / ".out.json.aaaaaaaa.tmp").is_symlink()
