"""The one retry helper: call again while an error says waiting will cure it, with growing pauses."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Pauses between tries: `first`, then doubling up to `longest`; give up after `tries` calls or once
    `window_s` seconds have passed (whichever is set), or at the first pause `keep_waiting()` refuses."""

    first: float
    longest: float
    tries: int | None = None
    window_s: float | None = None
    immediate_retry: bool = False  # one retry at once before the first pause (a connection dropped mid-call)

    def pauses(self) -> Iterator[float]:
        if self.immediate_retry:
            yield 0.0
        pause = self.first
        while True:
            yield pause
            pause = min(2 * pause, self.longest)


def retry(call: Callable[[], T], when: Callable[[BaseException], bool], backoff: Backoff, *,
          around: Callable[[], AbstractContextManager] = nullcontext,
          on_retry: Callable[[BaseException, float], None] | None = None,
          keep_waiting: Callable[[], bool] = lambda: True) -> T:
    """`call()`, tried again after each pause of `backoff` while it raises an error `when` accepts.
    Each try runs inside `around()` (e.g. interrupts held); the pauses run outside it, so Ctrl-C ends a wait
    at once. `on_retry(error, pause)` runs before each pause."""
    deadline = None if backoff.window_s is None else time.monotonic() + backoff.window_s
    pauses = backoff.pauses()
    tries = 0
    while True:
        tries += 1
        with around():
            try:
                return call()
            except Exception as e:
                pause = next(pauses)
                out_of_time = deadline is not None and time.monotonic() + pause > deadline
                out_of_tries = backoff.tries is not None and tries >= backoff.tries
                if not when(e) or out_of_time or out_of_tries or (pause and not keep_waiting()):
                    raise
                if on_retry is not None:
                    on_retry(e, pause)
        time.sleep(pause)
