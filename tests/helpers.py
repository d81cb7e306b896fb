"""What many test files share: the installed `hpo` as a process (HPO, ENV, hpo_run, hpo_popen) and in this
process (run_cli), polling a running process (wait_for), one storage per URL (storage_for, trials_of,
worker_pid). The fixtures (tiny_cifar, storage_url, pg_url, ...) are in tests/conftest.py.

run_cli is for what a test checks of the command itself: argument parsing, validation, the one error line,
the printed record. A real process stays where the process is the point: signals (Ctrl-C, SIGTERM, kill),
spawned workers, what start-up imports (`hpo --help` without torch) and an exit that only a process shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import optuna
from optuna.trial import TrialState

from hpo.storage import open_storage

HPO = str(Path(sys.executable).parent / "hpo")
# One torch thread in every `hpo` process (the 2 shared cores are only oversubscribed by more); unbuffered,
# so a test reading a process's lines sees each as it is printed.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DONE = (TrialState.COMPLETE, TrialState.PRUNED)

# One storage (one connection pool) per URL for the whole session: PostgreSQL's connections are shared with
# every other test run on the server.
storage_for = functools.cache(open_storage)


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or [] while it is not created yet."""
    try:
        return optuna.load_study(study_name=name, storage=storage_for(url)).trials
    except KeyError:
        return []


def worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    """The process id of the worker that ran `trial` (its "worker" user_attr is HOST:PID)."""
    return int(trial.user_attrs["worker"].rsplit(":", 1)[1])


# ---- the installed command as a process ----

def hpo_popen(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    """`hpo ARGS` running, its stdout and stderr as text pipes."""
    kwargs.setdefault("env", ENV)
    return subprocess.Popen([HPO, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def hpo_run(*args: str, cwd: Path | None = None, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """`hpo ARGS` run to its end in a process of its own."""
    kwargs.setdefault("env", ENV)
    return subprocess.run([HPO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_for(condition, proc: subprocess.Popen | None, what: str, timeout_s: float = 90):
    """Poll until `condition()` is truthy (and return it) while `proc` (if any) still runs; on timeout the
    process is killed and the test fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, f"hpo ended before {what}: {proc.communicate()}"
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    if proc is not None:
        proc.kill()
    raise AssertionError(f"not within {timeout_s} s: {what}")


# ---- the command in this process ----

@dataclasses.dataclass
class CliResult:
    """What a finished `hpo` process leaves, as subprocess.CompletedProcess names it."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def _as_a_new_process_warns() -> None:
    """Warnings filtered as Python's defaults do and printed to sys.stderr (pytest would record them instead)."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """`hpo ARGS` through its console entry point (hpo.cli.main) in this process: exit code, stdout and stderr as
    the process would give them, without its start-up (typer, then torch: seconds on 2 busy cores).

    What a real process would print on stderr besides the command's own lines is caught too: warnings (Python's
    default filters), log records of WARNING and above (what logging's last-resort handler prints), optuna's
    own log (its handler, at optuna's default INFO). sys.argv is the process's (runs record their command line).
    The SIGINT and SIGTERM handlers main() sets are restored.
    """
    from hpo.cli import main

    out, err = io.StringIO(), io.StringIO()
    last_resort = logging.StreamHandler(err)
    last_resort.setLevel(logging.WARNING)
    verbosity = optuna.logging.get_verbosity()  # before the redirect: optuna's handler, were it new, on real stderr
    with contextlib.ExitStack() as restore:
        if cwd is not None:
            restore.enter_context(contextlib.chdir(cwd))
        restore.enter_context(mock.patch.object(sys, "argv", [HPO, *args]))
        restore.enter_context(warnings.catch_warnings())
        restore.enter_context(contextlib.redirect_stdout(out))
        restore.enter_context(contextlib.redirect_stderr(err))
        _as_a_new_process_warns()
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore.callback(signal.signal, sig, signal.getsignal(sig))
        restore.callback(optuna.logging.set_verbosity, verbosity)
        for handler in logging.getLogger("optuna").handlers:
            if type(handler) is logging.StreamHandler:
                restore.callback(handler.setStream, handler.setStream(err))
        optuna.logging.set_verbosity(optuna.logging.INFO)
        logging.getLogger().addHandler(last_resort)
        restore.callback(logging.getLogger().removeHandler, last_resort)
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if isinstance(e.code, str):
                err.write(e.code + "\n")
    return CliResult(list(args), code, out.getvalue(), err.getvalue())


def one_error_line(r: CliResult | subprocess.CompletedProcess, code: int = 1) -> str:
    """The one `error: ...` line a failed command prints (no traceback), its exit code `code`; returns it."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr
