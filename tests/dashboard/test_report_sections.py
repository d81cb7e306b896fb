"""The report's importances beside the ablation's effect sizes, and its finalists section."""

from __future__ import annotations

import json

import optuna

from dashboard.report import build_report
from tests.helpers import run_cli

ABLATION = {"effects": {
    "original": {"base": {}, "arms": {
        "maxpool": {"test": {"mean": 0.021, "low": 0.011, "high": 0.031, "n": 3}},
        "whiten": {"test": {"mean": -0.004, "low": None, "high": None, "n": 1}}}},
    "recipe": {"base": {}, "arms": {"maxpool": {"test": {"mean": 0.012, "low": 0.002, "high": 0.022, "n": 3}}}}}}


def test_importances_stand_beside_the_ablations_effects(demo_study, tmp_path):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    page = build_report(study, ablation=ABLATION)
    section = page[page.index('<section id="importance"'):page.index("</section>", page.index('id="importance"'))]
    assert "<th>effect from the original base (test, pp)</th><th>effect from the recipe base (test, pp)</th>" in section
    assert "<td>maxpool</td><td>downsample</td><td>+2.10 [+1.10, +3.10] (n=3)</td><td>+1.20 [+0.20, +2.20] (n=3)</td>" \
        in section
    assert "<td>whiten</td><td>whiten</td><td>-0.40 (n=1)</td><td>-</td><td>not searched</td>" in section
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(ABLATION))
    r = run_cli("report", demo_study.name, "--storage", demo_study.storage, "-o", str(tmp_path / "r.html"),
                "--ablation", str(summary))
    assert r.returncode == 0, r.stderr
    assert "+2.10 [+1.10, +3.10] (n=3)" in (tmp_path / "r.html").read_text()
    (tmp_path / "bad.json").write_text("{}")
    bad = run_cli("report", demo_study.name, "--storage", demo_study.storage, "-o", str(tmp_path / "r2.html"),
                  "--ablation", str(tmp_path / "bad.json"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "not an ablation summary" in bad.stderr


def test_the_finalists_and_their_winner_are_in_the_report(demo_study):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    assert "No finalists ran yet" in build_report(study)
    best = study.best_trial
    record = {"top": 1, "seeds": 2, "epochs": 10, "train_size": 1000, "val_size": 40, "winner": best.number,
              "why": "best mean validation accuracy", "study": "x-finalists", "finished": "",
              "rows": [{"trial": best.number, "search_val_acc": best.value, "val_acc": [0.5, 0.6],
                        "mean_val_acc": 0.55, "params_count": 1}]}
    study.set_user_attr("finalists", record)
    try:
        page = build_report(study)
    finally:
        study.set_user_attr("finalists", None)
    section = page[page.index('<section id="finalists"'):page.index("</section>", page.index('id="finalists"'))]
    assert f"<td>{best.number}</td><td>{best.value:.4f}</td><td>0.5000</td><td>0.6000</td><td>0.5500</td><td>winner</td>" \
        in section
    assert f"Winner: trial {best.number} (best mean validation accuracy)" in section
