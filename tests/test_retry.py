"""driftloop.retry: the one retry policy (unit tests, no services)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from driftloop.retry import Backoff, RetryCallState, Transient, attempts_made, retrying


class Flaky:
    """Raises the given exceptions in turn, then returns ``"done"``; counts calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    exact = Backoff(0.5, 4.0, jitter=0)
    assert [exact.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert exact.delay(10_000) == 4.0  # no overflow on long outages
    jittered = Backoff(0.5, 4.0)
    for n in range(1, 7):
        for _ in range(50):
            assert 0.9 * exact.delay(n) <= jittered.delay(n) <= exact.delay(n)
    assert Backoff(0, 0).delay(3) == 0
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(2, 1)


def test_retries_until_success_and_logs_before_each_wait(caplog: pytest.LogCaptureFixture) -> None:
    fn = Flaky(OSError("refused"), OSError("refused again"))
    seen: list[int] = []

    def note(state: RetryCallState) -> None:
        seen.append(state.attempt_number)

    policy = retrying(what="POST /hook", attempts=5, initial_s=0, max_s=0, retry_on=OSError, before_sleep=note)
    with caplog.at_level(logging.WARNING, logger="driftloop.retry"):
        assert policy(fn) == "done"
    assert fn.calls == 3 and attempts_made(policy) == 3 and seen == [1, 2]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "POST /hook failed (attempt 1/5), retrying in 0.00s: OSError: refused", msgs


def test_gives_up_after_attempts_with_the_last_exception_unwrapped() -> None:
    fn = Flaky(*[Transient(f"HTTP 503: busy {i}") for i in range(10)])
    policy = retrying(what="GET", attempts=3, initial_s=0, max_s=0, retry_on=Transient)
    with pytest.raises(Transient, match="busy 2"):
        policy(fn)
    assert fn.calls == 3 and attempts_made(policy) == 3


def test_other_exceptions_and_give_up_on_fail_at_once() -> None:
    fn = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        retrying(what="x", attempts=5, initial_s=0, max_s=0, retry_on=OSError)(fn)
    assert fn.calls == 1
    refused = Flaky(Transient("HTTP 401"), Transient("HTTP 503"))
    policy = retrying(what="x", attempts=5, initial_s=0, max_s=0, retry_on=Transient,
                      give_up_on=lambda e: "401" in str(e))  # fmt: skip
    with pytest.raises(Transient, match="401"):
        policy(refused)
    assert refused.calls == 1 and attempts_made(policy) == 1


def test_stop_when_ends_an_unbounded_policy() -> None:
    fn = Flaky(*[OSError("down")] * 100)
    policy = retrying(what="x", initial_s=0, max_s=0, retry_on=OSError, stop_when=lambda st: st.attempt_number >= 4)
    with pytest.raises(OSError, match="down"):
        policy(fn)
    assert fn.calls == 4


def test_a_set_interrupt_cuts_every_wait_short() -> None:
    # an hour between attempts: only an interruptible wait lets this finish
    stop = threading.Event()
    stop.set()
    fn = Flaky(OSError("a"), OSError("b"))
    assert retrying(what="x", attempts=3, initial_s=3600, max_s=3600, retry_on=OSError, interrupt=stop)(fn) == "done"
    assert fn.calls == 3


def test_the_sleep_gets_the_schedule() -> None:
    waits: list[float] = []
    fn = Flaky(OSError(), OSError(), OSError())
    retrying(what="x", attempts=4, initial_s=1, max_s=3, jitter=0, retry_on=OSError, sleep=waits.append)(fn)
    assert waits == [1.0, 2.0, 3.0]


def test_iterating_the_attempts_works_like_calling() -> None:
    fn = Flaky(OSError())
    policy = retrying(what="x", attempts=2, initial_s=0, max_s=0, retry_on=OSError)
    for attempt in policy:
        with attempt:
            fn()
    assert fn.calls == 2
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        retrying(what="x", attempts=0, initial_s=0, max_s=0)


def test_the_removed_whole_promotion_retry_setting_is_refused_with_the_reason(tmp_path: Path) -> None:
    from driftloop.settings import ConfigError, load_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("retrain:\n  promotion_retries: 3\n")
    with pytest.raises(ConfigError, match=r"retrain.promotion_retries: this setting was removed: .*one retry level"):
        load_settings(cfg)
