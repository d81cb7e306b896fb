"""Atomic writes in a folder others can write (the artifact store many machines share): a symlink planted at
a temporary name is never followed, so no write of ours lands in a file it points to."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest
import torch

from cifarnet.errors import OutputError
from cifarnet.files import copy_atomic, replacing, write_atomic, write_json_atomic, write_text_atomic
from cifarnet.train import save_atomic

VICTIM = b"a file the user can write, which no write of ours may touch\n"

WRITERS = {
    "text (reports)": lambda path: write_text_atomic("report\n", path),
    "json (summaries)": lambda path: write_json_atomic({"a": 1}, path),
    "checkpoint": lambda path: save_atomic({"epoch": 3, "w": torch.ones(2)}, path),
    "callback": lambda path: write_atomic(path, lambda tmp: tmp.write_bytes(b"chart")),
}


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM)
    return victim


def _check_written(name: str, out: Path) -> None:
    assert not out.is_symlink()
    if name == "checkpoint":
        assert torch.load(out, weights_only=True)["epoch"] == 3
    else:
        assert out.read_bytes() in (b"report\n", b'{\n  "a": 1\n}\n', b"chart")


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_symlink_planted_at_the_old_predictable_temporary_name_is_not_followed(tmp_path, name):
    """Before the fix the temporary file was `.NAME.<pid>.tmp`: a symlink there was written through."""
    victim, shared = _victim(tmp_path), tmp_path / "shared"
    shared.mkdir()
    out = shared / "out.bin"
    (shared / f".{out.name}.{os.getpid()}.tmp").symlink_to(victim)
    WRITERS[name](out)
    assert victim.read_bytes() == VICTIM
    _check_written(name, out)


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_symlink_at_the_drawn_temporary_name_is_not_followed(tmp_path, monkeypatch, name):
    """Whatever name is drawn, a file already there is never opened: the temporary file is created exclusively."""
    victim, out = _victim(tmp_path), tmp_path / "out.bin"
    drawn = iter(["planted", "planted", "fresh"])
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: next(drawn))
    (tmp_path / f".{out.name}.planted.tmp").symlink_to(victim)
    WRITERS[name](out)
    assert victim.read_bytes() == VICTIM
    _check_written(name, out)
    assert (tmp_path / f".{out.name}.planted.tmp").is_symlink()  # left alone, not removed or followed
    assert not (tmp_path / f".{out.name}.fresh.tmp").exists()  # ours was renamed into place


def test_a_symlink_planted_at_the_target_is_replaced_not_written_through(tmp_path):
    victim, out = _victim(tmp_path), tmp_path / "summary.json"
    out.symlink_to(victim)
    write_json_atomic({"a": 1}, out)
    assert victim.read_bytes() == VICTIM and not out.is_symlink() and out.read_text() == '{\n  "a": 1\n}\n'


def test_copy_into_a_shared_folder_does_not_follow_planted_symlinks(tmp_path, monkeypatch):
    victim, source = _victim(tmp_path), tmp_path / "checkpoint.pt"
    source.write_bytes(b"weights" * 1000)
    target = tmp_path / "store" / "trial-3.pt"
    target.parent.mkdir()
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: "planted")
    (target.parent / f".{target.name}.planted.tmp").symlink_to(victim)
    with pytest.raises(OutputError, match=f"cannot write {target}"):  # every name drawn is taken: refuse
        copy_atomic(source, target)
    assert victim.read_bytes() == VICTIM and not target.exists()
    monkeypatch.undo()
    copy_atomic(source, target)
    assert target.read_bytes() == source.read_bytes() and victim.read_bytes() == VICTIM


def test_written_files_keep_the_usual_permissions(tmp_path):
    """Created with mode 0o666 less the umask, as before (not mkstemp's 0o600: the store is shared)."""
    old = os.umask(0o022)
    try:
        write_text_atomic("x", tmp_path / "report.html")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="check failed"):
        with replacing(out) as tmp:
            tmp.write_bytes(b"new, unchecked")
            raise RuntimeError("check failed")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with replacing(out) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
