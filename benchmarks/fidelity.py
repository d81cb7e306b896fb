"""Fidelity transfer: does the study's cheap per-trial budget rank configurations the way a full retrain does?

Takes a finished quick study (default: results/quick2, the current studies/quick.toml: 8 epochs x 20k images
per trial), retrains its top-K complete trials by validation accuracy plus trial 0 (the original CifarNet) on
all 50k training images with a fixed 10-epoch schedule, using the search's own mapping (hpo.results.retrain.
replay_config) and the one training loop, and reports the rank correlation (Spearman and Kendall) between the
study's validation accuracy and the retrain's final test accuracy, and whether the study's winner is the
retrain's winner. The study database is only read.

    python benchmarks/fidelity.py --data-dir ../shared/data/cifar10            # ~25 min on 2 cores

Writes results/fidelity/summary.json and one run folder (metrics.json) per retrained trial; a trial whose
metrics.json shows all epochs is not trained again (the run is resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"))
    p.add_argument("--storage", default=f"sqlite:///{REPO / 'results/quick2/hpo.db'}")
    p.add_argument("--study", default="quick")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=REPO / "results" / "fidelity")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (saved in summary.json)")
    args = p.parse_args(argv)

    import optuna
    import torch
    from optuna.trial import TrialState
    from scipy import stats

    from cifarnet.config import DataConfig
    from cifarnet.hardware import describe_hardware, now_iso
    from cifarnet.files import write_json_atomic
    from cifarnet.run import train_to_dir
    from cifarnet.train import RunOptions
    from hpo.results.retrain import replay_config
    from hpo.definition.study_file import spec_from_dict

    torch.set_num_threads(os.cpu_count() or 1)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    spec = spec_from_dict(study.user_attrs["study_file"])
    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                      key=lambda t: (-t.value, t.number))
    chosen = complete[:args.top] + [t for t in complete[args.top:] if t.user_attrs.get("seed_baseline")]
    rows = []
    for t in chosen:
        cfg = replay_config(spec, t).replace(epochs=args.epochs)
        out = args.out / f"trial{t.number}"
        done = out / "metrics.json"
        if done.exists() and len(json.loads(done.read_text())["epochs"]) == args.epochs:
            record = json.loads(done.read_text())
        else:
            print(f"trial {t.number} (study val {t.value:.4f}): {args.epochs} epochs on all training images",
                  flush=True)
            _, record = train_to_dir(cfg, DataConfig(val_size=0, test_size=None), out, data_dir=args.data_dir,
                                     opts=RunOptions(device="cpu", progress=False),
                                     command=" ".join(["python", "benchmarks/fidelity.py", *sys.argv[1:]]))
            (out / "checkpoint.pt").unlink(missing_ok=True)
        test = [e["test_acc"] for e in record["epochs"]]
        rows.append({"trial": t.number, "study_val_acc": t.value, "retrain_test_acc": test[-1],
                     "retrain_best_test_acc": max(test), "params": record["params"],
                     "seed_baseline": bool(t.user_attrs.get("seed_baseline")),
                     "wall_time_s": round(record.get("wall_time_s", 0.0), 1)})
        print(f"  trial {t.number}: study val {t.value:.4f} -> retrain test {test[-1]:.4f}", flush=True)
    val = [r["study_val_acc"] for r in rows]
    test = [r["retrain_test_acc"] for r in rows]
    spearman, kendall = stats.spearmanr(val, test), stats.kendalltau(val, test)
    study_winner = max(rows, key=lambda r: r["study_val_acc"])["trial"]
    retrain_winner = max(rows, key=lambda r: r["retrain_test_acc"])["trial"]
    summary = {
        "command": " ".join(["python", "benchmarks/fidelity.py", *map(shlex.quote, sys.argv[1:])]),
        "date": now_iso(), "hardware": describe_hardware("cpu"), "note": args.note,
        "study": args.study, "storage": args.storage.replace(str(REPO) + "/", ""),
        "study_fidelity": {"epochs": spec.base.epochs, "train_size": spec.data.train_size,
                           "val_size": spec.data.val_size},
        "retrain_fidelity": {"epochs": args.epochs, "train_images": 50_000, "test_images": 10_000,
                             "seed": "each trial's own (as searched)"},
        "trials": rows,
        "spearman": round(float(spearman.statistic), 4), "spearman_p": round(float(spearman.pvalue), 4),
        "kendall": round(float(kendall.statistic), 4), "kendall_p": round(float(kendall.pvalue), 4),
        "study_winner": study_winner, "retrain_winner": retrain_winner,
        "winner_agrees": study_winner == retrain_winner,
    }
    write_json_atomic(summary, args.out / "summary.json")
    print(f"Spearman {summary['spearman']:.3f} (p {summary['spearman_p']:.3f}), Kendall {summary['kendall']:.3f} "
          f"(p {summary['kendall_p']:.3f}); study winner trial {study_winner}, retrain winner trial "
          f"{retrain_winner}")


if __name__ == "__main__":
    main()
