"""Study files: the shipped ones parse and are sized as documented; bad files give one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpo.errors import StudyFileError
from hpo.space import Choice
from hpo.studyfile import load_study_file, spec_from_dict
from tests.hpo.studyfiles import write_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"
HPO = str(Path(sys.executable).parent / "hpo")


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_shipped_study_files_parse_and_round_trip(name):
    spec = load_study_file(STUDIES / f"{name}.toml")
    assert spec.name == name
    assert spec.data.test_size == 0  # trials never look at the test set
    assert spec_from_dict(spec.raw) == spec  # what is stored on the study rebuilds the same spec
    assert {"lr", "width1", "width2", "width3", "width4", "dilation", "aug_strength"} <= set(spec.space.params)
    assert spec.space.params["lr"].log


def test_quick_study_is_sized_for_two_cpu_cores():
    spec = load_study_file(STUDIES / "quick.toml")
    # ~3,000 training images/s for an average member of the space with bf16 on 2 cores (results/quick):
    # every trial at full budget would take 20-40 min; pruning and the 30-min timeout bring it to 20-30.
    images = spec.n_trials * spec.base.epochs * spec.data.train_size
    assert 20 * 60 <= images / 3000 <= 40 * 60
    assert spec.pruner.kind in ("median", "hyperband") and spec.timeout <= 1800 and spec.base.bf16


def test_smoke_widths_are_tiny():
    spec = load_study_file(STUDIES / "smoke.toml")
    widths = [max(spec.space.params[f"width{i}"].choices) for i in range(1, 5)]
    assert isinstance(spec.space.params["width1"], Choice) and max(widths) <= 16


def test_overrides_are_written_into_the_stored_file(tmp_path):
    path = write_study(tmp_path, "s", "sqlite:///a.db")
    spec = load_study_file(path, storage="sqlite:///b.db", n_trials=7, timeout=60)
    assert (spec.storage, spec.n_trials, spec.timeout) == ("sqlite:///b.db", 7, 60.0)
    assert spec.raw["study"]["storage"] == "sqlite:///b.db" and spec.raw["study"]["trials"] == 7
    assert Path(spec.artifact_dir).is_absolute()


BAD_FILES = {
    "syntax error": ("[study\nname = 1", "TOML syntax error"),
    "unknown key": (None, "unknown key(s) 'colour'"),
    "low > high": (None, "low (0.5) > high (0.1)"),
    "unknown sampler": (None, "kind must be one of tpe, random, gp, cmaes; got 'bayes'"),
}


def _bad_file(tmp_path: Path, case: str) -> Path:
    changes = {"unknown key": {"study": {"colour": "red"}},
               "low > high": {"space": {"lr": {"low": 0.5, "high": 0.1}}},
               "unknown sampler": {"sampler": {"kind": "bayes"}}}.get(case, {})
    path = write_study(tmp_path, "bad", f"sqlite:///{tmp_path / 'bad.db'}", **changes)
    if BAD_FILES[case][0] is not None:
        path.write_text(BAD_FILES[case][0])
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_study_file_raises_one_clear_error(tmp_path, case):
    with pytest.raises(StudyFileError, match="bad.toml") as err:
        load_study_file(_bad_file(tmp_path, case))
    assert BAD_FILES[case][1] in str(err.value)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_cli_bad_study_file_one_line_exit_1(tmp_path, tiny_cifar, case):
    path = _bad_file(tmp_path, case)
    r = subprocess.run([HPO, "study", "start", str(path), "--data-dir", str(tiny_cifar)], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and BAD_FILES[case][1] in r.stderr
    assert not (tmp_path / "bad.db").exists()  # nothing is created from a bad file


def test_space_bound_outside_training_limits_is_a_file_error(tmp_path):
    path = write_study(tmp_path, "wd", "sqlite:///x.db", space={"weight_decay": {"low": 0.0, "high": 1.5}})
    with pytest.raises(StudyFileError, match=r"\[space\] weight_decay.*1.5"):
        load_study_file(path)


def test_committed_quick_study_resumes_only_with_its_own_file(tmp_path):
    """results/quick was made by studies/quick-v1.toml; the updated quick.toml is refused on that database."""
    import shutil

    import optuna

    from hpo.errors import HPOError
    from hpo.study import check_same_search

    db = tmp_path / "quick.db"
    shutil.copy(STUDIES.parent / "results" / "quick" / "hpo.db", db)
    stored = optuna.load_study(study_name="quick", storage=f"sqlite:///{db}").user_attrs["study_file"]
    check_same_search(stored, load_study_file(STUDIES / "quick-v1.toml"))
    with pytest.raises(HPOError, match=r"different \[space\], \[train\]"):
        check_same_search(stored, load_study_file(STUDIES / "quick.toml"))
