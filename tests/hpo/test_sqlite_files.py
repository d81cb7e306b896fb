"""What a SQLite study database looks like on disk after hpo used it: complete when a writer ended, untouched by
the read-only commands."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
from pathlib import Path

import optuna

HPO = str(Path(sys.executable).parent / "hpo")
SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.toml"


def test_a_database_copied_after_the_writer_ended_holds_every_trial(tmp_path, tiny_cifar):
    """The README says a database copied with its artifacts works in its new place; the file alone must hold
    the study once `hpo study start` has exited (its latest trials lived only in the -wal file)."""
    run = subprocess.run([HPO, "study", "start", str(SMOKE), "--storage", "sqlite:///walt.db", "--n-trials", "2",
                          "--data-dir", str(tiny_cifar), "--device", "cpu", "--threads", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "walt.db", tmp_path / "moved" / "walt.db")  # the file alone, as `cp walt.db` does
    listed = subprocess.run([HPO, "study", "list", "--storage", "sqlite:///moved/walt.db", "-f", "json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert '"name": "smoke"' in listed.stdout and '"trials": 2' in listed.stdout


def test_the_inspecting_commands_leave_a_database_and_its_folder_as_they_were(tmp_path):
    """status, list and best only read: a database in SQLite's default journal mode (as plain optuna writes it)
    is not switched to WAL, no byte of it changes and no -wal / -shm file appears beside it."""
    study = optuna.create_study(study_name="plain", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 1.0},
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 2)}))
    del study
    gc.collect()  # closes the pooled connections, as the end of a process does

    def snapshot():
        return {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    before = snapshot()
    assert set(before) == {"s.db"}
    for args in (["status", "plain"], ["status", "plain", "-f", "json"], ["list"], ["best", "plain"]):
        r = subprocess.run([HPO, "study", *args, "--storage", "sqlite:///s.db"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert snapshot() == before, args
