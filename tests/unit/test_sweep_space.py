"""The sweep section as Ray Tune objects: sampling domains, searchers with their concurrency
limit, and schedulers (no trial runs here)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.tune")

from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule  # noqa: E402
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from raytrain_orch.core.sweep_config import SweepConfig  # noqa: E402
from raytrain_orch.ray.sweep import _scheduler, _searcher, search_space  # noqa: E402


def sweep(**fields) -> SweepConfig:
    space = {
        "lr": {"loguniform": [0.001, 0.1]},
        "hidden": {"choice": [32, 64]},
        "batch_size": {"randint": [16, 129]},
        "momentum": {"uniform": [0.5, 0.99]},
    }
    return SweepConfig(step="train", metric="val_accuracy", **{"space": space, **fields})


def test_each_dimension_becomes_the_tune_domain_of_its_kind_and_bounds():
    space = search_space(sweep())

    assert isinstance(space["lr"], tune.search.sample.Float) and (space["lr"].lower, space["lr"].upper) == (0.001, 0.1)
    assert isinstance(space["lr"].get_sampler(), tune.search.sample.LogUniform)
    assert space["hidden"].categories == [32, 64]
    assert isinstance(space["batch_size"], tune.search.sample.Integer) and (
        space["batch_size"].lower,
        space["batch_size"].upper,
    ) == (16, 129)
    assert (space["momentum"].lower, space["momentum"].upper) == (0.5, 0.99)
    assert search_space(sweep(space={"lr": {"grid": [0.1, 0.01]}})) == {"lr": {"grid_search": [0.1, 0.01]}}


def test_searchers_hold_at_most_the_concurrency_they_are_given():
    optuna = _searcher(sweep(searcher="optuna", seed=3), concurrency=2)
    random = _searcher(sweep(seed=3), concurrency=1)

    assert (
        isinstance(optuna, ConcurrencyLimiter)
        and optuna.max_concurrent == 2
        and isinstance(optuna.searcher, OptunaSearch)
    )
    assert isinstance(random, BasicVariantGenerator) and random.max_concurrent == 1


@pytest.mark.parametrize(
    "name, kind", [("fifo", FIFOScheduler), ("asha", ASHAScheduler), ("median", MedianStoppingRule)]
)
def test_each_scheduler_is_tunes_own(name, kind):
    assert type(_scheduler(sweep(scheduler=name), max_epochs=10)) is kind


def test_asha_lets_a_trial_run_every_epoch_and_return():
    asha = _scheduler(sweep(scheduler="asha", grace_period=2, reduction_factor=3), max_epochs=10)

    # Rungs at 2 and 6 epochs (grace 2, factor 3); max_t one past the last epoch.
    assert asha._max_t == 11 and sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == [2, 6]
