"""Trial checkpoints are keyed by study: studies of the same name on different storages may share one artifact
folder (both default to artifacts/<name> when started from one folder), and a re-run must never resume another
study's checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import optuna

from cifarnet.train import load_checkpoint
from hpo.definition.study_file import load_study_file
from hpo.running.checkpoints import TrialCheckpoint
from hpo.running.study import STUDY_UID
from hpo.running.worker import WorkerOptions, start_study
from tests.hpo.studyfiles import write_study


def test_studies_sharing_an_artifact_folder_never_read_each_others_checkpoints(tmp_path, tiny_cifar):
    store = tmp_path / "artifacts"
    specs = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        path = write_study(folder, "same", f"sqlite:///{folder / 'study.db'}", budget={"epochs": 1},
                           study={"artifact_dir": str(store)}, workers={"keep_checkpoints": True})
        specs[name] = load_study_file(path, n_trials=1)
    studies = {name: start_study(spec, WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1,
                                                     out=io.StringIO()))
               for name, spec in specs.items()}
    assert all(s.counts["complete"] + s.counts["pruned"] == 1 for s in studies.values())
    uids = {name: optuna.load_study(study_name="same", storage=spec.storage).user_attrs[STUDY_UID]
            for name, spec in specs.items()}
    assert uids["a"] != uids["b"]
    # Trial 0 of each study left its checkpoint in the shared folder, each in its own place.
    paths = {name: TrialCheckpoint(store, uid, 0, ()).path for name, uid in uids.items()}
    assert paths["a"] != paths["b"] and all(p.is_file() for p in paths.values())
    # A re-run of trial 0 (trial 1, retry_history [0]) resumes its own study's checkpoint, never the other's.
    for name, uid in uids.items():
        rerun = TrialCheckpoint(store, uid, 1, (0,))
        number, finished = rerun.resume()
        assert number == 0 and finished == load_checkpoint(paths[name])["history"]
        assert Path(rerun.path).parent == paths[name].parent
    stranger = TrialCheckpoint(store, "0" * 32, 1, (0,))  # a study that never ran trial 0 here
    assert stranger.resume() == (None, [])
