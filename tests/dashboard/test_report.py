"""`hpo report`: one self-contained HTML page with every section, the guards for thin studies, and the CLI."""

from __future__ import annotations

import re

import optuna
import pytest

from dashboard.report import MIN_TRIALS_FOR_IMPORTANCE, build_report, pareto_front
from hpo.storage import open_storage
from tests.helpers import run_cli

SQLITE_ONLY = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)  # the page's, not the storage's
SECTIONS = ("history", "curves", "importance", "parallel", "size", "pruning", "retrain")


def _figure_json(page: str, key: str) -> str:
    """The Plotly.newPlot call of one chart (its traces and layout)."""
    start = page.index(f'<div id="fig-{key}"')
    return page[start:page.index("</script>", start)]


def test_report_is_self_contained_and_draws_every_section(demo_study):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    page = build_report(study)
    # Works offline: nothing loaded from elsewhere (plotly.js itself is inline; the browser test draws it).
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)
    assert page.count("Plotly.newPlot") == len(SECTIONS) and "plotly.js v" in page.lower()
    for key in SECTIONS:
        assert f'<div id="fig-{key}"' in page, key
    baseline = next(t for t in study.trials if t.user_attrs.get("seed_baseline"))
    assert f"#{baseline.number} (original CifarNet): val_acc {baseline.value:.4f}" in page
    for key in ("history", "curves", "size"):
        assert "seed baseline (original CifarNet)" in _figure_json(page, key), key
    pruned = [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    curves = _figure_json(page, "curves")
    assert all(f"trial {n} pruned at epoch" in curves for n in pruned) and pruned
    assert '"name":"Pareto front"' in _figure_json(page, "size")
    retrain = _figure_json(page, "retrain")  # the demo's one retrain: its test curve, marked as the reference
    assert "-epoch schedule (reference)" in retrain and "Reference: trial " in page
    assert f"Study {demo_study.name}</h1>" in page


def test_pareto_front_keeps_only_undominated_points():
    points = [(100, 0.5, 0), (200, 0.4, 1), (200, 0.7, 2), (300, 0.6, 3), (400, 0.9, 4), (100, 0.3, 5)]
    assert pareto_front(points) == [(100, 0.5, 0), (200, 0.7, 2), (400, 0.9, 4)]


@SQLITE_ONLY
def test_thin_study_says_why_charts_are_missing(storage_url, study_name):
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url), direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 0.01, 0.3), n_trials=MIN_TRIALS_FOR_IMPORTANCE - 1)
    page = build_report(study)
    assert (f"Not enough complete trials for parameter importances: {MIN_TRIALS_FOR_IMPORTANCE - 1} complete, "
            f"at least {MIN_TRIALS_FOR_IMPORTANCE} needed") in page
    assert "No retrain recorded for this study yet" in page
    assert 'id="fig-importance"' not in page and 'id="fig-history"' in page


@SQLITE_ONLY
def test_empty_study_still_renders(storage_url, study_name):
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url))
    page = build_report(study)
    assert "No complete trial yet." in page and "Plotly.newPlot" not in page


def test_report_cli_writes_the_file_and_rejects_unknown_studies(demo_study, tmp_path):
    out = tmp_path / "nested" / "report.html"
    ok = run_cli("report", demo_study.name, "--storage", demo_study.storage, "-o", str(out))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"wrote {out}" and out.read_text().count("Plotly.newPlot") == len(SECTIONS)
    bad = run_cli("report", "nope", "--storage", demo_study.storage, "-o", str(out))
    assert bad.returncode == 1
    assert bad.stderr.strip() == (f"error: no study named 'nope' in {demo_study.storage} "
                                  f"(studies there: {demo_study.name})")
