"""What an installed (non-editable) package carries: the files it reads at run time are package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.conftest import REPO


def test_the_packaged_packing_measurement_is_the_results_file():
    packaged = json.loads((REPO / "hpo" / "running" / "packing.json").read_text())
    assert packaged == json.loads((REPO / "results" / "packing.json").read_text())


def test_workers_auto_finds_its_measurement_in_a_non_editable_install(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and egg-info there
    for package in ("cifarnet", "hpo", "dashboard"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(source)], check=True, capture_output=True, timeout=300)
    code = ("import hpo.running.packing as p; from hpo.running.packing import Machine, choose_workers; "
            "print(p.__file__); print(len(p.load_measurements())); "
            "print(choose_workers(p.load_measurements(), Machine('cpu', 2)).workers)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert out[0].startswith(str(site))  # the installed copy, not the checkout
    runs = json.loads((REPO / "results" / "packing.json").read_text())["runs"]
    assert int(out[1]) == len(runs) > 0
    best = max((r for r in runs if r["device"] == "cpu" and r["cores"] == 2), key=lambda r: r["trials_per_hour"])
    assert int(out[2]) == best["concurrent"]
