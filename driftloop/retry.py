"""The project's one retry policy, on tenacity: exponential backoff with jitter, bounded, logged.

Why one module: every loop that retried by hand (ingest batch writes, the client logger's sender,
the model registry, the vLLM connector, the alert channels, topic creation) now states only *what*
is retried and *how often*; the schedule, the jitter, interruptible waits and the log line before
each sleep are the same everywhere. Bottom layer: imports nothing of driftloop.

Rules the callers follow: retries are never nested (where an operation that retries calls another
one that retries, only one of them does, and its docstring says which); a failure that is not an
exception (an HTTP 503 answer) is raised as :class:`Transient` inside the attempt.

::

    for attempt in retrying(what="POST /hook", attempts=4, initial_s=0.5, max_s=60,
                            retry_on=(requests.RequestException, Transient)):
        with attempt:
            post()
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import tenacity
from tenacity import RetryCallState

__all__ = ["Backoff", "RetryCallState", "Transient", "attempts_made", "retrying"]

log = logging.getLogger("driftloop.retry")

#: Default jitter: each delay is cut by up to 10 % at random, so clients that failed together do not
#: retry together; never longer than the schedule (so ``max_s`` is a true cap).
JITTER = 0.1


class Transient(Exception):
    """A failure worth retrying that is no exception of its own (e.g. ``HTTP 503: busy``)."""


class Backoff(tenacity.wait.wait_base):
    """``initial_s * 2**(n-1)`` before attempt ``n+1``, capped at ``max_s``, shortened by up to ``jitter``."""

    def __init__(self, initial_s: float, max_s: float, jitter: float = JITTER) -> None:
        if initial_s < 0 or max_s < initial_s:
            raise ValueError(f"backoff: need 0 <= initial_s <= max_s, got {initial_s} and {max_s}")
        if not 0 <= jitter < 1:
            raise ValueError(f"backoff: jitter is a share in [0, 1), got {jitter}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1, 2, ...)."""
        base = min(self.initial_s * 2.0 ** min(failures - 1, 64), self.max_s)
        return base * (1.0 - self.jitter * random.random())

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


def _reason(state: RetryCallState) -> str:
    exc = state.outcome.exception() if state.outcome is not None else None
    if exc is None:
        return "no result"
    text = (str(exc).splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retrying(
    *,
    what: str,
    initial_s: float,
    max_s: float,
    attempts: int | None = None,
    deadline_s: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    give_up_on: Callable[[BaseException], bool] | None = None,
    interrupt: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    stop_when: Callable[[RetryCallState], bool] | None = None,
    before_sleep: Callable[[RetryCallState], None] | None = None,
    logger: logging.Logger | None = None,
    level: int = logging.WARNING,
    jitter: float = JITTER,
) -> tenacity.Retrying:
    """The project policy for one operation, as a tenacity ``Retrying`` (call it, or iterate its attempts).

    ``attempts`` (including the first) and ``deadline_s`` (since the first attempt) bound the retries;
    with neither, it retries until it succeeds or ``stop_when``/``stop_event`` says stop. Exceptions of
    ``retry_on`` are retried unless ``give_up_on(exc)`` is true; any other exception propagates at once.
    ``stop_when(state)``, asked after each failure, ends the retries early (e.g. on shutdown). When it stops,
    the last exception is raised as it was (not wrapped in tenacity's RetryError). ``interrupt`` makes the
    waits interruptible: while it is set, a wait ends at once and the next attempt starts; ``sleep`` replaces
    the wait altogether (e.g. one that is also cut short by a shutdown deadline).
    Before each wait, ``what`` failed is logged on ``logger`` (default ``driftloop.retry``) at ``level``,
    then ``before_sleep`` runs (metrics, events).
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"{what}: attempts must be >= 1, got {attempts}")
    stop: tenacity.stop.stop_base = tenacity.stop_never
    if attempts is not None:
        stop = stop | tenacity.stop_after_attempt(attempts)
    if deadline_s is not None:
        stop = stop | tenacity.stop_after_delay(deadline_s)
    if stop_when is not None:
        stop = stop | _StopWhen(stop_when)
    retry: tenacity.retry_base = tenacity.retry_if_exception_type(retry_on)
    if give_up_on is not None:
        retry = retry & _RetryUnless(give_up_on)
    out = logger or log
    total = f"/{attempts}" if attempts is not None else ""

    def _before_sleep(state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        out.log(level, "%s failed (attempt %d%s), retrying in %.2fs: %s", what, state.attempt_number, total, wait,
                _reason(state))  # fmt: skip
        if before_sleep is not None:
            before_sleep(state)

    return tenacity.Retrying(
        stop=stop,
        wait=Backoff(initial_s, max_s, jitter),
        retry=retry,
        before_sleep=_before_sleep,
        sleep=sleep or (_interruptible(interrupt) if interrupt is not None else tenacity.nap.sleep),
        reraise=True,
    )


def _interruptible(event: threading.Event) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        event.wait(seconds)

    return sleep


def attempts_made(r: tenacity.Retrying) -> int:
    """How many attempts the last run of ``r`` made (for messages such as "failed after 3 attempt(s)")."""
    return int(r.statistics.get("attempt_number", 0))


class _StopWhen(tenacity.stop.stop_base):
    def __init__(self, fn: Callable[[RetryCallState], bool]) -> None:
        self.fn = fn

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.fn(retry_state)


class _RetryUnless(tenacity.retry_base):
    def __init__(self, give_up_on: Callable[[BaseException], bool]) -> None:
        self.give_up_on = give_up_on

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        return exc is None or not self.give_up_on(exc)
