"""Decide, then act: what to do about a failed step attempt.

Pure. The backend describes a failure as plain data (``Failure``); ``decide`` returns a
``Decision``; the runner acts on it. User-code errors fail at once unless their type is listed
in the step's ``retries.on``; infrastructure faults (a worker, actor or node died, an object
was lost, a gang timed out) are retried up to ``retries.max`` times, with exponential backoff
and jitter. A gang that was never granted (infeasible, or over its admission timeout) is not
retried: the queue already waited as long as the user allowed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .config import RetryConfig

FailureKind = Literal["user", "infra", "resources"]


@dataclass(frozen=True)
class Failure:
    step: str
    attempt: int
    kind: FailureKind
    error_type: str
    message: str
    traceback: str = ""

    def summary(self) -> str:
        return f"{self.error_type}: {self.message}".strip()


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float = 0.0
    reason: str = ""


def decide(failure: Failure, retries: RetryConfig, rng: random.Random | None = None) -> Decision:
    """Retry ``failure`` or give up; ``attempt`` counts from 1."""
    if failure.kind == "resources":
        return Decision(False, reason="the step's gang was not granted (waiting longer cannot help; see the error)")
    if failure.attempt > retries.max:
        return Decision(False, reason=f"no retries left ({retries.max} allowed)")
    if failure.kind == "user" and failure.error_type not in retries.on:
        return Decision(False, reason="error raised by the step's own code (list its type in retries.on to retry it)")
    delay = retries.backoff_s * 2 ** (failure.attempt - 1)
    jitter = (rng or random).uniform(0.8, 1.2)
    return Decision(True, delay_s=delay * jitter, reason=f"{failure.kind} failure, retry {failure.attempt}/{retries.max}")
