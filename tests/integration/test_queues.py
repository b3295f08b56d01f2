"""A cluster shared fairly, on a real local Ray of 8 CPUs and 4 logical GPUs: priority preemption
that checkpoints, quotas borrowed and reclaimed in a cohort, protection, and an elastic step that
shrinks for a higher-priority gang and grows back.

Each run is a real driver (``execute``, as ``rto run`` calls it) in a thread of this process,
sharing the cluster's one admission actor. Train steps ask for logical GPUs (``use_gpu``) and
train with gloo on the CPU; their epochs are paced (``seconds_per_epoch``), and they checkpoint
every epoch, so which epoch a resumed attempt starts from is exact.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from typing import Any, Callable

import pytest
from mlflow.tracking import MlflowClient

from raytrain_orch.cli.main import main as rto
from raytrain_orch.cli.status import describe
from raytrain_orch.cli.wiring import execute
from raytrain_orch.core.config import RayConfig
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.run_view import RunView
from raytrain_orch.engine.driver import prepare
from raytrain_orch.ray import admission, session
from raytrain_orch.store.state import RunStore, Status
from raytrain_orch.store.storage import Storage
from tests.conftest import write_config

pytestmark = pytest.mark.integration

TEAMS = {
    "queues": {
        "team-a": {"quota": {"GPU": 2}, "cohort": "research"},
        "team-b": {"quota": {"GPU": 2}, "cohort": "research"},
    }
}


def train(epochs: int, pace: float, workers: int | list[int] = 2, gpus: float = 1.0, **extra: Any) -> dict:
    return {
        "params": {"epochs": epochs, "seconds_per_epoch": pace},
        "scaling": {
            "num_workers": workers,
            "use_gpu": True,
            "torch_backend": "gloo",
            "resources_per_worker": {"CPU": 1, "GPU": gpus},
            **extra,
        },
        "failure": {"max_failures": 0},  # a preemption charged to it would fail the step
        "retries": {"max": 0},  # nor to the step's retries
    }


class Launched:
    """A run's driver in a thread of this process: its events as they are recorded, its end state."""

    def __init__(self, directory, name: str, pipeline: str, steps: dict, **admission_config: Any):
        directory.mkdir(parents=True, exist_ok=True)
        top = {"admission": admission_config} if admission_config else {}
        spec = pipeline if ":" in pipeline else f"tests.pipelines.gangs:{pipeline}"
        self.prepared = prepare(write_config(directory, name, spec, steps, **top))
        self.events: list[dict] = []
        self.state: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._drive, name=f"driver-{name}", daemon=True)
        self._thread.start()

    def _drive(self) -> None:
        try:
            self.state = execute(self.prepared, on_event=self.events.append)
        except BaseException as error:  # noqa: BLE001 — the test asserts on it
            self.error = error
            self.state = RunStore(Storage(self.prepared.config.storage)).latest()

    @property
    def run_id(self) -> str:
        started = self.seen("run_started")
        return started[0]["run_id"] if started else ""

    def seen(self, event: str, **fields: Any) -> list[dict]:
        return [e for e in list(self.events) if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]

    def epochs(self, step: str = "train") -> list[int]:
        return [e["epoch"] for e in self.seen("epoch", step=step)]

    def join(self, timeout: float = 240) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the run did not end in time"
        return self.state


def until(condition: Callable[[], Any], timeout: float = 120, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what or condition}")


def queue_json() -> dict:
    """``rto queue --json``, as a user runs it against this cluster."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert rto(["queue", "--json", "--address", "auto"]) == 0
    return json.loads(out.getvalue())


def tags(launched: Launched, step: str, attempt: int) -> dict[str, str]:
    client = MlflowClient(launched.prepared.config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(launched.prepared.config.experiment)
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`rto.step` = '{step}' and tags.`rto.attempt` = '{attempt}' and tags.`rto.run_id` = '{launched.run_id}'",
    )
    assert len(runs) == 1
    return dict(runs[0].data.tags)


@pytest.fixture(scope="module")
def cluster():
    session.connect(RayConfig(num_cpus=8, num_gpus=4, runtime="throwaway"))
    yield
    session.disconnect()


@pytest.fixture
def queues(cluster):
    """Each test starts with only the ``default`` queue, and leaves it so."""
    admission.apply_queues({})
    yield
    admission.apply_queues({})


def test_a_high_priority_run_preempts_the_low_one_which_checkpoints_and_resumes(queues, tmp_path):
    low = Launched(tmp_path / "low", "low", "one", {"train": train(10, 1.0, gpus=2)}, priority=0)
    until(lambda: len(low.epochs()) >= 2, what="the low-priority run's second epoch")
    high = Launched(tmp_path / "high", "high", "one", {"train": train(2, 0.3, gpus=2)}, priority=10)

    admitted = until(lambda: high.seen("step_admitted"), timeout=60, what="the high-priority step's admission")[0]
    assert admitted["waited_s"] <= 30
    assert admitted["displaced"] == [f"{low.run_id}/train"]
    preempted = low.seen("step_preempted")[0]
    assert (preempted["by"], preempted["priority"], preempted["queue"]) == (f"{high.run_id}/train", 10, "default")
    # While it waits it says so, everywhere a step shows: its events, and the cluster's queue.
    waiting = until(lambda: low.seen("step_waiting", attempt=2), timeout=30, what="the preempted step waiting")[0]
    by = f"preempted by {high.run_id}/train (priority 10, queue default)"
    assert waiting["reason"].startswith(f"{by}; waiting to resume from epoch {preempted['epoch']}")
    books = queue_json()
    assert [(g["label"], g["priority"]) for g in books["granted"]] == [(f"{high.run_id}/train", 10)]
    assert [(w["label"], w["position"]) for w in books["waiting"]] == [(f"{low.run_id}/train", 1)]

    assert high.join().status is Status.SUCCEEDED
    state = low.join()
    assert state.status is Status.SUCCEEDED, low.error
    step = state.steps["train"]
    assert (step.attempts, step.preemptions) == (2, 1)
    restored = low.seen("restored", attempt=2)[0]
    assert restored["epoch"] == preempted["epoch"]  # it resumed from the checkpoint it stopped at
    epochs = low.epochs()
    assert sorted(set(epochs)) == list(range(10))
    assert len(epochs) - 10 <= 1  # at most one epoch computed twice
    # It resumed only once the high-priority step had given its GPUs back.
    resumed = low.seen("step_admitted", attempt=2)[0]
    assert resumed["ts"] >= high.seen("epoch")[-1]["ts"]
    asked = low.seen("step_preempting")[0]
    print(
        f"\npreemption: high admitted after {admitted['waited_s']:.1f} s; low asked to stop "
        f"{asked['ts'] - high.seen('step_started')[0]['ts']:.1f} s after high arrived, stopped at epoch "
        f"{preempted['epoch']} {preempted['ts'] - asked['ts']:.1f} s later; {len(epochs) - 10} epoch(s) recomputed"
    )
    assert tags(low, "train", 1)["rto.preempted_by"] == f"{high.run_id}/train (priority 10, queue default)"
    assert tags(high, "train", 1)["rto.displaced"] == f"{low.run_id}/train"
    store = RunStore(Storage(high.prepared.config.storage))
    shown = describe(high.state, RunView.of(store.events(high.run_id)))  # what `rto status` shows
    assert shown["steps"]["train"]["displaced"] == [f"{low.run_id}/train"]


def test_a_team_borrows_idle_quota_and_gives_it_back_when_its_lender_reclaims_it(queues, tmp_path):
    admission.apply_queues(TEAMS)
    steps = {"train0": train(8, 1.0), "train1": train(8, 1.0)}
    team_a = Launched(tmp_path / "a", "a", "pair", steps, queue="team-a", priority=50)
    until(lambda: len(team_a.epochs("train0")) >= 1 and len(team_a.epochs("train1")) >= 1, what="team A's 4 GPUs")
    books = queue_json()["queues"]
    assert (books["team-a"]["uses"]["GPU"], books["team-a"]["borrows"]) == (4.0, {"GPU": 2.0})

    team_b = Launched(tmp_path / "b", "b", "one", {"train": train(2, 1.0)}, queue="team-b", priority=0)
    until(lambda: team_b.seen("epoch"), timeout=60, what="team B reclaiming its quota")
    preempted = [s for s in ("train0", "train1") if team_a.seen("step_preempted", step=s)]
    assert len(preempted) == 1  # one gang of A's was enough: the most recently granted one
    (victim,) = preempted
    kept = "train1" if victim == "train0" else "train0"
    books = queue_json()["queues"]
    assert (books["team-a"]["uses"]["GPU"], books["team-a"]["borrows"]) == (2.0, {})
    assert (books["team-b"]["uses"]["GPU"], books["team-b"]["borrows"]) == (2.0, {})
    waiting = until(lambda: team_a.seen("step_waiting", step=victim, attempt=2), timeout=30, what="A's victim")[0]
    assert "waiting for quota: queue team-a uses 2 of 2 GPU" in waiting["reason"]

    assert team_b.join().status is Status.SUCCEEDED
    state = team_a.join()
    assert state.status is Status.SUCCEEDED, team_a.error
    assert state.steps[kept].preemptions == 0 and state.steps[victim].preemptions == 1  # A went on within its quota


def test_a_preemption_that_would_not_admit_the_gang_never_happens_nor_one_within_min_runtime(queues, tmp_path):
    fixed = Launched(tmp_path / "fixed", "fixed", "one", {"train": train(3, 1.0)}, preemptible=False)
    low = Launched(tmp_path / "low", "low", "one", {"train": train(12, 1.0)}, min_runtime_s=20)
    until(lambda: fixed.seen("epoch") and low.seen("epoch"), what="both holders training")
    high = Launched(tmp_path / "high", "high", "one", {"train": train(1, 0.1, gpus=2)}, priority=10)

    # The high-priority gang needs all 4 GPUs: preempting `low` alone would not admit it while
    # `fixed` (not preemptible) holds 2, and after `fixed` ends `low` is protected for 20 s.
    assert fixed.join().status is Status.SUCCEEDED
    assert fixed.seen("step_preempting") == []
    assert high.join().status is Status.SUCCEEDED
    assert low.join().status is Status.SUCCEEDED
    asked = low.seen("step_preempting")[0]
    assert asked["ts"] >= fixed.seen("epoch")[-1]["ts"]  # not before it could admit the gang
    assert asked["ts"] - low.seen("step_admitted")[0]["ts"] >= 20 - 1.5  # nor within min_runtime_s (the books' clock)


def test_an_elastic_step_shrinks_for_a_higher_priority_gang_and_grows_back(queues, tmp_path):
    elastic = train(14, 1.0, workers=[1, 2], gpus=2, resize_check_s=2)
    low = Launched(tmp_path / "elastic", "elastic", "one", {"train": elastic})
    until(
        lambda: [e for e in low.seen("workers_resized") if e["world_size"] == 2] and low.seen("epoch"), what="2 workers"
    )
    high = Launched(tmp_path / "high", "high", "one", {"train": train(2, 0.5, workers=1, gpus=2)}, priority=10)

    assert high.join().status is Status.SUCCEEDED
    state = low.join()
    assert state.status is Status.SUCCEEDED, low.error
    shrink = low.seen("step_preempted")[0]
    assert shrink["keep"] == 1  # shrunk to its minimum, not stopped
    sizes = [e["world_size"] for e in low.seen("workers_resized")]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2  # 2 → 1 for the gang → 2 once it was done
    assert sorted(set(low.epochs())) == list(range(14))


def test_a_loop_with_long_epochs_stops_between_batches_when_asked(queues, tmp_path):
    steps = {"train": {**train(2, 0.0, gpus=2), "params": {"epochs": 2, "batches": 16, "seconds_per_batch": 0.4}}}
    low = Launched(tmp_path / "low", "low", "long_epochs", steps)
    until(lambda: low.seen("epoch"), what="the first long epoch's end")  # epoch 1 has begun
    high = Launched(tmp_path / "high", "high", "one", {"train": train(1, 0.1, gpus=2)}, priority=10)

    assert high.join().status is Status.SUCCEEDED
    assert low.join().status is Status.SUCCEEDED, low.error
    asked, stopped = low.seen("step_preempting")[0], low.seen("step_preempted")[0]
    assert stopped["epoch"] == 1  # in the middle of epoch 1 (16 batches, 6.4 s), not at its end
    assert stopped["ts"] - asked["ts"] < 4
    stop_report = [e for e in low.seen("epoch", attempt=1) if e["epoch"] == 1][-1]
    batch = int(stop_report["metrics"]["batch"])
    assert 0 <= batch < 15
    resumed = low.seen("restored", attempt=2)[0]
    assert resumed["epoch"] == 1  # from the batch it stopped at: the last report of epoch 1 says all 16
    assert low.seen("epoch", attempt=2)[0]["metrics"]["batch"] == 15.0


def test_a_run_naming_a_queue_that_does_not_exist_stops_before_anything_starts(queues, tmp_path):
    admission.apply_queues(TEAMS)
    config = write_config(
        tmp_path, "lost", "tests.pipelines.gangs:one", {"train": train(1, 0.0)}, admission={"queue": "team-c"}
    )

    with pytest.raises(ConfigError) as error:
        execute(prepare(config), on_event=lambda record: None)

    assert (
        str(error.value) == "admission.queue: no queue 'team-c' on this cluster; its queues are default, team-a, team-b"
    )
    assert RunStore(Storage(str(tmp_path / "rto-runs"))).list() == []  # nothing started, nothing recorded


def test_a_mapped_train_step_runs_one_gang_per_item_through_the_queue(queues, tmp_path):
    steps = {"numbers": {"params": {"count": 3}}, "train": train(2, 0.5)}  # each item: 2 workers, 2 of the 4 GPUs
    run = Launched(tmp_path / "mapped", "mapped", "tests.pipelines.mapped:mapped_train", steps)

    state = run.join()

    assert state.status is Status.SUCCEEDED, run.error
    units = [state.steps[f"train[{i}]"] for i in range(3)]
    assert all(u.status is Status.SUCCEEDED and u.metrics["world"] == 2.0 for u in units)  # a whole DDP group each
    spans = sorted((u.metrics["started"], u.metrics["ended"]) for u in units)
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # two gangs fit at once; the third waited for one
    assert len({e["step"] for e in run.seen("step_waiting")}) == 1  # one item's gang waited in the queue
