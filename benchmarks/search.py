"""Search efficiency: does a strategy find good configurations with less compute than plain random search?

Repeated real studies on real CIFAR-10, one objective (studies/quick.toml's space and base recipe at a reduced
fidelity), one trial budget, several sampler seeds per strategy, the data split fixed. Every study is an
ordinary hpo study (`hpo.running.worker.start_study`, one worker, CPU) in one SQLite file, so `hpo report` and
optuna-dashboard can open them. For each study the script records, trial by trial in the order they ran:
epochs trained, training + evaluation seconds, and the best validation accuracy so far (COMPLETE trials only,
as the study itself reports it). Then it summarises (see `analyse`):

  headline  compute (epochs trained) each strategy needs to reach the final best of random search without
            pruning, as a ratio to what random needed, paired by seed; median over seeds and the spread
  replay    the pruners replayed over the unpruned arms' learning curves (benchmarks/pruner_replay.py): epochs saved against
            the probability that the top-1 / top-3 trial survives

    python benchmarks/search.py --data-dir ../shared/data/cifar10                  # ~1.5 h on 2 cores
    python benchmarks/search.py --analyse-only                                       # re-summarise, no training

Writes results/search/: search.db (the studies), runs/<strategy>-s<seed>.json (per study), summary.json,
anytime.html and anytime.png (the chart). A study already in runs/ is not run again (the run is resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.charts import save_chart  # noqa: E402

# Strategy name -> (sampler table, pruner table). The TPE settings are studies/quick.toml's; the pruners are
# scaled to the 4-epoch budget (median prunes from epoch 2 on, after 5 finished trials, as quick.toml
# does from epoch 3 of 8).
STRATEGIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "random": ({"kind": "random"}, {"kind": "none"}),
    "tpe": ({"kind": "tpe", "n_startup_trials": 8, "multivariate": True}, {"kind": "none"}),
    "tpe-median": ({"kind": "tpe", "n_startup_trials": 8, "multivariate": True},
                   {"kind": "median", "n_startup_trials": 5, "n_warmup_steps": 2}),
    "tpe-sha": ({"kind": "tpe", "n_startup_trials": 8, "multivariate": True},
                {"kind": "successive-halving", "min_resource": 1, "reduction_factor": 3}),
    "tpe-hyperband": ({"kind": "tpe", "n_startup_trials": 8, "multivariate": True},
                      {"kind": "hyperband", "min_resource": 1, "reduction_factor": 3}),
    "gp": ({"kind": "gp", "n_startup_trials": 8}, {"kind": "none"}),
    # Added after the first 18 studies: random search was the best sampler there, and the replay favoured the
    # median pruner; this arm measures that combination end to end.
    "random-median": ({"kind": "random"}, {"kind": "median", "n_startup_trials": 5, "n_warmup_steps": 2}),
}
UNPRUNED = ("random", "tpe", "gp")


def study_dict(base: dict[str, Any], strategy: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """quick.toml with this strategy's sampler and pruner, the reduced budget and the benchmark's storage."""
    sampler, pruner = STRATEGIES[strategy]
    raw = json.loads(json.dumps(base))
    raw["study"] = {"name": f"search-{strategy}-s{seed}", "storage": f"sqlite:///{args.out / 'search.db'}",
                    "trials": args.trials, "max_params": base["study"]["max_params"],
                    "artifact_dir": str(args.out / "artifacts" / f"{strategy}-s{seed}")}
    raw["sampler"] = {**sampler, "seed": seed}
    raw["pruner"] = dict(pruner)
    raw["budget"] = {"epochs": args.epochs, "train_size": args.train_size, "val_size": args.val_size,
                     "split_seed": 0}
    raw["train"] = {**base["train"], "tta_flip": False}  # one view: validation is scored often and cheaply
    return raw


def run_study(raw: dict[str, Any], args: argparse.Namespace, log) -> None:
    from hpo.definition.study_file import spec_from_dict
    from hpo.running.worker import WorkerOptions, start_study

    spec = spec_from_dict(raw)
    start_study(spec, WorkerOptions(data_dir=args.data_dir, device="cpu", workers=1, out=log))


def study_record(storage: str, name: str) -> dict[str, Any]:
    """The trials of one finished study, in the order they ran, with compute and best-so-far."""
    import optuna

    from hpo.results.efficiency import study_record as record

    return {"study": name, **record(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))}


def analyse(records: dict[tuple[str, int], dict[str, Any]], budget_epochs: int) -> dict[str, Any]:
    """Headline ratios per strategy (hpo.results.efficiency.compare_strategies: paired by seed with random, and over
    every seed pair) and the pruner replay."""
    from hpo.results.efficiency import compare_strategies
    from benchmarks.pruner_replay import PRUNERS, replay_pruners

    out: dict[str, Any] = {"strategies": compare_strategies(records)}
    curves = [[row["val_curve"] for row in rec["trials"] if row["state"] == "COMPLETE"
               and len(row["val_curve"]) == budget_epochs]
              for (strategy, _), rec in sorted(records.items()) if strategy in UNPRUNED]
    curves = [c for c in curves if len(c) >= 5]
    if curves:
        out["replay"] = {"studies": len(curves), "curves": sum(map(len, curves)), "orders_per_study": 50,
                         "pruners": replay_pruners(curves, PRUNERS, budget_epochs, orders=50, seed=0)}
    return out


def chart(records: dict[tuple[str, int], dict[str, Any]], out: Path, png: bool = True) -> None:
    """Anytime curves (the report's strategy chart): best validation accuracy so far against epochs trained,
    one line per study."""
    from dashboard.report import strategy_figure

    fig = strategy_figure(records)
    fig.update_layout(title="Best validation accuracy so far against epochs trained (one line per seed)",
                      template="plotly_white", width=1000, height=600)
    save_chart(fig, out / "anytime", png=png)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"))
    p.add_argument("--out", type=Path, default=REPO / "results" / "search")
    p.add_argument("--study-file", type=Path, default=REPO / "studies" / "quick.toml")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=2500)
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument("--no-png", action="store_true", help="draw the HTML chart only (no headless Chromium)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (saved in summary.json)")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)

    import torch

    from cifarnet.hardware import describe_hardware, now_iso
    from cifarnet.files import write_json_atomic

    torch.set_num_threads(os.cpu_count() or 1)
    base = tomllib.loads(args.study_file.read_text())
    storage = f"sqlite:///{args.out / 'search.db'}"
    records: dict[tuple[str, int], dict[str, Any]] = {}
    todo = [(s, seed) for seed in args.seeds for s in args.strategies]
    started = time.time()
    for i, (strategy, seed) in enumerate(todo):
        path = args.out / "runs" / f"{strategy}-s{seed}.json"
        if path.exists():
            records[(strategy, seed)] = json.loads(path.read_text())
            continue
        if args.analyse_only:
            continue
        raw = study_dict(base, strategy, seed, args)
        t0 = time.time()
        print(f"[{i + 1}/{len(todo)}] {strategy} seed {seed}", flush=True)
        with open(args.out / "runs" / f"{strategy}-s{seed}.log", "w") as log:
            run_study(raw, args, log)
        rec = study_record(storage, raw["study"]["name"])
        rec.update(strategy=strategy, seed=seed, wall_s=round(time.time() - t0, 1), finished=now_iso(),
                   load_avg_1m=round(os.getloadavg()[0], 2))
        write_json_atomic(rec, path)
        records[(strategy, seed)] = rec
        print(f"    best {rec['best']:.4f} after {rec['epochs']} epochs, {rec['wall_s']:.0f} s wall "
              f"(total {time.time() - started:.0f} s)", flush=True)
    summary = {
        "command": " ".join(["python", "benchmarks/search.py", *map(shlex.quote, sys.argv[1:])]),
        "date": now_iso(), "hardware": describe_hardware("cpu"), "note": args.note,
        "fidelity": {"epochs": args.epochs, "train_size": args.train_size, "val_size": args.val_size,
                     "split_seed": 0, "trials": args.trials, "space": str(args.study_file.name),
                     "tta_flip": False},
        "strategies_config": {k: {"sampler": v[0], "pruner": v[1]} for k, v in STRATEGIES.items()},
        "seeds": sorted({s for (_, s) in records}),
        **analyse(records, args.epochs),
    }
    write_json_atomic(summary, args.out / "summary.json")
    if records:
        chart(records, args.out, png=not args.no_png)
    for name, s in summary["strategies"].items():
        print(f"{name:14s} ratio (epochs) median {s['median_ratio_epochs']} range {s['ratio_epochs_range']} "
              f"reached {s['reached_random_best']}/{s['seeds']}; all pairs median {s.get('cross_median_ratio_epochs')} "
              f"quartiles {s.get('cross_ratio_epochs_quartiles')} reached {s.get('cross_reached')}/"
              f"{s.get('cross_pairs')}; best median {s['median_best']}")


if __name__ == "__main__":
    main()
