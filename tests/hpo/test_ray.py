"""Ray, kept on loopback: every Ray cluster of the tests runs in a network namespace of its own (`unshare -n -p -f
--mount-proc`, then `ip link set lo up`), where its nodes take 127.0.0.1, PostgreSQL is reached through its unix
socket, and stopping Ray touches only the namespace's own processes. The multi-node tests (ray_cluster_suite.py)
run there as a pytest session of their own; `ray start --head` + `hpo study start --ray 127.0.0.1:PORT` as a
script. The rest needs no cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo.running.ray_workers import RayOptions, slots
from tests.conftest import REPO
from tests.hpo.studyfiles import write_study
from tests.helpers import trials_of

# PostgreSQL as seen from inside the namespace (no TCP route to the host's loopback there).
SOCKET_URL = os.environ.get("HPO_TEST_POSTGRES_SOCKET_URL", "postgresql+psycopg://postgres@/test?host=/var/run/postgresql")
SUITE = "tests/hpo/ray_cluster_suite.py"


def in_own_network_namespace(script: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run a shell script where loopback is the only interface; Ray's token check is off there (a client holding
    an earlier cluster's token would be refused, and nothing outside can reach this cluster anyway)."""
    env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "HPO_TEST_POSTGRES_URL": SOCKET_URL, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", f"ip link set lo up && {script}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.timeout(1500)
def test_the_ray_cluster_suite_passes_in_a_network_namespace_of_its_own():
    tests = re.findall(r"^def (test_\w+)", (REPO / SUITE).read_text(), re.M)
    proc = in_own_network_namespace(f"{sys.executable} -m pytest -q -p no:cacheprovider -rA {SUITE}", {}, 1450)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert re.search(rf"\b{len(tests)} passed\b", proc.stdout) and "skipped" not in proc.stdout, tail
    assert sorted(re.findall(r"^PASSED \S+::(\w+)", proc.stdout, re.M)) == sorted(tests), tail


@pytest.mark.timeout(400)
def test_study_start_joins_a_ray_start_head_cluster_on_loopback(tmp_path, tiny_cifar, pg_url, study_name):
    path = write_study(tmp_path, study_name, SOCKET_URL, budget={"epochs": 1}, study={"artifact_dir": str(tmp_path)})
    script = (f"ray start --head --port=6390 --num-cpus=2 --include-dashboard=false --disable-usage-stats "
              f">/dev/null 2>&1 && hpo study start {path} --ray 127.0.0.1:6390 --n-trials 3 --threads 1 "
              f"--data-dir {tiny_cifar}; rc=$?; ray stop --force >/dev/null 2>&1; exit $rc")
    proc = in_own_network_namespace(script, {"RAY_worker_niceness": "0"}, 360)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # what the cluster is, before 20-30 s of workers starting
    assert "Ray cluster: 1 node(s), 2 CPUs, 0 GPUs; starting 2 worker(s) of 1 CPU(s) each" in proc.stdout
    trials = [t for t in trials_of(pg_url, study_name) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(trials) >= 3
    assert {t.user_attrs["placement"]["node_ip"] for t in trials} == {"127.0.0.1"}


def test_one_worker_per_slot_of_the_cluster():
    assert slots({"CPU": 4.0, "GPU": 1.0}, RayOptions(trials_per_gpu=2)) == 2  # 1/2 GPU each
    assert slots({"CPU": 2.0, "GPU": 4.0}, RayOptions(trials_per_gpu=2)) == 2  # as far as the CPUs go
    assert slots({"CPU": 8.0}, RayOptions(cpus_per_worker=3)) == 2  # no GPU: --threads CPUs each


def test_without_ray_the_error_says_how_to_install_it(tmp_path, pg_url, study_name):
    path = write_study(tmp_path, study_name, pg_url)
    code = ("import sys; sys.modules['ray'] = None; from hpo.cli import main; "  # as if Ray were not installed
            f"main(['study', 'start', {str(path)!r}, '--ray', 'auto'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == "error: --ray needs Ray, which is not installed: pip install -e '.[ray]'\n"
