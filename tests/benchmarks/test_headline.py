"""benchmarks/headline.py's summary: the winner's retrains beside the recipe member's, paired by seed."""

from __future__ import annotations

import json

import pytest

from benchmarks import headline


def write_run(folder, tests, params):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "params": params, "config": {"epochs": len(tests)}, "data": {"train_images": 50_000},
        "epochs": [{"epoch": i + 1, "test_acc": t} for i, t in enumerate(tests)]}))


def test_the_summary_pairs_the_winner_and_the_recipe_by_seed(tmp_path):
    for seed, (w, r) in enumerate([(0.90, 0.85), (0.88, 0.86), (0.89, 0.857)]):
        write_run(tmp_path / f"retrain-s{seed}", [0.5, w], 190_000)
        write_run(tmp_path / "recipe" / f"s{seed}" / f"{headline.RECIPE_PRESET}-full", [0.4, r], 195_072)
    (tmp_path / "finalists.json").write_text(json.dumps({"winner": 7, "why": "best mean"}))
    s = headline.summarize(tmp_path, [0, 1, 2])
    assert s["winner"]["trial"] == 7 and s["winner"]["mean_test_acc"] == pytest.approx(0.89)
    assert s["recipe"]["mean_test_acc"] == pytest.approx((0.85 + 0.86 + 0.857) / 3)
    assert s["difference"]["by_seed"] == pytest.approx([0.05, 0.02, 0.033])
    assert s["winner"]["params"] == 190_000 and s["winner"]["epochs"] == 2
