"""Local worker processes: one per device slot (`hpo study join --devices 0,1 --trials-per-device 2`, or
`hpo study start --workers K` on one device), started with spawn, stopped cleanly on Ctrl-C.

A child reports expected errors as one line (like hpo.cli.main) and exits 1; 130 when interrupted, 143
when terminated.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from cifarnet.errors import CifarNetError
from cifarnet.train import resolve_device
from hpo.errors import HPOError, WorkerInterrupted

FORWARD_INTERRUPT_S = 2.0  # a terminal's Ctrl-C reaches every child; after this, the ones still alive get it
CHILD_STOP_S = 30.0  # an interrupted child records its trial as failed within this, else it is terminated
UNRECORDED_EXIT = 3  # an interrupted child whose trial could not be recorded as interrupted (database gone)


def device_slots(devices: str, per_device: int = 1) -> tuple[str, ...]:
    """`"0,1"` and 2 -> ("cuda:0", "cuda:0", "cuda:1", "cuda:1"); names: cpu, auto, cuda, cuda:N or N.
    Raises HPOError for a device this machine does not have."""
    if per_device < 1:
        raise HPOError(f"--trials-per-device must be >= 1, got {per_device}")
    names = [name.strip() for name in devices.split(",") if name.strip()]
    if not names:
        raise HPOError(f"--devices {devices!r} names no device (e.g. cpu, or 0,1 for two GPUs)")
    slots: list[str] = []
    for name in names:
        device = f"cuda:{name}" if name.isdigit() else name
        check_device(device, shown=name)
        slots += [device] * per_device
    return tuple(slots)


def check_device(device: str, shown: str | None = None) -> None:
    shown = shown or device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HPOError(f"device {shown}: CUDA is not available on this machine (use cpu)")
    try:
        resolved = resolve_device(device)
    except CifarNetError:
        raise HPOError(f"unknown device {shown!r} (use cpu, auto, cuda, cuda:N or a GPU index N)") from None
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise HPOError(f"device {shown}: this machine has {torch.cuda.device_count()} GPU(s) "
                       f"(indices 0..{torch.cuda.device_count() - 1})")


def run_processes(target: Callable[..., Any], jobs: list[tuple]) -> None:
    """Run `target(*job)` in one spawned process per job; raise HPOError naming the ones that failed.

    spawn, not fork: torch's thread pools and open database connections do not survive a fork.
    """
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()  # set on Ctrl-C: a child still starting up then stops as soon as it can
    procs = [ctx.Process(target=_child, args=(target, job, i, stop), name=f"hpo-worker-{i}")
             for i, job in enumerate(jobs)]
    try:
        with _children_ignore_sigint():
            for p in procs:
                p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt as e:
        stop.set()
        signum = getattr(e, "signum", signal.SIGINT)
        _interrupt(procs, signum)
        raise WorkerInterrupted(signum, recorded=all(p.exitcode != UNRECORDED_EXIT for p in procs)) from None
    failed = [_describe_exit(p) for p in procs if p.exitcode]
    if failed:
        raise HPOError(f"worker(s) stopped early: {', '.join(failed)}. Trials they left running are failed by "
                       "their stale heartbeat and re-run by the other workers")


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes spawned inside start with SIGINT ignored (SIG_IGN is inherited), so a terminal's Ctrl-C that
    reaches one while it imports torch is not a traceback from inside an import
    (tests/hpo/test_worker_loop.py::test_ctrl_c_while_the_worker_processes_start_prints_no_traceback); `_child`
    handles it again, and stops at once if this process was interrupted meanwhile. A Ctrl-C during the few
    milliseconds of the starts waits for this process (blocked: pending) unless another of its threads took it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _child(target: Callable[..., Any], job: tuple, index: int, stop: Any) -> None:
    # The child's version of hpo.cli.main's error handling: one line, never a traceback for expected errors.
    try:
        # Ignored while this process started, and blocked too where the spawn kept the parent's mask (seen).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        _stop_with_parent()
        if stop.is_set():  # the Ctrl-C came while it started, or before the parent forwarded it
            raise KeyboardInterrupt
        target(*job)
    except CifarNetError as e:
        print(f"error: worker {index}: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # hpo.errors.Interrupted for SIGTERM too
        unrecorded = isinstance(e, WorkerInterrupted) and not e.recorded
        sys.exit(UNRECORDED_EXIT if unrecorded else getattr(e, "exit_code", 130))
    except Exception as e:
        if os.environ.get("HPO_DEBUG"):
            raise
        print(f"error: worker {index}: unexpected {type(e).__name__}: {e} (set HPO_DEBUG=1 for the traceback)",
              file=sys.stderr)
        sys.exit(1)


def _stop_with_parent() -> None:
    """SIGTERM this child when its parent dies unannounced (kill -9, the OOM killer): it records its trial as
    interrupted and exits, instead of running the rest of the budget unseen
    (tests/hpo/test_worker_loop.py::test_workers_stop_when_their_parent_is_killed)."""
    parent = multiprocessing.parent_process()

    def watch() -> None:
        parent.join()  # returns once the parent is gone
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="hpo-parent-watch", daemon=True).start()


def _interrupt(procs: list[multiprocessing.Process], signum: int) -> None:
    """Ctrl-C in a terminal reaches the whole process group; `kill -INT` or `kill -TERM` the parent alone. Give
    the children time to stop on their own, then forward the signal once (a second one could cut short the
    write that records their trial as failed), then terminate what is left."""
    procs = [p for p in procs if p.pid is not None]  # the started ones: an interrupt can cut the starts short
    deadline = time.monotonic() + FORWARD_INTERRUPT_S
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signum)
    for p in procs:
        p.join(timeout=CHILD_STOP_S)
        if p.is_alive():
            p.terminate()
            p.join()


def _describe_exit(p: multiprocessing.Process) -> str:
    code = p.exitcode
    if code is not None and code < 0:
        return f"{p.name} killed by {signal.Signals(-code).name}"
    if code == UNRECORDED_EXIT:
        return f"{p.name} interrupted (its trial not recorded: the next run re-runs it)"
    return f"{p.name} interrupted" if code in (130, 143) else f"{p.name} (exit code {code})"
