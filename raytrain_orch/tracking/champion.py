"""The champion rule: which registered model version holds an alias (config ``mlflow.champion``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChampionRule:
    """Which registered version holds ``alias``: the best on ``metric`` so far."""

    alias: str
    metric: str
    mode: str = "max"

    def beats(self, value: float, held: float) -> bool:
        return value > held if self.mode == "max" else value < held
