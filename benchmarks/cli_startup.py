"""How long `hpo --help` takes (a fresh process each time; the CLI imports neither torch nor optuna for it).
Writes results/cli_startup.json.

    python benchmarks/cli_startup.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from cifarnet.hardware import cpu_name, now_iso

    hpo = shutil.which("hpo") or str(Path(sys.executable).parent / "hpo")
    runs = {}
    for args in (["--help"], ["study", "--help"], ["--version"]):
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            subprocess.run([hpo, *args], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        runs["hpo " + " ".join(args)] = {"median_s": round(statistics.median(times), 3),
                                         "min_s": round(min(times), 3), "max_s": round(max(times), 3)}
        print(f"hpo {' '.join(args)}: median {statistics.median(times):.3f} s over 7 runs")
    out = REPO / "results" / "cli_startup.json"
    out.write_text(json.dumps({"command": "python benchmarks/cli_startup.py", "date": now_iso(), "cpu": cpu_name(),
                               "cpu_cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                               "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
