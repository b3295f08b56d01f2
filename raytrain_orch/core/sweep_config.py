"""A pipeline config's ``sweep``: one train step run as Ray Tune trials over a search space.

Pure: no Ray, no MLflow.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from raytrain_orch.core.validation import StrictModel

_SPACES = ("uniform", "loguniform", "randint", "choice", "grid")


class SearchDimension(StrictModel):
    """One swept param, written as one key: ``{loguniform: [1e-4, 1e-1]}``, ``{choice: [64, 128]}``.

    ``uniform``/``loguniform`` are floats in [low, high]; ``randint`` integers in [low, high);
    ``choice`` samples one of the values; ``grid`` runs every value (random searcher only).
    """

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchDimension":
        given = [k for k in _SPACES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_SPACES)}; got {given or 'none'}")
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("uniform", "loguniform", "randint"):
            low, high = value
            if not low < high:
                raise ValueError(f"{kind} needs [low, high] with low < high; got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise ValueError(
                    f"loguniform bounds must be > 0, got [{low}, {high}]; use uniform for a range that reaches 0 or "
                    "below"
                )
        elif not value:
            raise ValueError(f"{kind} needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _SPACES if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)


class SweepConfig(StrictModel):
    step: str = Field(..., description="The train step to sweep: each trial is a full DDP run of it.")
    metric: str = Field(..., description="The reported metric that ranks trials, e.g. val_accuracy.")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower metric is better.")
    num_samples: PositiveInt = Field(8, description="Trials to run (with grid dimensions: samples per grid point).")
    space: dict[str, SearchDimension] = Field(
        ..., min_length=1, description="The swept params of the step and their ranges."
    )
    searcher: Literal["random", "optuna"] = Field(
        "random", description="How trials pick params: random (and grid), or Optuna TPE."
    )
    scheduler: Literal["fifo", "asha", "median"] = Field(
        "fifo", description="Early stopping: none (fifo), ASHA, or median stopping."
    )
    grace_period: PositiveInt = Field(1, description="ASHA/median: epochs a trial runs before it may be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: the fraction 1/factor of trials kept at each rung.")
    max_concurrent_trials: PositiveInt | None = Field(
        None, description="Trials at once (default: as many gangs as the cluster holds)."
    )
    seed: int = Field(0, description="Seed of the searcher, so a sweep is reproducible and its cache key stable.")

    @model_validator(mode="after")
    def _grid_needs_random(self) -> "SweepConfig":
        grid = [name for name, dim in self.space.items() if dim.kind == "grid"]
        if grid and self.searcher != "random":
            raise ValueError(
                f"grid dimensions ({', '.join(grid)}) need searcher: random; with {self.searcher} use choice instead"
            )
        return self
