"""Studies on a real multi-node Ray cluster (ray.cluster_utils.Cluster: several raylets on this machine, logical
GPUs declared with num_gpus, object stores capped) and the real PostgreSQL: placement across nodes with
fractional GPUs, a node removed mid-trial (its workers retried by Ray, its trial resumed from its checkpoint),
Ctrl-C on the driver. Every Ray process the module started is stopped at its end.

Not collected by a plain `pytest`: tests/hpo/test_ray.py runs this module inside a network namespace of its own
(only a loopback interface), where Ray's nodes take 127.0.0.1 and PostgreSQL is reached through its unix socket,
so no test traffic leaves loopback. Run here without that namespace, every test fails at once."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState
from ray.cluster_utils import Cluster

from cifarnet.train import load_checkpoint
from hpo.results.consistency import check_consistency
from tests.conftest import write_cifar_batches
from tests.hpo.studyfiles import write_study
from tests.helpers import storage_for, trials_of, wait_for, worker_pid


HPO = str(Path(sys.executable).parent / "hpo")
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
NODE = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": 80 * 2**20}  # 2 workers of 1/2 GPU each


@pytest.fixture(scope="module", autouse=True)
def _loopback_only():
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        pytest.fail(f"Ray tests run only where loopback is the only interface (here: {interfaces}): run them "
                    f"through tests/hpo/test_ray.py, which starts them in a network namespace of their own")


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node, each with 2 CPUs and 1 logical GPU.

    Its workers run at normal priority: Ray's default niceness 15 leaves them ~3% of a core beside one busy
    process of normal priority, so any other load on the CI machine starved the trials (with two CPU-bound
    processes beside it, the first test saw no two epochs in 180 s; at niceness 0 it passes)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")  # read by every raylet the cluster starts (also nodes added later)
        c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        c.add_node(**NODE)
        c.wait_for_nodes()
        assert {node.node_ip_address for node in c.list_all_nodes()} == {"127.0.0.1"}
        yield c
        nodes = c.list_all_nodes()
        c.shutdown()
    assert not any(node.any_processes_alive() for node in nodes)


@pytest.fixture(scope="module")
def slower_cifar(tmp_path_factory) -> Path:
    """5 x 100 training images: epochs long enough to stop a node or the driver in the middle of a trial."""
    return write_cifar_batches(tmp_path_factory.mktemp("cifar500"), per_batch=100)


def start_on_ray(path: Path, address: str, data: Path, cwd: Path, *extra: str, command=("study", "start")):
    return subprocess.Popen([HPO, *command, str(path), "--ray", address, "--trials-per-device", "2",
                             "--threads", "1", "--data-dir", str(data), *extra],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_trials(url: str, name: str) -> list:
    """The study's trials, after checking none is left RUNNING and no number is missing or duplicated."""
    trials = trials_of(url, name)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert check_consistency(storage_for(url), name) == []
    return trials


def assert_budget(trials: list, n: int, workers: int) -> None:
    """K workers share the budget without a lock (studies/README.md): N to N + K - 1 finished trials. Two
    workers may both see the budget one short, or both see a dead trial's re-queued copy and one create a
    new trial when the other took the copy."""
    assert n <= len([t for t in trials if t.state in DONE]) <= n + workers - 1


@pytest.mark.timeout(600)  # two runs of 4 Ray workers, slow when the machine is busy
def test_study_across_two_nodes_survives_ctrl_c_and_resumes_to_its_budget(tmp_path, cluster, slower_cifar,
                                                                          pg_url, study_name):
    n = 4
    path = write_study(tmp_path, study_name, pg_url, budget={"epochs": 4}, study={"artifact_dir": str(tmp_path)})
    proc = start_on_ray(path, cluster.address, slower_cifar, tmp_path, "--n-trials", str(n))
    nodes = {node.node_id for node in cluster.list_all_nodes()}

    def both_nodes_training():
        running = [t for t in trials_of(pg_url, study_name) if t.state == TrialState.RUNNING]
        return ({t.user_attrs.get("placement", {}).get("node_id") for t in running} == nodes
                and len([t for t in running if t.user_attrs.get("curve")]) >= 2)

    wait_for(both_nodes_training, proc, "trials running on both nodes, two past epoch 1", timeout_s=180)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: every worker records its trial as interrupted and re-queues it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    trials = trials_of(pg_url, study_name)
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # every worker stopped and said so
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == "interrupted"]
    named = err.strip().splitlines()[-1]  # the one Ctrl-C line names every trial that was running
    assert all(re.search(rf"\b{t.number}\b", named.split("(trial", 1)[-1]) for t in interrupted), named
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(interrupted) >= 2 and sorted(t.system_attrs["retry_history"][-1] for t in queued) == sorted(
        t.number for t in interrupted)
    # What each interrupted trial had checkpointed: its re-run must continue from exactly there.
    epochs_done = {t.number: load_checkpoint(tmp_path / t.user_attrs["checkpoint"])["epoch"] for t in interrupted
                   if t.user_attrs.get("curve")}
    assert len(epochs_done) >= 2

    # Workers joining on Ray finish the interrupted run under its stored budget.
    proc = start_on_ray(path, cluster.address, slower_cifar, tmp_path, command=("study", "join"))
    out, err = proc.communicate(timeout=420)
    assert proc.returncode == 0, err
    assert "complete: val_acc" in out  # the workers' progress lines reach the driver
    trials = check_trials(pg_url, study_name)
    assert_budget(trials, n, workers=4)  # 2 nodes x 2 workers of 1/2 GPU
    for number, k in epochs_done.items():
        rerun = next(t for t in trials if t.system_attrs.get("retry_history") == [number])
        assert rerun.state in DONE and rerun.user_attrs["resumed_at_epoch"] == k >= 1
    places = [t.user_attrs["placement"] for t in trials]
    assert {p["node_id"] for p in places} == nodes
    for p in places:  # Ray gave each worker half of its node's one GPU, and that is the device it saw
        assert p["gpu_ids"] == ["0"] and p["cuda_visible_devices"] == "0" and p["node_ip"] == "127.0.0.1"
    second = min(t.number for t in queued)  # the joining workers' trials start here
    for run in ([t for t in trials if t.number < second], [t for t in trials if t.number >= second]):
        workers = {t.user_attrs["worker"]: t.user_attrs["placement"]["node_id"] for t in run}
        assert max(Counter(workers.values()).values()) <= 2  # at most 2 workers of 1/2 GPU share a node


@pytest.mark.timeout(600)
def test_node_removed_mid_trial_its_trial_resumes_from_its_last_epoch(tmp_path, cluster, slower_cifar, pg_url,
                                                                      study_name):
    n, epochs = 5, 3
    spare = cluster.add_node(**NODE)
    path = write_study(tmp_path, study_name, pg_url, budget={"epochs": epochs}, workers={"keep_checkpoints": True},
                       study={"artifact_dir": str(tmp_path)})
    proc = start_on_ray(path, cluster.address, slower_cifar, tmp_path, "--n-trials", str(n), "--workers", "3")

    def trial_on_spare_node():
        return next((t for t in trials_of(pg_url, study_name) if t.state == TrialState.RUNNING
                     and t.user_attrs.get("placement", {}).get("node_id") == spare.node_id
                     and len(t.user_attrs.get("curve", [])) >= 1), None)

    victim = wait_for(trial_on_spare_node, proc, "a trial on the spare node finished an epoch", timeout_s=180)
    cluster.remove_node(spare, allow_graceful=False)  # SIGKILLs the node's raylet and object store
    # A lost machine takes its processes with it at once; here its Ray workers would notice their raylet's
    # death only after a while (under load, an epoch or more), so they go the same way: each worker that ran a
    # trial there, also one between two trials (it would start another on the lost node).
    for pid in {worker_pid(t) for t in trials_of(pg_url, study_name)
                if t.user_attrs.get("placement", {}).get("node_id") == spare.node_id}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=420)
    assert proc.returncode == 0, err  # Ray ran the lost workers again elsewhere
    # The dead attempt's own checkpoint file, as its process left it (it may finish an epoch while it notices
    # that its raylet is gone); its re-run only reads it, long after, once the heartbeat is stale.
    k = load_checkpoint(tmp_path / victim.user_attrs["checkpoint"])["epoch"]

    trials = check_trials(pg_url, study_name)
    assert_budget(trials, n, workers=3)
    dead = [t for t in trials if t.state == TrialState.FAIL]
    assert victim.number in [t.number for t in dead]
    for t in dead:  # only the removed node's trials failed, each by its stale heartbeat, and each was re-run
        assert t.user_attrs["placement"]["node_id"] == spare.node_id and "fail_reason" not in t.user_attrs
        assert len([r for r in trials if r.system_attrs.get("retry_history") == [t.number] and r.state in DONE]) == 1
    rerun = next(r for r in trials if r.system_attrs.get("retry_history") == [victim.number])
    assert rerun.user_attrs["resumed_from_trial"] == victim.number and rerun.user_attrs["resumed_at_epoch"] == k >= 1
    assert rerun.user_attrs["placement"]["node_id"] != spare.node_id


def test_every_trial_prints_its_progress_line_through_the_driver(tmp_path, cluster, tiny_cifar, pg_url, study_name):
    """Fast trials end within seconds of each other on different workers, where Ray's driver merged lines that
    differ only in their numbers ("[repeated 2x across cluster]") and most trials had no line."""
    n = 8
    path = write_study(tmp_path, study_name, pg_url, budget={"epochs": 1}, study={"artifact_dir": str(tmp_path)})
    proc = start_on_ray(path, cluster.address, tiny_cifar, tmp_path, "--n-trials", str(n))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    done = [t.number for t in check_trials(pg_url, study_name) if t.state in DONE]
    assert len(done) >= n
    assert [t for t in done if not re.search(rf"\btrial {t}\b[^|]*\b(complete|pruned)\b", out)] == [], out
    assert "\x1b[" not in out  # piped to a file: no terminal colour codes around Ray's "(hpo-worker-0 pid=...)"
