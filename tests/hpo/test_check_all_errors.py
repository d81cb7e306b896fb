"""`hpo study check` reports every error of a study file at once, still as one line."""

from __future__ import annotations

from tests.helpers import run_cli
from tests.hpo.studyfiles import write_study


def test_every_error_of_the_file_is_named_in_one_line(tmp_path, study_name):
    path = write_study(tmp_path, study_name, f"sqlite:///{tmp_path / 's.db'}",
                       study={"trials": -1, "timeout": "soon"}, budget={"epochs": 0},
                       sampler={"kind": "bayes"}, workers={"max_retry": True})
    r = run_cli("study", "check", str(path))
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    for problem in ("[study] trials must be > 0", "[study] timeout must be a number, got 'soon'",
                    "[budget] epochs must be > 0", "[sampler] kind must be one of", "[workers] max_retry must be an integer"):
        assert problem in r.stderr, (problem, r.stderr)
