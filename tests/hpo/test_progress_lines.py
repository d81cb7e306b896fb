"""Long work is never silent: a worker says when a trial starts (or resumes), every ~30 s of an epoch it says
where the trial is, also when its output goes to a file; `hpo train` / `hpo retrain` do the same in a log."""

from __future__ import annotations

import io
import re

import cifarnet.train
from cifarnet.data import load_cifar10, make_splits
from cifarnet.train import RunOptions, describe_progress, train
from hpo.definition.study_file import load_study_file
from hpo.running.worker import WorkerOptions, start_study
from tests.conftest import TINY_DATA, TINY_TRAIN
from tests.hpo.studyfiles import write_study


def test_training_calls_on_progress_at_its_interval(tiny_cifar, monkeypatch):
    splits = make_splits(load_cifar10(tiny_cifar), TINY_DATA)
    calls: list[dict] = []
    train(TINY_TRAIN.replace(epochs=1), splits, opts=RunOptions(on_progress=calls.append))
    assert calls == []  # an epoch of well under 30 s: nothing to say
    monkeypatch.setattr(cifarnet.train, "PROGRESS_EVERY_S", 0.0)
    train(TINY_TRAIN.replace(epochs=2, batch_size=8), splits, opts=RunOptions(on_progress=calls.append))
    assert {c["epoch"] for c in calls} == {1, 2} and all(c["epochs"] == 2 and 0 < c["step"] <= c["steps"] for c in calls)
    assert re.fullmatch(r"epoch \d/2, step \d+/\d+, loss \d+\.\d{4}, epoch ends in \d+s", describe_progress(calls[0]))


def test_a_worker_writing_to_a_file_says_when_a_trial_starts_and_where_it_is(tmp_path, tiny_cifar, study_name,
                                                                            monkeypatch):
    monkeypatch.setattr(cifarnet.train, "PROGRESS_EVERY_S", 0.0)
    out = io.StringIO()  # not a terminal
    spec = load_study_file(write_study(tmp_path, study_name, f"sqlite:///{tmp_path / 's.db'}"), n_trials=2)
    start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1, out=out))
    lines = out.getvalue().splitlines()
    started = [i for i, line in enumerate(lines) if re.match(r"trial 0 started: 3 epochs, [\d,]+ parameters, ", line)]
    progress = [i for i, line in enumerate(lines) if line.startswith("trial 0: epoch 1/3, step ")]
    finished = [i for i, line in enumerate(lines) if re.match(r"trial 0 (complete|pruned)", line)]
    assert started and progress and finished and started[0] < progress[0] < finished[0]
    assert any(line.startswith("trial 1 started: ") for line in lines)
