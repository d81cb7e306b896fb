"""Ctrl-C and SIGTERM between storage calls, never inside one.

An interrupt raised inside a database call breaks the session it interrupts (an AssertionError inside
SQLAlchemy's commit), and the trial it was recording could not be recorded as interrupted. So a worker's
interrupt is held while a storage call runs and raised as the call ends; during training it is raised at once.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from hpo.errors import Interrupted

REDELIVER_S = 0.05  # an interrupt lost inside a finalizer is signalled again after this (_deliver_again)


class _HeldInterrupt(threading.local):
    depth = 0  # storage calls in progress on this thread
    pending: BaseException | None = None  # the interrupt that arrived during one


_held = _HeldInterrupt()
# The Ctrl-C / SIGTERM received: from then on no storage call waits for a lost database, so the worker exits
# at once (test_ctrl_c_while_the_database_is_gone_exits_at_once).
_received: Interrupted | None = None


def interrupt_received() -> Interrupted | None:
    """The interrupt that arrived inside `interrupts_between_storage_calls`, if one did."""
    return _received


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold an interrupt that arrives inside this block (nested blocks: the outermost) and raise it as it ends."""
    _held.depth += 1
    try:
        yield
    finally:
        _held.depth -= 1
        if _held.depth == 0 and _held.pending is not None:
            pending, _held.pending = _held.pending, None
            raise pending


@contextmanager
def interrupts_between_storage_calls(*signals: int) -> Iterator[None]:
    """Raise KeyboardInterrupt (an `Interrupted`) for SIGINT and `signals` (e.g. SIGTERM) on the main thread,
    but inside `interrupts_held` blocks only as the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        global _received
        interrupt = _received = Interrupted(signum)
        if not _held.depth:
            raise interrupt
        _held.pending = _held.pending or interrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, *signals)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, functools.partial(_deliver_again, sys.unraisablehook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _held.pending = None
        global _received
        _received = None


def _deliver_again(previous_hook: Callable[[Any], None], unraisable: Any) -> None:
    """Python only prints an exception raised inside a finalizer or weakref callback, so an interrupt that
    landed in one was lost (a Ray worker cancelled on Ctrl-C ran on while the driver waited for it:
    test_an_interrupt_that_lands_in_a_finalizer_is_not_lost). Signal it again a moment later from another
    thread: raised from here, it would be handled inside this hook and ignored too."""
    if isinstance(unraisable.exc_value, Interrupted):
        resend = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), unraisable.exc_value.signum))
        resend.daemon = True
        resend.start()
    else:
        previous_hook(unraisable)
