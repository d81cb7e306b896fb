"""The headline, end to end: the main job (`hpo study start studies/quick.toml`, its own wall budget), then its
finalists, then `hpo retrain` of the finalists' winner with 3 seeds (10-epoch schedule on all 50k images), beside
today's hand-set recipe member (benchmarks/recipe.py's wide-d1-flip10-bs256-bf16) retrained with the same seeds.

Each step is the command a user runs, its output kept in the results folder; a step whose output is there is not
run again (the benchmark resumes). The summary compares the mean test accuracy of the two over the seeds.

    python benchmarks/headline.py --data-dir ../shared/data/cifar10 --note "..."

Writes results/quick3/: hpo.db and artifacts/ (the study, its finalists, the retrain records), study.log,
finalists.json, retrain-s<seed>/ (run folders: metrics.json, retrain.json, ...), recipe/ (the recipe member's
runs), headline.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE_PRESET = "wide-d1-flip10-bs256-bf16"


def run(command: list[str], log: Path | None = None) -> None:
    """One step, as a user runs it; its output appended to `log` (and echoed)."""
    print("$ " + " ".join(map(shlex.quote, command)), flush=True)
    with open(log, "a") if log else open("/dev/null", "w") as sink:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            print(line, end="", flush=True)
            sink.write(line)
        if proc.wait() != 0:
            raise SystemExit(f"error: step failed (exit {proc.returncode}): {' '.join(command)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--study-file", type=Path, default=REPO / "studies" / "quick.toml")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=REPO / "results" / "quick3")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = p.parse_args(argv)

    from cifarnet.files import write_json_atomic
    from cifarnet.hardware import describe_hardware, now_iso

    hpo = str(Path(sys.executable).parent / "hpo")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = ["--storage", f"sqlite:///{out / 'hpo.db'}"]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    if not (out / "study.log").exists():
        run([hpo, "study", "start", str(args.study_file), *storage, *data, "--device", "cpu"], out / "study.log.part")
        (out / "study.log.part").rename(out / "study.log")
    if not (out / "finalists.json").exists():
        run([hpo, "study", "finalists", str(args.study_file), *storage, *data, "--device", "cpu"], out / "finalists.log")
        finalists = subprocess.run([hpo, "study", "finalists", str(args.study_file), *storage, *data, "-f", "json"],
                                   cwd=REPO, capture_output=True, text=True, check=True).stdout  # recorded: no work
        (out / "finalists.json").write_text(finalists)
    for seed in args.seeds:
        folder = out / f"retrain-s{seed}"
        if not (folder / "retrain.json").exists():
            resume = ["--resume"] if (folder / "checkpoint.pt").exists() else []
            run([hpo, "retrain", str(args.study_file), *storage, *data, "--device", "cpu", "--seed", str(seed),
                 "--out", str(folder), *resume], out / f"retrain-s{seed}.log")
        recipe = out / "recipe" / f"s{seed}"
        if not (recipe / f"{RECIPE_PRESET}-full" / "metrics.json").exists() or not _finished(recipe):
            run([sys.executable, "benchmarks/recipe.py", *data, "--val-size", "0", "--seed", str(seed), "--out",
                 str(recipe), RECIPE_PRESET], out / f"recipe-s{seed}.log")
    summary = summarize(out, args.seeds)
    summary.update(command=" ".join(["python", "benchmarks/headline.py", *map(shlex.quote, sys.argv[1:])]),
                   date=now_iso(), hardware=describe_hardware("cpu"), note=args.note)
    write_json_atomic(summary, out / "headline.json")
    print(json.dumps({k: summary[k] for k in ("winner", "recipe", "difference")}, indent=2))


def _finished(recipe: Path) -> bool:
    metrics = json.loads((recipe / f"{RECIPE_PRESET}-full" / "metrics.json").read_text())
    return len(metrics["epochs"]) == metrics["config"]["epochs"]


def summarize(out: Path, seeds: list[int]) -> dict:
    """Final test accuracy per seed of the winner's retrain and of the recipe member, their means and the paired
    differences."""
    winner = {s: json.loads((out / f"retrain-s{s}" / "metrics.json").read_text()) for s in seeds}
    recipe = {s: json.loads((out / "recipe" / f"s{s}" / f"{RECIPE_PRESET}-full" / "metrics.json").read_text())
              for s in seeds}
    finalists = json.loads((out / "finalists.json").read_text())

    def side(runs: dict) -> dict:
        tests = {s: r["epochs"][-1]["test_acc"] for s, r in runs.items()}
        first = next(iter(runs.values()))
        return {"test_acc_by_seed": tests, "mean_test_acc": statistics.fmean(tests.values()),
                "params": first["params"], "epochs": len(first["epochs"]), "train_images": first["data"]["train_images"],
                "config": first["config"]}

    w, r = side(winner), side(recipe)
    diffs = [w["test_acc_by_seed"][s] - r["test_acc_by_seed"][s] for s in seeds]
    return {"seeds": seeds, "winner": {"trial": finalists["winner"], "why": finalists["why"], **w}, "recipe": r,
            "difference": {"mean": statistics.fmean(diffs), "by_seed": diffs}, "finalists": finalists}


if __name__ == "__main__":
    main()
