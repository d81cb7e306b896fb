"""A benchmark table of the quick study's space: many configurations measured once, for the search simulator.

An ordinary hpo study in results/searchbench/bench.db (resumable, viewable with `hpo dashboard`, preemption-safe
like any study): the quick study's space, base recipe and fidelity, its rungs included, sampled by scrambled Sobol
points (optuna's QMCSampler) with no pruner, so every configuration records each rung's complete run and the full
run's per-epoch curve. Trial 0 is the original CifarNet (as in every study) and trial 1 today's recipe member
(where the space can express it). Then about ten of the measured configurations, spread over the range of their
scores, are trained again with more seeds ("<name>-noise", hpo.running.finalists.repeat_trials) to measure the seed
noise at every fidelity. Finally the studies are exported as the simulator's table (benchmarks/searchsim.py).

    python benchmarks/searchbench.py --data-dir ../shared/data/cifar10 --configs 200 --note "..."
    python benchmarks/searchbench.py --export-only

Writes results/searchbench/bench.db (the studies), table.json (the simulator's table) and bench.json (command,
date, hardware, what ran beside it, the cost of each configuration).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAME = "searchbench"
RECIPE_PARAMS = {"width1": 32, "width2": 48, "width3": 64, "width4": 128, "depthwise": True, "downsample": "conv1x1",
                 "activation": "relu", "norm_order": "act_bn", "residual_all": False}  # results/recipe's member


def bench_file(study_file: Path, out: Path, configs: int) -> Path:
    """The quick study as the benchmark: same space, recipe and fidelity; QMC points, no pruning."""
    from hpo.definition.study_file import to_toml

    raw = tomllib.loads(study_file.read_text())
    raw = copy.deepcopy(raw)
    raw["study"].update(name=NAME, storage=f"sqlite:///{(out / 'bench.db').resolve()}", trials=configs + 2,
                        artifact_dir=str((out / "artifacts").resolve()))
    raw["study"].pop("timeout", None)
    raw["study"]["stop_on_target"] = False
    raw["sampler"] = {"kind": "qmc", "seed": 0, "scramble": True}
    raw["pruner"] = {"kind": "none"}
    raw.pop("finalists", None)
    path = out / "bench.toml"
    path.write_text(to_toml(raw))
    return path


def run_bench(path: Path, args: argparse.Namespace) -> None:
    import dataclasses

    import optuna

    from hpo.definition.space import Choice
    from hpo.definition.study_file import load_study_file
    from hpo.running.study import create_or_resume
    from hpo.running.worker import WorkerOptions, start_study

    spec = load_study_file(path)
    study = create_or_resume(spec)
    if len(study.trials) <= 1:  # a new study: today's recipe member right after the original (trial 0)
        recipe = {k: v for k, v in RECIPE_PARAMS.items() if k in spec.space.params and (
            not isinstance(spec.space.params[k], Choice) or v in spec.space.params[k].choices)}
        study.enqueue_trial(recipe, user_attrs={"recipe_member": True}, skip_if_exists=True)
    done = len([t for t in study.trials if t.state.is_finished() and t.user_attrs.get("fail_reason") != "interrupted"])
    if done < spec.n_trials:  # a resumed benchmark runs what is left, not another full budget
        start_study(dataclasses.replace(spec, n_trials=spec.n_trials - done),
                    WorkerOptions(data_dir=args.data_dir, device="cpu"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_noise(path: Path, args: argparse.Namespace) -> None:
    """About `--noise-configs` measured configurations, spread over the range of their scores, `--noise-seeds`
    seeds each (the benchmark's own run is seed 0)."""
    import dataclasses

    import optuna
    from optuna.trial import TrialState

    from hpo.definition.study_file import load_study_file
    from hpo.running.finalists import FinalistOptions, repeat_trials

    spec = load_study_file(path)
    study = optuna.load_study(study_name=NAME, storage=spec.storage)
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    k = min(args.noise_configs, len(done))
    picks = [done[round(i * (len(done) - 1) / max(1, k - 1))] for i in range(k)]
    noise = dataclasses.replace(spec, name=f"{NAME}-noise")
    repeat_trials(study, noise, picks, range(1, args.noise_seeds), FinalistOptions(data_dir=args.data_dir,
                                                                                 device="cpu"), label="noise run")


def space_table(space) -> dict[str, Any]:
    from hpo.definition.space import Choice, IntRange

    out: dict[str, Any] = {}
    for name, dist in space.params.items():
        if isinstance(dist, Choice):
            out[name] = {"choices": list(dist.choices)}
        elif isinstance(dist, IntRange):
            out[name] = {"low": dist.low, "high": dist.high, "int": True, "log": dist.log}
        else:
            out[name] = {"low": dist.low, "high": dist.high, "log": dist.log}
    return out


def export_table(path: Path, out: Path) -> dict[str, Any]:
    """The studies as the simulator's table (benchmarks/searchsim.py documents the format)."""
    import math

    import optuna
    from optuna.trial import TrialState

    from hpo.definition.study_file import TRAIN_IMAGES, load_study_file

    spec = load_study_file(path)
    study = optuna.load_study(study_name=NAME, storage=spec.storage)
    full_images = spec.data.train_size or TRAIN_IMAGES - spec.data.val_size
    fidelities = {f"r{i}": {"epochs": r.epochs, "train_images": r.train_size} for i, r in enumerate(spec.rungs)}
    fidelities["full"] = {"epochs": spec.base.epochs, "train_images": full_images,
                          "lr_peak_epoch": max(1, math.ceil(spec.base.warmup_frac * spec.base.epochs))}

    def measured(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        row: dict[str, Any] = {f"r{r['rung']}": {"final": r["val_acc"]} for r in t.user_attrs.get("rungs", [])}
        if t.state == TrialState.COMPLETE:
            row["full"] = {"curve": [m["val_acc"] for m in t.user_attrs["curve"]], "final": t.value}
        return row

    configs = [{"params": t.params, **measured(t)} for t in study.trials if t.state == TrialState.COMPLETE]
    noise: list[dict[str, Any]] = []
    try:
        repeats = optuna.load_study(study_name=f"{NAME}-noise", storage=spec.storage).trials
    except KeyError:
        repeats = []
    by_source: dict[int, list] = {}
    for t in repeats:
        if t.state == TrialState.COMPLETE:
            by_source.setdefault(t.user_attrs["finalist_of"], []).append(t)
    for number, runs in sorted(by_source.items()):
        source = study.trials[number]
        entry: dict[str, Any] = {"params": source.params, "full": [source.value] + [r.value for r in runs]}
        for i in range(len(spec.rungs)):
            entry[f"r{i}"] = [row["val_acc"] for t in (source, *runs) for row in t.user_attrs.get("rungs", [])
                              if row["rung"] == i]
        noise.append(entry)
    table = {"space": space_table(spec.space), "fidelities": fidelities, "configs": configs, "noise": noise}
    from cifarnet.files import write_json_atomic

    write_json_atomic(table, out / "table.json")
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--study-file", type=Path, default=REPO / "studies" / "quick.toml")
    p.add_argument("--configs", type=int, default=200, help="Sobol configurations (plus the original and recipe)")
    p.add_argument("--noise-configs", type=int, default=10)
    p.add_argument("--noise-seeds", type=int, default=5, help="seeds per noise configuration, its first run included")
    p.add_argument("--out", type=Path, default=REPO / "results" / "searchbench")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--export-only", action="store_true")
    args = p.parse_args(argv)

    from cifarnet.files import write_json_atomic
    from cifarnet.hardware import describe_hardware, now_iso

    args.out.mkdir(parents=True, exist_ok=True)
    path = bench_file(args.study_file, args.out, args.configs)
    if not args.export_only:
        run_bench(path, args)
        run_noise(path, args)
    table = export_table(path, args.out)
    full = [c["full"]["final"] for c in table["configs"] if "full" in c]
    record = {"command": " ".join(["python", "benchmarks/searchbench.py", *map(shlex.quote, sys.argv[1:])]),
              "date": now_iso(), "hardware": describe_hardware("cpu"), "note": args.note,
              "study_file": str(args.study_file), "configs": len(table["configs"]),
              "noise_configs": len(table["noise"]),
              "full_val_acc": {"min": min(full), "median": statistics.median(full), "max": max(full)} if full else None,
              "fidelities": table["fidelities"]}
    write_json_atomic(record, args.out / "bench.json")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
