"""Trial packing: aggregate trials per hour (and training images/s summed over concurrent trials) for K trials
at once on one device: K local worker processes sharing the CPU cores, or K trials per GPU.

Every run trains the same fixed list of configurations (quick.toml's space, sampled once with a seeded random
sampler, over-budget ones skipped) at a reduced fidelity, no pruning, in a fresh SQLite study, so runs differ
only in K. Runs are interleaved (K=1, 2, ..., then again) and repeated. `hpo study start --workers auto`
reads the result (hpo.running.packing).

    python benchmarks/packing.py --data-dir ../shared/data/cifar10                       # CPU, K = 1, 2 (~5 min)
    python benchmarks/packing.py --device cuda --concurrent 1 2 4 8 --train-size 20000    # one GPU (benchmarks/gpu.sh)

Writes (merges into) results/packing.json: one entry per (device, K) with the median over repeats; and the
same file as hpo/running/packing.json, the package data `--workers auto` reads in an installed package.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "packing.json"
PACKAGED = REPO / "hpo" / "running" / "packing.json"
sys.path.insert(0, str(REPO))


def fixed_params(spec, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` configurations of the space that fit max_params, drawn once by a seeded random sampler."""
    import optuna

    from cifarnet.model import model_stats
    from hpo.definition.space import suggest_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out: list[dict[str, Any]] = []
    while len(out) < n:
        trial = study.ask()
        cfg = suggest_config(spec.space, trial, spec.base)
        fits = spec.max_params is None or model_stats(cfg.model).params <= spec.max_params
        study.tell(trial, 0.0 if fits else None, state=None if fits else optuna.trial.TrialState.PRUNED)
        if fits:
            out.append(trial.params)
    return out


def run_once(base: dict[str, Any], params: list[dict[str, Any]], k: int, args: argparse.Namespace,
             folder: Path) -> dict[str, Any]:
    import optuna

    from hpo.definition.study_file import spec_from_dict
    from hpo.running.study import create_or_resume
    from hpo.running.worker import WorkerOptions, start_study

    raw = json.loads(json.dumps(base))
    name = f"packing-{args.device.replace(':', '')}-k{k}-{time.time_ns()}"
    raw["study"] = {"name": name, "storage": f"sqlite:///{folder / 'packing.db'}", "trials": len(params),
                    "max_params": base["study"]["max_params"], "artifact_dir": str(folder / "artifacts")}
    raw["sampler"] = {"kind": "random", "seed": 0}
    raw["pruner"] = {"kind": "none"}
    raw["budget"] = {"epochs": args.epochs, "train_size": args.train_size, "val_size": args.val_size}
    raw["train"] = {**base["train"], "tta_flip": False}
    spec = spec_from_dict(raw)
    study = create_or_resume(spec)
    for p in params[1:]:  # trial 0 is the baseline every study starts with
        study.enqueue_trial(p)
    if args.device == "cpu":
        opts = WorkerOptions(data_dir=args.data_dir, device="cpu", workers=k, out=open(os.devnull, "w"))
    else:
        opts = WorkerOptions(data_dir=args.data_dir, devices=(args.device,) * k, out=open(os.devnull, "w"))
    t0 = time.perf_counter()
    start_study(spec, opts)
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name=name, storage=spec.storage).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished()]
    images = sum(m["train_images"] for t in done for m in t.user_attrs.get("curve", []))
    return {"wall_s": round(wall, 1), "trials": len(done), "trials_per_hour": round(len(done) / wall * 3600, 1),
            "images_per_s": round(images / wall, 1), "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"))
    p.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (K trials on that one GPU)")
    p.add_argument("--concurrent", nargs="+", type=int, default=[1, 2])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = p.parse_args(argv)

    from cifarnet.hardware import describe_hardware, now_iso
    from cifarnet.files import write_json_atomic
    from hpo.running.packing import this_machine
    from hpo.definition.study_file import spec_from_dict

    base = tomllib.loads((REPO / "studies" / "quick.toml").read_text())
    probe = spec_from_dict({**base, "study": {**base["study"], "storage": "sqlite:///:memory:"}})
    params = fixed_params(probe, args.trials, seed=0)
    machine = this_machine(args.device)
    samples: dict[int, list[dict[str, Any]]] = {k: [] for k in args.concurrent}
    with tempfile.TemporaryDirectory(prefix="packing-") as tmp:
        for r in range(args.repeats):
            for k in args.concurrent:
                res = run_once(base, params, k, args, Path(tmp))
                samples[k].append(res)
                print(f"repeat {r + 1}: {k} concurrent: {res['trials']} trials in {res['wall_s']:.0f} s = "
                      f"{res['trials_per_hour']:.0f} trials/h, {res['images_per_s']:.0f} img/s", flush=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = [r for r in previous.get("runs", []) if not (r["device"] == machine.device and r.get("cores") ==
                                                         machine.cores and r.get("gpu", "") == machine.gpu)]
    date = now_iso()
    for k, rs in samples.items():
        runs.append({"device": machine.device, "cores": machine.cores, "gpu": machine.gpu, "concurrent": k,
                     "trials_per_hour": statistics.median(r["trials_per_hour"] for r in rs),
                     "images_per_s": statistics.median(r["images_per_s"] for r in rs), "repeats": rs,
                     "date": date})
    record = {
        "command": " ".join(["python", "benchmarks/packing.py", *map(shlex.quote, sys.argv[1:])]),
        "date": date, "hardware": describe_hardware(args.device if args.device != "auto" else "cpu"),
        "note": args.note,
        "fidelity": {"trials": args.trials, "epochs": args.epochs, "train_size": args.train_size,
                     "val_size": args.val_size, "space": "studies/quick.toml", "pruner": "none"},
        "runs": runs,
    }
    write_json_atomic(record, args.out)
    if args.out == DEFAULT_OUT:  # the copy an installed package reads (--workers auto); kept equal by a test
        write_json_atomic(record, PACKAGED)


if __name__ == "__main__":
    main()
