"""Preemption at real scale: a study whose worker is SIGKILLed several times in the middle of an epoch, as a spot
instance is, and what resuming trials from their checkpoints (hpo.running.checkpoints) saves against re-running them
from scratch. Writes results/preemption.json.

    python benchmarks/preemption.py --data-dir ../shared/data/cifar10      # quick.toml's run + a grace period per kill
    python benchmarks/preemption.py --data-dir ... --trials 4 --epochs 3 --train-size 500 --val-size 200 \\
        --kills 2 --grace-period 3 --heartbeat-interval 1 --out /tmp/preemption.json          # a smoke run

The study is studies/quick.toml (space, recipe, sampler, pruner, budget: its trials and epochs), without its
timeout so the whole budget runs. `hpo study start` runs it in a new process group; `--kills` times the
benchmark waits until a running trial has finished a randomly drawn epoch k, waits a random 20-80% of that
trial's epoch time (so the kill lands in the middle of epoch k + 1), SIGKILLs the whole process group, reads
the epoch of the trial's last checkpoint, and starts `hpo study join` (it joins under the stored budget, fails
the dead trial once its heartbeat is stale and runs its re-queued copy). After the run:
  resumed_at_epoch   where each re-run continued (hpo user_attr), next to the killed attempt's checkpoint epoch
  epochs_redone      epochs the re-run trained again beyond the epoch in flight (goal: 0)
  epochs_saved       finished epochs a from-scratch re-run would have trained again (= the checkpoint epoch)
  saved_s            their measured time (train + eval) in the killed attempt: what from scratch costs again
  lost_in_flight_s   time of the killed attempt after its last checkpoint (lost either way)
and the budget check: exactly `trials` trials finished, none left RUNNING, no duplicate trial numbers.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifarnet.hardware import describe_hardware, now_iso  # noqa: E402
from cifarnet.files import write_json_atomic  # noqa: E402
from cifarnet.train import load_checkpoint  # noqa: E402
from hpo.storage import open_storage  # noqa: E402
from hpo.definition.study_file import to_toml  # noqa: E402

HPO = str(Path(sys.executable).parent / "hpo")
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 0.5


def write_study(args: argparse.Namespace, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The base study file with this run's name, storage, artifact folder and budget overrides."""
    text = args.base.read_text()
    raw = tomllib.loads(text)
    name = f"preemption-{uuid.uuid4().hex[:8]}"
    storage = args.storage or f"sqlite:///{folder / 'study.db'}"
    study = {**raw["study"], "name": name, "storage": storage, "artifact_dir": str(folder / "artifacts")}
    study.pop("timeout", None)
    if args.trials:
        study["trials"] = args.trials
    budget = {**raw.get("budget", {}), **{k: v for k, v in (("epochs", args.epochs), ("train_size", args.train_size),
                                                            ("val_size", args.val_size)) if v}}
    workers = {**raw.get("workers", {}), **{k: v for k, v in (("heartbeat_interval", args.heartbeat_interval),
                                                              ("grace_period", args.grace_period)) if v}}
    raw.update(study=study, budget=budget, workers=workers)
    path = folder / f"{name}.toml"
    path.write_text(to_toml(raw))
    return path, raw


def launch(command: str, path: Path, args: argparse.Namespace, log) -> subprocess.Popen:
    cmd = [HPO, *command.split(), str(path), "--data-dir", args.data_dir, "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    # A new session: the kill takes the worker with its data-loader processes, as a lost machine would.
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def victim(study: optuna.Study, epoch: int, spared: set[int]) -> optuna.trial.FrozenTrial | None:
    """A running trial that has just finished `epoch` (and is not a trial killed before)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number not in spared and len(t.user_attrs.get("curve", [])) == epoch:
            return t
    return None


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    path, raw = write_study(args, folder)
    name, url, epochs = raw["study"]["name"], raw["study"]["storage"], raw["budget"]["epochs"]
    store = Path(raw["study"]["artifact_dir"])
    rng = random.Random(args.seed)
    log = open(folder / "hpo.log", "w")
    t0 = time.time()
    proc = launch("study start", path, args, log)
    while True:  # the study exists once its baseline trial is queued
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url))
            break
        except KeyError:
            time.sleep(POLL_S)
    kills: list[dict[str, Any]] = []
    while len(kills) < args.kills and proc.poll() is None:
        epoch = rng.randint(1, max(1, epochs - 1))
        target = None
        while target is None and proc.poll() is None:
            target = victim(study, epoch, {k["trial"] for k in kills})
            time.sleep(POLL_S / 5)
        if target is None:
            break
        epoch_s = target.user_attrs["epoch_times"][-1]
        time.sleep(rng.uniform(0.2, 0.8) * epoch_s)
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
        checkpoint = store / target.user_attrs["checkpoint"]
        if checkpoint.is_file():  # else the trial ended (pruned at that epoch) before the kill: not counted
            state = load_checkpoint(checkpoint)
            kills.append({"trial": target.number, "checkpoint_epoch": state["epoch"],
                          "lost_in_flight_s": killed_at - checkpoint.stat().st_mtime,
                          "saved_s": sum(m["train_time_s"] + m["eval_time_s"] for m in state["history"])})
            print(f"kill {len(kills)}: trial {target.number} in epoch {state['epoch'] + 1}/{epochs}", flush=True)
        proc = launch("study join", path, args, log)
    code = proc.wait()
    wall_s = time.time() - t0
    return summarize(study, raw, kills, wall_s, code, args.seed)


def summarize(study: optuna.Study, raw: dict[str, Any], kills: list[dict[str, Any]], wall_s: float,
              code: int, seed: int) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    for kill in kills:
        # The direct re-run (a re-run killed in turn has its own re-run, with a longer retry_history).
        rerun = next((t for t in trials if t.system_attrs.get("retry_history", [None])[-1] == kill["trial"]), None)
        kill["rerun"] = rerun.number if rerun else None
        kill["rerun_state"] = rerun.state.name if rerun else None
        resumed = rerun.user_attrs.get("resumed_at_epoch", 0) if rerun else None
        kill["resumed_at_epoch"] = resumed
        kill["epochs_redone"] = None if resumed is None else kill["checkpoint_epoch"] - resumed
        kill["epochs_saved"] = resumed
    numbers = [t.number for t in trials]
    return {
        "date": now_iso(), "hardware": describe_hardware(), "command": " ".join(["python", *sys.argv]),
        "kill_seed": seed, "study": raw["study"], "sampler": raw.get("sampler"), "budget": raw["budget"],
        "workers": raw["workers"], "exit_code": code, "wall_s": round(wall_s, 1),
        "budget_check": {
            "finished": sum(t.state in DONE for t in trials), "trials": raw["study"]["trials"],
            "running_left": sum(t.state == TrialState.RUNNING for t in trials),
            "duplicate_numbers": len(numbers) - len(set(numbers)),
        },
        "kills": kills,
        "trials": [{"number": t.number, "state": t.state.name, "retry_history": t.system_attrs.get("retry_history"),
                    "resumed_at_epoch": t.user_attrs.get("resumed_at_epoch"),
                    "epochs": len(t.user_attrs.get("curve", []))} for t in trials],
        "totals": {
            "kills": len(kills),
            "epochs_redone_beyond_in_flight": sum(k["epochs_redone"] or 0 for k in kills),
            "epochs_saved": sum(k["epochs_saved"] or 0 for k in kills),
            "saved_s": round(sum(k["saved_s"] for k in kills if k["epochs_saved"]), 1),
            "lost_in_flight_s": round(sum(k["lost_in_flight_s"] for k in kills), 1),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"), help="CIFAR-10 folder")
    ap.add_argument("--base", type=Path, default=REPO / "studies/quick.toml", help="study file (budget included)")
    ap.add_argument("--storage", help="study storage URL (default: a SQLite file in a temporary folder)")
    ap.add_argument("--kills", type=int, default=4, help="SIGKILLs during the run")
    ap.add_argument("--trials", type=int, help="override the file's trials")
    ap.add_argument("--epochs", type=int, help="override [budget] epochs")
    ap.add_argument("--train-size", type=int, help="override [budget] train_size")
    ap.add_argument("--val-size", type=int, help="override [budget] val_size")
    ap.add_argument("--heartbeat-interval", type=int, help="override [workers] heartbeat_interval")
    ap.add_argument("--grace-period", type=int, help="override [workers] grace_period")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--out", type=Path, default=REPO / "results/preemption.json")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("error: --data-dir (or $CIFAR10_DIR) is required")
    with tempfile.TemporaryDirectory(prefix="preemption-") as tmp:
        result = run(args, Path(tmp))
    write_json_atomic(result, args.out)
    t = result["totals"]
    print(f"{t['kills']} kills: {t['epochs_saved']} epochs ({t['saved_s']:.0f} s) not trained again, "
          f"{t['epochs_redone_beyond_in_flight']} redone beyond the epoch in flight, {t['lost_in_flight_s']:.0f} s "
          f"lost in flight; budget {result['budget_check']}; wall {result['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
