"""benchmarks/ablation.py: the arms change exactly one thing, effects are paired by seed, and a tiny run
resumes and summarises."""

from __future__ import annotations

import json

import pytest

from benchmarks import ablation


@pytest.mark.parametrize("base", list(ablation.BASES))
def test_every_arm_changes_exactly_one_field_of_its_base(base):
    reference = ablation.arm_config(base, "base", 0).to_dict()
    for arm in ablation.ARMS[1:]:
        changed = ablation.arm_config(base, arm, 0).to_dict()
        diff = [k for k in reference if k != "model" and reference[k] != changed[k]]
        diff += [f"model.{k}" for k in reference["model"] if reference["model"][k] != changed["model"][k]]
        assert len(diff) == 1, (arm, diff)


def test_effect_is_the_mean_paired_difference_with_a_t_interval():
    e = ablation.effect([0.01, 0.02, 0.03])
    assert e["mean"] == pytest.approx(0.02) and e["n"] == 3
    assert e["low"] == pytest.approx(0.02 - 4.302653 * 0.01 / 3 ** 0.5, abs=1e-6)  # t(0.975, 2) = 4.3027
    assert ablation.effect([0.01])["low"] is None


def test_summary_pairs_by_seed_and_scores_eval_arms_on_the_base_weights():
    def run(arm, seed, val, test, **extra):
        return {"base": "original", "arm": arm, "seed": seed, "val_acc": val, "test_acc": test, "params": 1,
                "macs": 2, "images_per_s": 3.0, **extra}

    records = [run("base", 0, 0.50, 0.40, **{"tta-shift-1": {"val_acc": 0.52, "test_acc": 0.41}}),
               run("base", 1, 0.60, 0.50, **{"tta-shift-1": {"val_acc": 0.61, "test_acc": 0.53}}),
               run("gelu", 0, 0.55, 0.43), run("gelu", 1, 0.66, 0.52), run("whiten", 1, 0.70, 0.60)]
    arms = ablation.summarize(records)["original"]["arms"]
    assert arms["gelu"]["val"]["mean"] == pytest.approx(0.055) and arms["gelu"]["seeds"] == [0, 1]
    assert arms["whiten"]["seeds"] == [1] and arms["whiten"]["test"]["mean"] == pytest.approx(0.10)
    assert arms["tta-shift-1"]["test"]["mean"] == pytest.approx(0.02)


def test_a_tiny_ablation_runs_resumes_and_summarises(tmp_path, tiny_cifar, monkeypatch):
    monkeypatch.setitem(ablation.RECIPE, "epochs", 1)
    monkeypatch.setitem(ablation.BASES, "original", ablation.BASES["original"].replace(epochs=1, bf16=False))
    args = ["--data-dir", str(tiny_cifar), "--train-size", "120", "--val-size", "40", "--seeds", "0", "1",
            "--bases", "original", "--arms", "base", "gelu", "--out", str(tmp_path), "--no-png"]
    ablation.main(args)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["original-base-s0.json", "original-base-s1.json", "original-gelu-s0.json", "original-gelu-s1.json"]
    first = (tmp_path / "runs" / "original-gelu-s0.json").read_text()
    ablation.main(args)  # everything is there: nothing is trained again
    assert (tmp_path / "runs" / "original-gelu-s0.json").read_text() == first
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary["effects"]["original"]["arms"]["gelu"]
    assert row["seeds"] == [0, 1] and row["test"]["n"] == 2
    assert "tta-shift-1" in summary["effects"]["original"]["arms"]
    assert (tmp_path / "effects.html").exists()
