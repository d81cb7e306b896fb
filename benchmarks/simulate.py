"""Replay search strategies on a measured table (benchmarks/searchsim.py) and write the simulator's table.

    python benchmarks/simulate.py TABLE --out results/searchbench/sim
    python benchmarks/simulate.py TABLE --strategies random tpe random-median --repetitions 100 --seed 0

Prints, per strategy: the median compute to reach random search's final best (of an independent
repetition) as a ratio to random search's budget, with its bootstrap 95% interval; how often it reached it;
the paired Wilcoxon p-values (Holm) against random and for "ratio below the goal"; the compute the pruner
saved and how often the best configuration sampled survived to full fidelity; the IQM of the best value
within random's budget. Writes OUT/simulation.json (command, date, machine, the table file and its sha256,
the settings and that summary) and OUT/anytime.html. Deterministic for a given table, seed and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.searchsim import (DEFAULT_STRATEGIES, STRATEGIES, anytime_figure, format_table,  # noqa: E402
                                  jsonable, load_table, simulate, summarise)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", type=Path, help="the table JSON (format: benchmarks/searchsim.py)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "searchbench" / "simulation")
    p.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=list(STRATEGIES),
                   help="strategies to compare (default: all but gp, which is far slower per trial)")
    p.add_argument("--reference", default="random", choices=list(STRATEGIES),
                   help="the strategy every other is compared with (always run)")
    p.add_argument("--repetitions", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-trials", type=int, default=30, help="the reference's budget, in full runs")
    p.add_argument("--horizon", type=float, default=2.0, help="every strategy's budget, x the reference's")
    p.add_argument("--goal-ratio", type=float, default=1 / 3, help="the compute ratio the goal asks for")
    p.add_argument("--same-repetition-target", action="store_true",
                   help="target each repetition with the reference's own best (biased against the others: "
                        "benchmarks/searchsim.py reach_targets)")
    p.add_argument("--neighbours", type=int, default=5, help="the surrogate's nearest measured configs")
    return p.parse_args(argv)


def simulation_record(args: argparse.Namespace, argv: list[str]) -> dict:
    """Run the simulation the arguments describe: the results file's content."""
    from cifarnet.hardware import cpu_name, now_iso

    table = load_table(args.table)
    strategies = {name: STRATEGIES[name] for name in dict.fromkeys([args.reference, *args.strategies])}
    started = time.time()
    sim = simulate(table, strategies, repetitions=args.repetitions, seed=args.seed,
                   budget_trials=args.budget_trials, horizon=args.horizon, reference=args.reference,
                   neighbours=args.neighbours)
    summary = summarise(sim, goal_ratio=args.goal_ratio, same_repetition=args.same_repetition_target,
                        seed=args.seed)
    return {
        "command": " ".join(["python", "benchmarks/simulate.py", *map(shlex.quote, argv)]),
        "date": now_iso(), "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "wall_s": round(time.time() - started, 1),
        "table": {"path": str(args.table), "sha256": hashlib.sha256(args.table.read_bytes()).hexdigest(),
                  "configs": len(table.configs), "fidelities": [f.name for f in table.fidelities],
                  "noise_std": table.noise_std},
        "settings": {k: v for k, v in vars(args).items() if k not in ("table", "out")},
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from cifarnet.files import write_json_atomic, write_text_atomic

    try:
        record = simulation_record(args, argv)
        write_json_atomic(jsonable(record), args.out / "simulation.json")
        fig = anytime_figure(record["summary"])
        fig.update_layout(title=f"Anytime best, {args.repetitions} repetitions (table {args.table.name})")
        write_text_atomic(fig.to_html(include_plotlyjs=True), args.out / "anytime.html")
    except (OSError, ValueError) as e:  # a missing or invalid table, an unwritable --out: one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(record["summary"]))
    print(f"wrote {args.out / 'simulation.json'} and anytime.html ({record['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
