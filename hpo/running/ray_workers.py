"""Workers on a Ray cluster: `hpo study start STUDY.toml --ray ADDRESS` and `hpo study join STUDY.toml --ray ADDRESS`.

Ray places the work; the study's storage (PostgreSQL, or the gRPC proxy) stays the only source of truth:
- One Ray task per worker slot, each running hpo.running.worker.run_worker: the same trial loop as a local worker, on
  the same storage. A task asks for `cpus_per_worker` CPUs (its torch threads) and, on a cluster with GPUs,
  1/`trials_per_gpu` of a GPU, so Ray packs several small trials onto one GPU and sets each task's
  CUDA_VISIBLE_DEVICES; the SPREAD strategy puts the tasks on as many nodes as it can. Every trial records
  where it ran (user_attr "placement": node, host, node address, the GPU ids Ray assigned and
  CUDA_VISIBLE_DEVICES).
- A node that dies takes its tasks with it: Ray runs each again elsewhere (max_retries), and the new task
  rejoins the run under the budget stored on the study. The trial the dead task was running keeps a stale
  heartbeat; the next worker that looks fails it and runs the re-queued copy, which continues from the dead
  attempt's last checkpoint (hpo.running.checkpoints) in the study's artifact store, a folder every node must see
  at the same path.
- Progress lines: each worker prints its one line per trial; Ray forwards workers' output to the driver, every
  line (its log deduplication is off unless RAY_DEDUP_LOGS is set), without colour codes when piped to a file.
- Ctrl-C: every task is cancelled (a KeyboardInterrupt inside it, so its running trial is recorded as
  interrupted and queued again), the driver waits for them to stop and exits 130; `hpo study start` resumes.

`address`: "auto" (RAY_ADDRESS, else the cluster `ray start` made on this machine), "local" (a one-machine
cluster started for this run and stopped after it), or a cluster's HOST:PORT (ray://HOST:10001 for Ray Client).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from hpo.errors import HPOError, first_line
from hpo.results.records import StudyStatus, study_status
from hpo.definition.study_file import StudySpec, check_size_budget
from hpo.running.worker import WorkerOptions, begin_run, run_worker

RAY_EXTRA_HINT = "pip install -e '.[ray]'"
# Runs of one worker task after its node died. A worker keeps no state of its own (the storage has it all),
# so running it again is always safe; the bound only stops a task that kills every node it lands on.
TASK_RETRIES = 5
STOP_WAIT_S = 60.0  # after Ctrl-C: how long the cancelled workers get to record their trials as interrupted
CONNECT_TIMEOUT_S = 10.0  # an unreachable cluster address fails after this
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # "local": workers pass nothing big through Ray (Ray's default: 30% of RAM)


@dataclass(frozen=True)
class RayOptions:
    address: str = "auto"  # see the module doc
    workers: int | None = None  # Ray tasks; None = one per slot of the cluster (see `slots`)
    trials_per_gpu: int = 1  # each worker asks Ray for 1/trials_per_gpu of a GPU (clusters with GPUs)
    cpus_per_worker: int = 1  # Ray CPUs per worker = its torch threads


def start_study_on_ray(spec: StudySpec, opts: WorkerOptions, ray_opts: RayOptions) -> StudyStatus:
    """`hpo study start --ray`: create or resume the study, then run its workers on the Ray cluster."""
    check_size_budget(spec)  # before Ray starts: a refused file costs no cluster
    ray = _connect(ray_opts.address)
    try:
        begin_run(spec)
        run_on_ray(ray, spec, opts, ray_opts, seeded=True)
    finally:
        ray.shutdown()
    return study_status(spec.storage, spec.name)


def join_study_on_ray(spec: StudySpec, opts: WorkerOptions, ray_opts: RayOptions) -> StudyStatus:
    """`hpo study join --ray`: add workers on a Ray cluster to a study started elsewhere."""
    ray = _connect(ray_opts.address)
    try:
        run_on_ray(ray, spec, opts, ray_opts, seeded=False)
    finally:
        ray.shutdown()
    return study_status(spec.storage, spec.name)


def run_on_ray(ray: ModuleType, spec: StudySpec, opts: WorkerOptions, ray_opts: RayOptions, seeded: bool) -> None:
    """One Ray task per slot until the run's budget is spent; raise HPOError naming the workers that failed."""
    if ray_opts.trials_per_gpu < 1 or ray_opts.cpus_per_worker < 1 or (ray_opts.workers or 1) < 1:
        raise HPOError("--workers, --trials-per-device and --threads must be >= 1 on Ray")
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    n = ray_opts.workers or slots(resources, ray_opts)
    if n < 1:
        raise HPOError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs: too few for one worker of "
                       f"{ray_opts.cpus_per_worker} CPUs (--threads)")
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    print(f"Ray cluster: {len(nodes)} node(s), {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs; starting {n} "
          f"worker(s) of {ray_opts.cpus_per_worker} CPU(s)"
          + (f" and 1/{ray_opts.trials_per_gpu} GPU" if gpus else "") + " each", file=opts.out or sys.stdout, flush=True)
    task = ray.remote(run_slot)
    worker_opts = dataclasses.replace(opts, threads=ray_opts.cpus_per_worker, workers=1, devices=(), out=None)
    refs = [task.options(name=f"hpo-worker-{i}", num_cpus=ray_opts.cpus_per_worker,
                         num_gpus=1 / ray_opts.trials_per_gpu if gpus else 0, max_retries=TASK_RETRIES,
                         scheduling_strategy="SPREAD").remote(spec, worker_opts, i if seeded else None)
            for i in range(n)]
    names = {ref: f"hpo-worker-{i}" for i, ref in enumerate(refs)}
    try:
        failed = _wait_all(ray, refs, names)
    except KeyboardInterrupt:
        _cancel(ray, refs)
        raise
    if failed:
        raise HPOError(f"worker(s) stopped early: {'; '.join(failed)}. Trials they left running are failed by "
                       "their stale heartbeat and re-run by the other workers")


def slots(resources: dict[str, float], ray_opts: RayOptions) -> int:
    """Workers that fill the cluster: trials_per_gpu per GPU (as far as the CPUs go), or one per
    cpus_per_worker CPUs on a cluster without GPUs. A worker beyond that would only wait for a free slot."""
    cpu_slots = int(resources.get("CPU", 0.0) // ray_opts.cpus_per_worker)
    gpus = resources.get("GPU", 0.0)
    return min(cpu_slots, int(gpus * ray_opts.trials_per_gpu + 1e-9)) if gpus else cpu_slots


def run_slot(spec: StudySpec, opts: WorkerOptions, seed_offset: int | None) -> int:
    """Body of one Ray task: record where Ray put it, pick the device it was given, run the worker loop."""
    import ray
    import torch

    from hpo.running import objective

    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    objective.PLACEMENT.clear()
    objective.PLACEMENT.update(node_id=ray.get_runtime_context().get_node_id(), host=socket.gethostname(),
                               node_ip=ray.util.get_node_ip_address(), gpu_ids=gpu_ids,
                               cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    device = opts.device
    if device == "auto":  # the GPU Ray assigned is the only one visible: "cuda" is that one
        device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    return run_worker(spec, dataclasses.replace(opts, device=device), seed_offset)


def _wait_all(ray: ModuleType, refs: list, names: dict) -> list[str]:
    """Wait for every task; the ones that failed, described in one line each."""
    failed, pending = [], list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done[0])
        except ray.exceptions.RayTaskError as e:  # the worker raised: its own message (HPOError, ...)
            cause = e.cause if isinstance(e.cause, BaseException) else e
            failed.append(f"{names[done[0]]}: {type(cause).__name__}: {first_line(cause)}")
        except ray.exceptions.RayError as e:  # lost more often than TASK_RETRIES, or cancelled
            failed.append(f"{names[done[0]]}: {type(e).__name__}: {first_line(e)}")
    return failed


def _cancel(ray: ModuleType, refs: list) -> None:
    """Ctrl-C: a KeyboardInterrupt in every worker (each records its trial as interrupted and re-queues it)."""
    for ref in refs:
        ray.cancel(ref)
    ray.wait(refs, num_returns=len(refs), timeout=STOP_WAIT_S)


def _connect(address: str) -> ModuleType:
    ray = import_ray()
    print(f"connecting to the Ray cluster ({address}) ...", file=sys.stderr, flush=True)
    _check_reachable(ray, address)
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": True, "configure_logging": False}
    if address == "local":
        kwargs.update(object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise HPOError(f"cannot connect to the Ray cluster at {address!r}: {first_line(e)} (start one with "
                       f"`ray start --head`, or pass --ray local for a cluster on this machine only)") from None
    return ray


def _check_reachable(ray: ModuleType, address: str) -> None:
    """Fail in seconds when nothing listens at HOST:PORT: ray.init would retry for minutes, silently.
    Like Ray, read localhost as this machine's node address (the one `ray start` listens on)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise HPOError(f"--ray {address!r}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    if host in ("localhost", "127.0.0.1", "::1"):
        host = ray.util.get_node_ip_address()
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise HPOError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e} (is `ray start --head` "
                       f"running there? `ray status` on a node prints the address)") from None


def import_ray() -> ModuleType:
    # Ray's driver merges output lines that differ only in their numbers ("[repeated 2x across cluster]"),
    # which swallowed most trials' progress lines; read when ray is imported. A user's own setting wins.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not sys.stdout.isatty():  # Ray colours each forwarded line's prefix, a terminal's escape codes in a log file
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        import ray
    except ImportError:
        raise HPOError(f"--ray needs Ray, which is not installed: {RAY_EXTRA_HINT}") from None
    return ray
