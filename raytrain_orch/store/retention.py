"""Which runs ``rto gc`` collects: a decision over the run records, with no I/O.

Only finished runs are candidates. Each selector the user gives keeps some of them, and a
candidate that no selector keeps is collected:

- ``keep_last=N``: the N newest finished runs of each pipeline;
- ``older_than_days=D``: every run that ended less than D days ago (only older ones go);
- ``keep_best=METRIC``: each pipeline's best finished run by a step metric (``BestMetric``).

Whatever the selectors say, a run that has not finished (running, waiting, or interrupted and
resumable) is never collected, nor one the caller protects (pinned, its model registered).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.store.state import RunState

DAY_S = 86_400.0
#: What a user writes to ask for the lowest value instead of the highest.
MODES = ("max", "min")


@dataclass(frozen=True)
class BestMetric:
    """``[min:|max:][STEP.]METRIC``: a step metric and which end of it is best (higher unless
    ``min:``). Without ``STEP.``, the metric of the last step (in the pipeline's order) that has it."""

    metric: str
    step: str | None = None
    mode: Literal["max", "min"] = "max"

    @classmethod
    def parse(cls, text: str) -> "BestMetric":
        mode, _, rest = text.rpartition(":")
        if mode not in ("", *MODES) or not rest:
            raise ConfigError(
                f"--keep-best {text!r}: write METRIC, STEP.METRIC, or min:METRIC for a metric where lower is better "
                "(e.g. test_accuracy, evaluate.test_accuracy, min:train.val_loss)"
            )
        best: Literal["max", "min"] = "min" if mode == "min" else "max"
        step, dot, metric = rest.partition(".")
        return cls(metric=metric, step=step, mode=best) if dot and step and metric else cls(metric=rest, mode=best)

    def __str__(self) -> str:
        return f"{self.mode}:{self.step + '.' if self.step else ''}{self.metric}"

    def value(self, state: RunState) -> float | None:
        """The run's value of the metric: ``STEP.METRIC`` when STEP is one of its steps (else the
        whole text is a metric's name, dots and all), or the last step's that reports it."""
        if self.step is not None and self.step in state.steps:
            return state.steps[self.step].metrics.get(self.metric)
        name = f"{self.step}.{self.metric}" if self.step is not None else self.metric
        values = [s.metrics[name] for s in state.steps.values() if name in s.metrics]
        return values[-1] if values else None


@dataclass(frozen=True)
class RetentionRule:
    """The selectors of ``rto gc``; at least one is required, so nothing is collected by accident."""

    keep_last: int | None = None
    older_than_days: float | None = None
    keep_best: BestMetric | None = None

    def __post_init__(self) -> None:
        if self.keep_last is None and self.older_than_days is None and self.keep_best is None:
            raise ConfigError(
                "say what to keep: --keep-last N, --older-than DAYS or --keep-best METRIC (add --dry-run to see what "
                "would go first)"
            )
        if self.keep_last is not None and self.keep_last < 0:
            raise ConfigError(f"--keep-last {self.keep_last}: give a number of runs, 0 or more")
        if self.older_than_days is not None and self.older_than_days < 0:
            raise ConfigError(f"--older-than {self.older_than_days}: give a number of days, 0 or more")


@dataclass(frozen=True)
class RetentionDecision:
    """The runs to collect (newest first) and, for each run kept, why."""

    collect: tuple[str, ...]
    kept: Mapping[str, str]


def decide(
    runs: Sequence[RunState], rule: RetentionRule, now: float, protected: Mapping[str, str] | None = None
) -> RetentionDecision:
    """Which of ``runs`` to collect under ``rule`` at time ``now``; ``protected``: run ids the
    caller keeps whatever the rule says, each with why (pinned, a registered model)."""
    protected = protected or {}
    kept: dict[str, str] = {}
    finished = sorted((r for r in runs if r.status.terminal), key=lambda r: r.created_at, reverse=True)
    for run in runs:
        if not run.status.terminal:
            kept[run.run_id] = f"not finished ({run.status.value})"
        elif run.run_id in protected:
            kept[run.run_id] = protected[run.run_id]
    for run_id, why in _selected(finished, rule, now).items():
        kept.setdefault(run_id, why)
    collect = tuple(r.run_id for r in finished if r.run_id not in kept)
    return RetentionDecision(collect=collect, kept=kept)


def _selected(finished: Sequence[RunState], rule: RetentionRule, now: float) -> dict[str, str]:
    """The finished runs (newest first) that the rule's selectors keep, with why."""
    kept: dict[str, str] = {}
    by_pipeline: dict[str, list[RunState]] = defaultdict(list)
    for run in finished:
        by_pipeline[run.pipeline].append(run)
    if rule.keep_last is not None:
        for pipeline, newest_first in by_pipeline.items():
            for run in newest_first[: rule.keep_last]:
                kept.setdefault(run.run_id, f"one of the {rule.keep_last} newest of {pipeline}")
    if rule.older_than_days is not None:
        for run in finished:
            ended = run.ended_at if run.ended_at is not None else run.created_at
            if now - ended <= rule.older_than_days * DAY_S:
                kept.setdefault(run.run_id, f"ended less than {rule.older_than_days:g} days ago")
    if rule.keep_best is not None:
        for pipeline, newest_first in by_pipeline.items():
            best = _best(newest_first, rule.keep_best)
            if best is not None:
                kept.setdefault(best.run_id, f"the best of {pipeline} by {rule.keep_best}")
    return kept


def _best(runs: Sequence[RunState], metric: BestMetric) -> RunState | None:
    """The run with the best value of ``metric`` (the newest of equals); None when none has it."""
    scored = [(value, run) for run in runs if (value := metric.value(run)) is not None]
    if not scored:
        return None
    pick = max if metric.mode == "max" else min
    return pick(scored, key=lambda pair: pair[0])[1]  # max/min keep the first of equals: the newest
