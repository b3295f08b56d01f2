"""Every event of a run, in one place: its name (``Event``) and its fields (a ``TypedDict`` each).

Events are what the runner records (``events.jsonl``, one JSON object a line) and shows; workers
and backends send theirs to the driver, which records them too. Each record is a plain dict
with ``event`` (an ``Event``'s value), ``ts`` (when it was recorded) and ``run_id``, plus its
fields. A worker's event also carries ``sent_ts`` (when it was sent). The plain lines, the live
view, ``rto status`` and the MLflow run tree all read records through these names, and
``parse`` reads any line ``events.jsonl`` has ever held: an event this version does not know
comes back as a plain record, never an error, so a run started by older code can be shown and
resumed.
"""

import json
from enum import Enum
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping, Union

from typing_extensions import NotRequired, TypedDict


class Event(str, Enum):
    """The name of every event (its value is what ``events.jsonl`` holds, and what it prints as)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)

    # the run, from the runner
    RUN_STARTED = "run_started"
    RUN_RESUMED = "run_resumed"
    RUN_FINISHED = "run_finished"
    RUN_RECONCILED = "run_reconciled"  # its driver died; a later rto command ended it KILLED
    # a step attempt, from the runner
    STEP_STARTED = "step_started"
    STEP_CACHED = "step_cached"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_RETRYING = "step_retrying"
    STEP_FAILED = "step_failed"
    STEP_SKIPPED = "step_skipped"
    STEP_KILLED = "step_killed"
    STEP_HUNG = "step_hung"  # no progress past its limit: stacks captured, the attempt ended
    # admission, from the backend
    STEP_WAITING = "step_waiting"
    STEP_ADMITTED = "step_admitted"
    PROGRESS_CHANNEL_LOST = "progress_channel_lost"
    # a step's workers
    EPOCH = "epoch"
    METRICS = "metrics"
    RESTORED = "restored"
    CHECKPOINT_SKIPPED = "checkpoint_skipped"
    CHECKPOINT_DURABLE = "checkpoint_durable"  # a sharded checkpoint's files are on storage (rank 0's)
    USER_ERROR = "user_error"
    WORKERS_RESTARTING = "workers_restarting"
    WORKERS_RESIZED = "workers_resized"  # a train step's worker group started with this many workers
    NODE_DRAINING = "node_draining"  # a node of a train step's workers is drained (a preemption)
    HEARTBEAT = "heartbeat"  # a task step's ctx.heartbeat(): progress, not recorded
    STEP_PROCESS = "step_process"  # a step's process says where it runs (the backend's, not recorded)
    # a sweep's trials
    TRIAL_STARTED = "trial_started"
    TRIAL_FINISHED = "trial_finished"
    TRIAL_STOPPED = "trial_stopped"
    TRIAL_FAILED = "trial_failed"
    SWEEP_FINISHED = "sweep_finished"
    # MLflow, from the driver's outbox
    TRACKING_UNAVAILABLE = "tracking_unavailable"
    TRACKING_RECOVERED = "tracking_recovered"
    TRACKING_DROPPED = "tracking_dropped"
    TRACKING_FLUSHING = "tracking_flushing"
    TRACKING_LOST = "tracking_lost"
    # the driver's Ray: the shared local runtime started or reused, a throwaway Ray, a cluster
    RAY_RUNTIME = "ray_runtime"


class Record(TypedDict):
    """What every recorded event has."""

    event: str
    ts: float
    run_id: NotRequired[str]
    sent_ts: NotRequired[float]


class StepRecord(Record):
    step: str
    attempt: NotRequired[int]
    trial: NotRequired[str]


# --- the run -------------------------------------------------------------------------------------


class RunStarted(Record):
    experiment_id: str | None
    mlflow_run_id: str | None


class RunResumed(Record):
    kept: list[str]
    rerun: list[str]


class RunFinished(Record):
    status: str
    duration_s: float


class RunReconciled(Record):
    status: str
    reason: str
    steps: list[str]
    mlflow_runs: list[str]


# --- step attempts -------------------------------------------------------------------------------


class StepStarted(StepRecord):
    kind: str
    gang: str
    total_epochs: int | None
    max_attempts: int


class StepCached(StepRecord):
    cache_key: str
    metrics: dict[str, float]


class StepSucceeded(StepRecord):
    metrics: dict[str, float]
    duration_s: float


class StepRetrying(StepRecord):
    error: str
    kind: Literal["user", "infra", "resources"]
    delay_s: float


class StepFailed(StepRecord):
    error: str
    kind: Literal["user", "infra", "resources"]
    reason: str
    traceback: str


class StepSkipped(StepRecord):
    reason: str


class StepKilled(StepRecord):
    pass


class StepHung(StepRecord):
    idle_s: float
    limit_s: float
    reason: str
    stacks: str  # where they were kept (an `rto logs` command), or why not
    processes: int
    detected_ts: float


class StepWaiting(StepRecord):
    reason: str
    position: int


class StepAdmitted(StepRecord):
    waited_s: float


class ProgressChannelLost(Record):
    error: str


# --- workers -------------------------------------------------------------------------------------


class Epoch(StepRecord):
    epoch: int | None
    metrics: dict[str, float]
    perf: dict[str, float]
    epoch_s: float
    report_s: float
    log_s: float


class Metrics(StepRecord):
    metrics: dict[str, float]
    index: int | None


class Restored(StepRecord):
    epoch: int | None
    checkpoint: str | None


class CheckpointSkipped(StepRecord):
    checkpoint: str
    problem: str


class CheckpointDurable(StepRecord):
    epoch: int | None
    checkpoint: str
    durable_s: float  # from the report that began it to its files on storage: what training did not wait for


class UserError(StepRecord):
    error_type: str
    message: str
    traceback: str
    rank: int


class WorkersRestarting(StepRecord):
    phase: str
    reason: str


class WorkersResized(StepRecord):
    world_size: int
    previous: int | None
    min_workers: int
    max_workers: int


class NodeDraining(StepRecord):
    nodes: list[str]
    ranks: list[int]
    deadline_ms: int | None


# --- sweeps --------------------------------------------------------------------------------------


class TrialStarted(StepRecord):
    params: dict[str, Any]


class TrialFinished(StepRecord):
    metrics: dict[str, float]


class TrialStopped(StepRecord):
    epochs: int | None


class TrialFailed(StepRecord):
    error: str


class SweepFinished(StepRecord):
    metric: str
    trials: list[dict[str, Any]]


# --- MLflow --------------------------------------------------------------------------------------


class TrackingUnavailable(Record):
    uri: str
    error: str
    queued: int


class TrackingRecovered(Record):
    uri: str
    down_s: float
    queued: int


class TrackingDropped(Record):
    operation: str
    run: str | None
    error: str


class TrackingFlushing(Record):
    queued: int
    timeout_s: float


class TrackingLost(Record):
    lost: int
    uri: str


class RayRuntime(Record):
    action: Literal["joined", "throwaway", "started", "reused", "restarted"]
    address: str
    note: str


#: Each event's fields.
FIELDS: Mapping[Event, type] = MappingProxyType(
    {
        Event.RUN_STARTED: RunStarted,
        Event.RUN_RESUMED: RunResumed,
        Event.RUN_FINISHED: RunFinished,
        Event.RUN_RECONCILED: RunReconciled,
        Event.STEP_STARTED: StepStarted,
        Event.STEP_CACHED: StepCached,
        Event.STEP_SUCCEEDED: StepSucceeded,
        Event.STEP_RETRYING: StepRetrying,
        Event.STEP_FAILED: StepFailed,
        Event.STEP_SKIPPED: StepSkipped,
        Event.STEP_KILLED: StepKilled,
        Event.STEP_WAITING: StepWaiting,
        Event.STEP_ADMITTED: StepAdmitted,
        Event.PROGRESS_CHANNEL_LOST: ProgressChannelLost,
        Event.EPOCH: Epoch,
        Event.METRICS: Metrics,
        Event.RESTORED: Restored,
        Event.CHECKPOINT_SKIPPED: CheckpointSkipped,
        Event.CHECKPOINT_DURABLE: CheckpointDurable,
        Event.USER_ERROR: UserError,
        Event.WORKERS_RESTARTING: WorkersRestarting,
        Event.WORKERS_RESIZED: WorkersResized,
        Event.NODE_DRAINING: NodeDraining,
        Event.STEP_HUNG: StepHung,
        Event.TRIAL_STARTED: TrialStarted,
        Event.TRIAL_FINISHED: TrialFinished,
        Event.TRIAL_STOPPED: TrialStopped,
        Event.TRIAL_FAILED: TrialFailed,
        Event.SWEEP_FINISHED: SweepFinished,
        Event.TRACKING_UNAVAILABLE: TrackingUnavailable,
        Event.TRACKING_RECOVERED: TrackingRecovered,
        Event.TRACKING_DROPPED: TrackingDropped,
        Event.TRACKING_FLUSHING: TrackingFlushing,
        Event.TRACKING_LOST: TrackingLost,
        Event.RAY_RUNTIME: RayRuntime,
    }
)

#: Where recorded events go: the progress display, a test's list. Called on the driver's thread.
EventSink = Callable[[Mapping[str, Any]], None]


def kind(record: Mapping[str, Any]) -> Union[Event, None]:
    """The record's event, or None for a name this version does not know."""
    try:
        return Event(record.get("event"))
    except ValueError:
        return None


def required(event: Event) -> set[str]:
    """The fields an event must carry, beyond ``event`` and ``ts``."""
    fields: Any = FIELDS[event]  # a TypedDict class
    return set(fields.__required_keys__) - {"event", "ts"}


def parse(line: str) -> Record:
    """One line of ``events.jsonl`` as a record (any version's)."""
    record: Record = json.loads(line)
    return record
