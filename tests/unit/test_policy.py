"""``policy.decide``: which failed attempts are retried, and after how long."""

from __future__ import annotations

import random

import pytest

from raytrain_orch.core.policy import Failure, decide
from raytrain_orch.core.step_config import RetryConfig


def failure(kind: str, attempt: int, error_type: str = "ValueError") -> Failure:
    return Failure(step="train", attempt=attempt, kind=kind, error_type=error_type, message="boom")


def test_user_error_is_not_retried_by_default():
    decision = decide(failure("user", 1), RetryConfig(max=3), random.Random(0))

    assert decision.retry is False
    assert decision.delay_s == 0.0
    assert "list its type in retries.on to retry it" in decision.reason


def test_user_error_of_another_type_than_listed_is_not_retried():
    decision = decide(failure("user", 1, "KeyError"), RetryConfig(max=3, on=("ValueError",)), random.Random(0))

    assert decision.retry is False


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_user_error_listed_in_retries_on_is_retried_with_doubling_backoff(attempt):
    retries = RetryConfig(max=3, backoff_s=2.0, on=("ValueError",))

    decision = decide(failure("user", attempt), retries, random.Random(0))

    base = 2.0 * 2 ** (attempt - 1)
    assert decision.retry is True
    assert 0.8 * base <= decision.delay_s <= 1.2 * base
    assert decision.reason == f"user failure, retry {attempt}/3"


def test_backoff_doubles_per_attempt_with_the_same_jitter():
    retries = RetryConfig(max=4, backoff_s=0.5)

    delays = [decide(failure("infra", a), retries, random.Random(0)).delay_s for a in (1, 2, 3, 4)]

    assert delays[1:] == pytest.approx([2 * d for d in delays[:-1]])


def test_jitter_spreads_delays_within_bounds():
    rng = random.Random(0)
    retries = RetryConfig(max=1, backoff_s=10.0)

    delays = [decide(failure("infra", 1), retries, rng).delay_s for _ in range(200)]

    assert min(delays) >= 8.0 and max(delays) <= 12.0
    assert len(set(delays)) > 1  # jittered, so parallel retries do not all fire at once


def test_infra_failure_is_retried_until_attempt_exceeds_max():
    retries = RetryConfig(max=2)

    decisions = [decide(failure("infra", a, "ActorDiedError"), retries, random.Random(0)) for a in (1, 2, 3)]

    assert [d.retry for d in decisions] == [True, True, False]
    assert decisions[2].reason == "no retries left (2 allowed)"


@pytest.mark.parametrize(("kind", "error_type"), [("infra", "ActorDiedError"), ("user", "ValueError")])
def test_max_zero_never_retries(kind, error_type):
    retries = RetryConfig(max=0, on=("ValueError",))

    decision = decide(failure(kind, 1, error_type), retries, random.Random(0))

    assert decision.retry is False
    assert decision.reason == "no retries left (0 allowed)"


def test_zero_backoff_retries_at_once():
    decision = decide(failure("infra", 2), RetryConfig(max=2, backoff_s=0.0), random.Random(0))

    assert decision.retry is True
    assert decision.delay_s == 0.0


def test_failure_summary_is_type_and_message():
    assert failure("user", 1).summary() == "ValueError: boom"
