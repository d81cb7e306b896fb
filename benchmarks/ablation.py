"""Ablation: one factor at a time, from the original network and from today's recipe member, paired by seed.

Each arm changes one thing of a base config: a switch of the family (how a stage downsamples, depthwise or
plain convs, the residuals, the activation, where BatchNorm sits) or a recipe knob (whitened first conv, own
learning rate for BatchNorm and biases, alternating flips, an EMA of the weights). Translation views at test
time change no training, so they are scored on each base run's own final weights. Every run trains with the
10-epoch schedule and the one training loop, and is scored once, after its last epoch, on the 5k validation
split and the 10k test set. Effect of an arm = mean over seeds of (arm - base) in the same seed (same data
order and augmentation draws), with a 95% t-interval.

    python benchmarks/ablation.py --data-dir ../shared/data/cifar10 --train-size 10000 --note "..."

Writes results/ablation/runs/<base>-<arm>-s<seed>.json (one per run; a run already there is not run again, so
the benchmark resumes), results/ablation/summary.json and effects.html / effects.png (the chart). A killed run
continues from its last epoch (its checkpoint, results/ablation/runs/*.pt, is removed once it finishes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifarnet.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402

# Today's recipe (results/recipe, the `wide-d1-flip10-bs256` preset) with the 10-epoch schedule; both bases use it,
# so the bases differ in the network only. bf16 is requested as the recipe does; it runs in fp32 where the CPU
# has no native bf16 (the run records its precision).
RECIPE = dict(epochs=10, batch_size=256, lr=0.3, weight_decay=2.5e-4, label_smoothing=0.15, aug_strength=0.2,
              flip_p=0.5, tta_flip=True, bf16=True)
BASES: dict[str, TrainConfig] = {
    "original": TrainConfig(model=ModelConfig(), **RECIPE),  # 153,104 parameters
    "recipe": TrainConfig(model=ModelConfig(widths=(32, 48, 64, 128), dilation=1), **RECIPE),  # 195,072
}
# Arm -> the one change, to the model (ModelConfig fields) or to the recipe (TrainConfig fields).
MODEL_ARMS: dict[str, dict[str, Any]] = {
    "stride-conv-alone": {"downsample": "conv"},  # the original's 3x3 stride-2 conv without the 1x1 after it
    "maxpool": {"downsample": "maxpool"},  # 2x2 max pooling after each stage's last conv
    "dilated-last-downsample": {"downsample": ("conv1x1", "conv1x1", "dilated")},  # 8 -> 4 by a dilation-2 conv
    "plain-convs": {"depthwise": False},  # plain 3x3 convs where the original is depthwise-separable
    "no-residual-3b": {"residual": False},  # without the residual around the dilated block
    "residual-all": {"residual_all": True},  # residuals around 1b and 2b too
    "gelu": {"activation": "gelu"},
    "bn-before-act": {"norm_order": "bn_act"},
}
RECIPE_ARMS: dict[str, dict[str, Any]] = {
    "whiten": {"whiten": True},
    "norm-lr-x4": {"norm_lr_scale": 4.0},
    "alternate-flip": {"alternate_flip": True},
    "ema-0.99": {"ema_decay": 0.99},
}
EVAL_ARMS = {"tta-shift-1": 1}  # arm -> tta_shift, scored on the base run's own weights
ARMS = ["base", *MODEL_ARMS, *RECIPE_ARMS]


def arm_config(base: str, arm: str, seed: int) -> TrainConfig:
    cfg = BASES[base].replace(seed=seed)
    if arm in MODEL_ARMS:
        return cfg.replace(model=dataclasses.replace(cfg.model, **MODEL_ARMS[arm]))
    return cfg.replace(**RECIPE_ARMS.get(arm, {}))


def run_arm(base: str, arm: str, seed: int, splits, args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm, score it after the last epoch, return its record (base runs add the eval-only arms)."""
    from cifarnet.hardware import describe_hardware, now_iso
    from cifarnet.model import model_stats
    from cifarnet.train import RunOptions, evaluate, train

    cfg = arm_config(base, arm, seed)
    checkpoint = args.out / "runs" / f"{base}-{arm}-s{seed}.pt"
    t0 = time.perf_counter()
    result = train(cfg, splits, opts=RunOptions(device="cpu", checkpoint=checkpoint, resume=True,
                                                evaluate_every_epoch=False))
    last = result.history[-1]
    stats = model_stats(cfg.model)
    record = {
        "base": base, "arm": arm, "seed": seed, "val_acc": last["val_acc"], "test_acc": last["test_acc"],
        "params": stats.params, "macs": stats.macs,
        "images_per_s": statistics.median(m["images_per_s"] for m in result.history),
        "wall_time_s": time.perf_counter() - t0, "precision": result.extra["precision"],
        "config": cfg.to_dict(), "data": {"train_images": len(splits.train), "val_images": len(splits.val),
                                          "test_images": len(splits.test)},
        "date": now_iso(), "hardware": describe_hardware("cpu"), "note": args.note,
        "command": " ".join(["python", "benchmarks/ablation.py", *map(shlex.quote, sys.argv[1:])]),
    }
    if arm == "base":
        for name, shift in EVAL_ARMS.items():
            scores = {split: evaluate(result.model, getattr(splits, split), "cpu", tta_flip=cfg.tta_flip,
                                      tta_shift=shift, channels_last=cfg.channels_last)["acc"]
                      for split in ("val", "test")}
            record[name] = {"val_acc": scores["val"], "test_acc": scores["test"]}
    checkpoint.unlink(missing_ok=True)
    return record


def effect(diffs: list[float]) -> dict[str, Any]:
    """Mean of paired differences with a 95% t-interval (n - 1 degrees of freedom)."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per base and arm: paired effects on validation and test accuracy, parameters, MACs, median img/s."""
    by = {(r["base"], r["arm"], r["seed"]): r for r in records}
    out: dict[str, Any] = {}
    for base in BASES:
        base_runs = {s: r for (b, a, s), r in by.items() if b == base and a == "base"}
        rows: dict[str, Any] = {}
        for arm in [a for a in ARMS if a != "base"] + list(EVAL_ARMS):
            pairs = [(base_runs[s], by.get((base, arm, s)) or base_runs[s].get(arm)) for s in sorted(base_runs)]
            pairs = [(b, a) for b, a in pairs if a is not None]
            if not pairs:
                continue
            trained = [a for _, a in pairs if "params" in a]
            rows[arm] = {
                "seeds": [b["seed"] for b, _ in pairs],
                "val": effect([a["val_acc"] - b["val_acc"] for b, a in pairs]),
                "test": effect([a["test_acc"] - b["test_acc"] for b, a in pairs]),
                "params": trained[0]["params"] if trained else pairs[0][0]["params"],
                "macs": trained[0]["macs"] if trained else pairs[0][0]["macs"],
                "images_per_s": statistics.median(a["images_per_s"] for a in trained) if trained else None,
            }
        if base_runs:
            runs = list(base_runs.values())
            out[base] = {"base": {"val_acc": statistics.fmean(r["val_acc"] for r in runs),
                                  "test_acc": statistics.fmean(r["test_acc"] for r in runs),
                                  "seeds": sorted(base_runs), "params": runs[0]["params"], "macs": runs[0]["macs"],
                                  "images_per_s": statistics.median(r["images_per_s"] for r in runs)},
                         "arms": rows}
    return out


def chart(summary: dict[str, Any], stem: Path, png: bool) -> None:
    """Forest plot: each arm's paired effect on test accuracy (points) with its 95% interval, per base."""
    import plotly.graph_objects as go

    from benchmarks.charts import save_chart

    fig = go.Figure()
    for base, colour in zip(summary, ("#1f77b4", "#d62728")):
        arms = summary[base]["arms"]
        names = list(arms)
        means = [100 * arms[a]["test"]["mean"] for a in names]
        err_hi = [100 * (arms[a]["test"]["high"] - arms[a]["test"]["mean"]) if arms[a]["test"]["high"] is not None
                  else 0 for a in names]
        err_lo = [100 * (arms[a]["test"]["mean"] - arms[a]["test"]["low"]) if arms[a]["test"]["low"] is not None
                  else 0 for a in names]
        fig.add_trace(go.Scatter(x=means, y=names, mode="markers", name=f"from the {base} base", marker_color=colour,
                                 error_x=dict(type="data", array=err_hi, arrayminus=err_lo)))
    fig.add_vline(x=0, line_dash="dot")
    fig.update_layout(title="Ablation: paired effect on test accuracy (percentage points, 95% interval over seeds)",
                      template="plotly_white", width=1000, height=640, xaxis_title="test accuracy: arm - base (pp)")
    save_chart(fig, stem, png=png)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-size", type=int, default=45_000, help="training images (class-balanced subset)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--out", type=Path, default=REPO / "results" / "ablation")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--no-png", action="store_true")
    args = p.parse_args(argv)

    from cifarnet.data import load_cifar10, make_splits
    from cifarnet.files import write_json_atomic

    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        splits = make_splits(load_cifar10(args.data_dir), DataConfig(train_size=args.train_size, val_size=args.val_size))
        for seed in args.seeds:  # seed-major: every arm has a paired run early, more seeds narrow the intervals
            for base in args.bases:
                for arm in args.arms:
                    path = runs / f"{base}-{arm}-s{seed}.json"
                    if path.exists():
                        continue
                    print(f"== {base} / {arm} / seed {seed}", flush=True)
                    record = run_arm(base, arm, seed, splits, args)
                    write_json_atomic(record, path)
                    print(f"   val {record['val_acc']:.4f} test {record['test_acc']:.4f} "
                          f"({record['wall_time_s']:.0f} s, {record['images_per_s']:.0f} img/s)", flush=True)
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    summary = {"protocol": {"schedule_epochs": RECIPE["epochs"], "seeds_paired": True,
                            "bases": {b: c.to_dict() for b, c in BASES.items()},
                            "model_arms": {a: {k: list(v) if isinstance(v, tuple) else v for k, v in ch.items()}
                                           for a, ch in MODEL_ARMS.items()},
                            "recipe_arms": RECIPE_ARMS, "eval_arms": {a: {"tta_shift": s} for a, s in EVAL_ARMS.items()},
                            "train_images": sorted({r["data"]["train_images"] for r in records}),
                            "runs": len(records)},
               "effects": summarize(records)}
    write_json_atomic(summary, args.out / "summary.json")
    chart(summary["effects"], args.out / "effects", png=not args.no_png)
    for base, s in summary["effects"].items():
        print(f"{base}: base val {s['base']['val_acc']:.4f} test {s['base']['test_acc']:.4f} ({s['base']['seeds']})")
        for arm, row in s["arms"].items():
            v, t = row["val"], row["test"]
            ci = f"[{100 * t['low']:+.2f}, {100 * t['high']:+.2f}]" if t["low"] is not None else ""
            print(f"  {arm:<24} val {100 * v['mean']:+.2f} test {100 * t['mean']:+.2f} {ci} pp (n={t['n']})")


if __name__ == "__main__":
    main()
