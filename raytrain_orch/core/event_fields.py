"""The fields of every event: a ``TypedDict`` each, named as its ``Event`` is (``core.events``).

``Record`` is what every recorded event has: ``event`` (an ``Event``'s value), ``ts`` (when it
was recorded), ``run_id``, and ``sent_ts`` (when a worker sent it). ``events.make`` checks a
producer's fields against these declarations; readers get them back as plain dicts.
"""

from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict


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


class StepMapped(StepRecord):
    items: int  # how many: its units are STEP[0] … STEP[items - 1]
    over: str | None  # the step whose items they are


class StepWaiting(StepRecord):
    reason: str
    position: int


class StepAdmitted(StepRecord):
    waited_s: float
    displaced: NotRequired[list[str]]  # the gangs (RUN/STEP) preempted to make room for it


class StepPreempting(StepRecord):
    """The queue asked a train step's gang back: it checkpoints at its next report and stops."""

    by: str  # RUN/STEP of the gang that preempts it
    priority: int
    queue: str
    keep: int  # workers it keeps (an elastic step shrunk to its minimum); 0: stopped


class StepPreempted(StepRecord):
    """A train step's attempt ended as a preemption (not a failure): it resumes from ``epoch``."""

    by: str
    priority: int
    queue: str
    keep: int
    epoch: int | None  # the last epoch its checkpoint holds (None: none yet)


class ProgressChannelLost(Record):
    error: str


class Heartbeat(StepRecord):
    """A task step's ``ctx.heartbeat()``: progress, not recorded."""


class StepProcess(StepRecord):
    """A step's process says where it runs (the backend's to use, not recorded)."""

    pid: NotRequired[int]
    node_id: NotRequired[str]
    host: NotRequired[str]
    rank: NotRequired[int | None]
    path: NotRequired[str]
    controller: NotRequired[Any]


# --- workers -------------------------------------------------------------------------------------


class Epoch(StepRecord):
    epoch: int | None
    metrics: dict[str, float]
    perf: dict[str, float]
    epoch_s: float
    report_s: float
    log_s: float


class Usage(StepRecord):
    """What one process of a step's gang used since ``since`` (when it began measuring: a task's
    code or a train worker's loop started): cumulative, so the latest record of a process is its
    total. Sent every ``RTO_USAGE_SAMPLE_S`` and once more at its end (``final``)."""

    rank: int | None  # a train worker's rank; None: a task step's process
    host: str
    pid: int
    since: float
    cpu_s: float  # CPU seconds of the process and its children
    gpu: dict[str, float] | None  # NVML: devices, busy_s (utilisation × time), memory_mb (peak); None: not measured
    gpu_note: NotRequired[str]  # why GPU use was not measured
    final: bool


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


class ModelRegistered(StepRecord):
    name: str
    version: str
    alias: str | None


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


# --- alerts -------------------------------------------------------------------------------------


class NotifyFailed(Record):
    alert: str  # failed, recovered, hung, preempted, waiting, finished
    url: str  # redacted: scheme://host/***
    error: str
    tries: int
    step: NotRequired[str]


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
