"""Per-trial time a worker spends in optuna and its database, against the trial's training time.

Real studies on real data: studies/quick.toml's search space, recipe, sampler and pruner, with a smaller budget
(default 2 epochs of 2,000 CIFAR-10 training images, 1,000 validation images, the full-size CifarNet family),
on SQLite and PostgreSQL, with 1 and 8 worker processes. Goal: overhead <= 1% of training time. Writes
results/storage_overhead.json.

    python benchmarks/storage_overhead.py --data-dir ../shared/data/cifar10          # ~4 min on 2 cores

What is timed in every worker process, on its main thread, as exclusive ("self") time, so nothing counts twice:
  train     cifarnet.train.train(): model build, epochs, evaluation (its callbacks' optuna calls excluded)
  optuna    optuna's API: ask, tell, suggest_*, report, should_prune, set_user_attr, set_constraint, get_trials,
            study user_attrs, fail_stale_trials (Python, sampler, pruner; their database calls excluded)
  storage   every database call (ReconnectingRDBStorage) made on the main thread
  notes     each finished trial's dashboard note and per-epoch table (database calls excluded)
  progress  each finished trial's progress line (database calls excluded)
overhead = optuna + storage + notes + progress. Heartbeats are written by a background thread, off the
trial's critical path; their database time is reported apart. Idle time (a worker waiting for the others'
last trials) is not overhead and not counted.

The measured trials are short (seconds), so the fixed per-trial cost weighs more than in a real study;
`projection` scales the measured per-trial and per-epoch overhead to studies/quick.toml's real budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifarnet.hardware import describe_hardware, now_iso  # noqa: E402
from cifarnet.files import write_json_atomic  # noqa: E402
from hpo.storage import open_storage  # noqa: E402
from hpo.storage.optuna_internals import RETRIED_CALLS, ReconnectingRDBStorage  # noqa: E402
from hpo.definition.study_file import spec_from_dict  # noqa: E402
from hpo.running.worker import WorkerOptions, begin_run  # noqa: E402

OVERHEAD = ("optuna", "storage", "notes", "progress")
GOAL_PCT = 1.0
DEFAULT_POSTGRES = os.environ.get("HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class Meter:
    """Exclusive time per category on the main thread; time spent inside train() is also kept apart, so the
    per-epoch part of the overhead (report, should_prune, curve attrs) can be told from the per-trial part."""

    def __init__(self) -> None:
        self.self_s: dict[str, float] = defaultdict(float)
        self.in_train_s: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.background_storage_s = 0.0
        self._stack: list[list] = []  # [category, start, time in nested timed calls]

    def wrap(self, category: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.background_storage_s += time.perf_counter() - start
            frame = [category, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.self_s[category] += elapsed - frame[2]
                if any(f[0] == "train" for f in self._stack):
                    self.in_train_s[category] += elapsed - frame[2]
                if self._stack:
                    self._stack[-1][2] += elapsed
                if not self._stack or self._stack[-1][0] != category:  # count outermost calls only
                    self.calls[category] += 1
        return timed


def instrument(meter: Meter) -> None:
    """Wrap the real functions in this (worker) process; nothing is replaced, only timed."""
    import hpo.running.objective
    import hpo.storage  # noqa: F401  (the storage modules the patches below reach)
    import hpo.running.worker

    def patch(owner: Any, name: str, category: str) -> None:
        setattr(owner, name, meter.wrap(category, getattr(owner, name)))

    patch(hpo.running.objective, "train", "train")
    for name in ("ask", "tell", "get_trials", "set_user_attr"):
        patch(optuna.study.Study, name, "optuna")
    optuna.study.Study.user_attrs = property(meter.wrap("optuna", optuna.study.Study.user_attrs.fget))
    for name in ("report", "should_prune", "set_user_attr", "set_constraint", "suggest_float", "suggest_int",
                 "suggest_categorical"):
        patch(optuna.trial.Trial, name, "optuna")
    patch(optuna.storages, "fail_stale_trials", "optuna")
    for name in (*RETRIED_CALLS, "record_heartbeat"):
        if name in vars(ReconnectingRDBStorage) or hasattr(optuna.storages.RDBStorage, name):
            patch(ReconnectingRDBStorage, name, "storage")
    patch(hpo.running.worker.TrialRunner, "_annotate", "notes")
    patch(hpo.running.worker.Progress, "__call__", "progress")


def measured_worker(spec, opts: WorkerOptions, index: int, out: str) -> None:
    """One worker process: instrument, run trials like `hpo study join`, write what was measured."""
    from cifarnet.data import load_cifar10
    from hpo.running.worker import run_worker

    load_cifar10(opts.data_dir)  # cached: loading the data set is start-up, not trial time
    opts = dataclasses.replace(opts, out=open(os.devnull, "w"))  # no progress lines in the benchmark's output
    meter = Meter()
    instrument(meter)
    start = time.perf_counter()
    ran = run_worker(spec, opts, seed_offset=index)
    Path(out).write_text(json.dumps({
        "trials": ran, "wall_s": time.perf_counter() - start, "self_s": meter.self_s, "in_train_s": meter.in_train_s,
        "calls": meter.calls, "background_storage_s": meter.background_storage_s}))


def study_spec(base: Path, name: str, url: str, n_trials: int, args: argparse.Namespace, folder: Path):
    raw = tomllib.loads(base.read_text())
    raw["study"].update(name=name, storage=url, trials=n_trials, artifact_dir=str(folder / "artifacts"))
    raw["study"].pop("timeout", None)
    raw["budget"] = {"epochs": args.epochs, "train_size": args.train_size, "val_size": args.val_size}
    return spec_from_dict(raw)


def run_config(backend: str, url: str, workers: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    name = f"storage-overhead-{backend}-{workers}w-{uuid.uuid4().hex[:6]}"
    n_trials = max(args.min_trials, args.trials_per_worker * workers)
    spec = study_spec(args.base, name, url, n_trials, args, folder)
    begin_run(spec)
    opts = WorkerOptions(data_dir=args.data_dir, device="cpu", workers=workers, threads=args.threads)
    ctx = multiprocessing.get_context("spawn")
    outs = [folder / f"{name}-{i}.json" for i in range(workers)]
    procs = [ctx.Process(target=measured_worker, args=(spec, opts, i, str(o))) for i, o in enumerate(outs)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a worker of {name} failed (exit codes {[p.exitcode for p in procs]})")
    result = summarise([json.loads(o.read_text()) for o in outs], backend, workers, wall, args.epochs)
    result["epoch_rates"] = _epoch_rates(url, name, args)
    if backend == "postgresql":
        optuna.delete_study(study_name=name, storage=open_storage(url))
    return result


def summarise(parts: list[dict], backend: str, workers: int, wall: float, epochs: int) -> dict[str, Any]:
    trials = sum(p["trials"] for p in parts)
    total = {c: sum(p["self_s"].get(c, 0.0) for p in parts) for c in ("train", *OVERHEAD)}
    in_train = sum(p["in_train_s"].get(c, 0.0) for p in parts for c in OVERHEAD)
    overhead = sum(total[c] for c in OVERHEAD)
    calls = sum(p["calls"].get("storage", 0) for p in parts)
    return {
        "storage": backend, "workers": workers, "trials": trials, "wall_s": round(wall, 1),
        "per_trial_s": {c: round(v / trials, 4) for c, v in total.items()},
        "overhead_per_trial_s": round(overhead / trials, 4),
        "overhead_pct_of_train": round(100 * overhead / total["train"], 2),
        # report/should_prune/curve attrs happen once per epoch; ask/tell/notes once per trial.
        "overhead_per_epoch_s": round(in_train / trials / epochs, 4),
        "overhead_fixed_per_trial_s": round((overhead - in_train) / trials, 4),
        "database_calls_per_trial": round(calls / trials, 1),
        "heartbeat_database_s_per_trial": round(sum(p["background_storage_s"] for p in parts) / trials, 4),
    }


def _epoch_rates(url: str, name: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per training and per validation image, from the trials' own curves (for the projection)."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    epochs = [m for t in study.trials for m in t.user_attrs.get("curve", [])]
    return {"train_s_per_image": sum(m["train_time_s"] for m in epochs) / len(epochs) / args.train_size,
            "eval_s_per_image": sum(m["eval_time_s"] for m in epochs) / len(epochs) / args.val_size}


def project(run: dict[str, Any], base: Path) -> dict[str, Any]:
    """The measured overhead against a trial of the study file's own budget (same machine, same workers)."""
    budget = tomllib.loads(base.read_text())["budget"]
    rates = run["epoch_rates"]
    epoch_s = rates["train_s_per_image"] * budget["train_size"] + rates["eval_s_per_image"] * budget["val_size"]
    overhead = run["overhead_fixed_per_trial_s"] + budget["epochs"] * run["overhead_per_epoch_s"]
    return {"storage": run["storage"], "workers": run["workers"], "study_file": str(base.relative_to(REPO)),
            "epochs": budget["epochs"], "train_size": budget["train_size"], "val_size": budget["val_size"],
            "projected_train_s_per_trial": round(budget["epochs"] * epoch_s, 1),
            "projected_overhead_s_per_trial": round(overhead, 3),
            "projected_overhead_pct": round(100 * overhead / (budget["epochs"] * epoch_s), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"), help="CIFAR-10 folder")
    ap.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL URL, or 'none' to skip it")
    ap.add_argument("--workers", default="1,8", help="worker process counts to measure")
    ap.add_argument("--base", type=Path, default=REPO / "studies/quick.toml", help="study file: space, recipe, ...")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--trials-per-worker", type=int, default=2)
    ap.add_argument("--min-trials", type=int, default=6, help="trials of a study, at least")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores // workers)")
    ap.add_argument("--out", type=Path, default=REPO / "results/storage_overhead.json")
    args = ap.parse_args()
    args.base = args.base.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        backends = [("sqlite", f"sqlite:///{folder / 'overhead.db'}")]
        if args.postgres != "none":
            backends.append(("postgresql", args.postgres))
        runs = []
        for backend, url in backends:
            for workers in (int(w) for w in args.workers.split(",")):
                runs.append(run_config(backend, url, workers, args, folder))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "epoch_rates"}), flush=True)
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": now_iso(),
        "hardware": describe_hardware("cpu"), "goal_pct": GOAL_PCT,
        "setup": {"study_file": str(args.base.relative_to(REPO)), "epochs": args.epochs,
                  "train_size": args.train_size, "val_size": args.val_size, "data_dir": args.data_dir,
                  "threads_per_worker": args.threads or "cores // workers"},
        "runs": runs, "projection": [project(r, args.base) for r in runs if r["workers"] == 1],
        "definitions": __doc__.split("What is timed")[1].split("\n\n")[0].strip(),
    }
    write_json_atomic(record, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
