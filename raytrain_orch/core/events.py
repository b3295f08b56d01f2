"""Every event of a run: its name (``Event``), its one constructor, its one encoding, its readers.

Events are what the runner records (``events.jsonl``, one JSON object a line) and shows; workers
and backends send theirs to the driver, which records them too. A record is a plain dict with
``event`` (an ``Event``'s value), ``ts`` (when it was recorded) and ``run_id``, plus the fields
``core.event_fields`` declares for it; a worker's event also carries ``sent_ts`` (when it was
sent). Every producer builds its record with ``make``, which rejects a missing or unknown field;
``encode`` and ``decode`` are the one way a record goes to and comes from a line. ``decode``
reads any line ``events.jsonl`` has ever held: an event this version does not know comes back as
a plain record, never an error, so a run started by older code can be shown and resumed.

Readers subclass ``Consumer``: its ``consume(record)`` calls the reader's ``on_<event>`` hook
(``on_step_started``, ``on_epoch``, …) and ignores events it has no hook for.
"""

import difflib
import json
from enum import Enum
from types import MappingProxyType
from typing import Any, Callable, Mapping, Union

from raytrain_orch.core import event_fields as f


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
    STEP_MAPPED = "step_mapped"  # a mapped step's items are known: it runs as one unit, STEP[i], per item
    # admission, from the backend
    STEP_WAITING = "step_waiting"
    STEP_ADMITTED = "step_admitted"
    STEP_PREEMPTING = "step_preempting"  # the queue asked its gang back: it checkpoints and stops
    STEP_PREEMPTED = "step_preempted"  # its attempt ended as a preemption; it waits to resume
    PROGRESS_CHANNEL_LOST = "progress_channel_lost"
    # a step's workers
    EPOCH = "epoch"
    METRICS = "metrics"
    RESTORED = "restored"
    CHECKPOINT_SKIPPED = "checkpoint_skipped"
    CHECKPOINT_DURABLE = "checkpoint_durable"  # a sharded checkpoint's files are on storage (rank 0's)
    USER_ERROR = "user_error"
    MODEL_REGISTERED = "model_registered"  # ctx.register_model made a version (rto gc keeps its run)
    WORKERS_RESTARTING = "workers_restarting"
    WORKERS_RESIZED = "workers_resized"  # a train step's worker group started with this many workers
    NODE_DRAINING = "node_draining"  # a node of a train step's workers is drained (a preemption)
    USAGE = "usage"  # a gang process's CPU (and GPU) use so far: every worker, every RTO_USAGE_SAMPLE_S and at its end
    HEARTBEAT = "heartbeat"  # a task step's ctx.heartbeat(): progress, not recorded
    STEP_PROCESS = "step_process"  # a step's process says where it runs (the backend's, not recorded)
    # a sweep's trials
    TRIAL_STARTED = "trial_started"
    TRIAL_FINISHED = "trial_finished"
    TRIAL_STOPPED = "trial_stopped"
    TRIAL_FAILED = "trial_failed"
    SWEEP_FINISHED = "sweep_finished"
    # alerts, from the driver's notifier
    NOTIFY_FAILED = "notify_failed"  # a webhook could not be told (after its retries)
    # MLflow, from the driver's outbox
    TRACKING_UNAVAILABLE = "tracking_unavailable"
    TRACKING_RECOVERED = "tracking_recovered"
    TRACKING_DROPPED = "tracking_dropped"
    TRACKING_FLUSHING = "tracking_flushing"
    TRACKING_LOST = "tracking_lost"
    # the driver's Ray: the shared local runtime started or reused, a throwaway Ray, a cluster
    RAY_RUNTIME = "ray_runtime"


#: Each event's fields.
FIELDS: Mapping[Event, type] = MappingProxyType(
    {
        Event.RUN_STARTED: f.RunStarted,
        Event.RUN_RESUMED: f.RunResumed,
        Event.RUN_FINISHED: f.RunFinished,
        Event.RUN_RECONCILED: f.RunReconciled,
        Event.STEP_STARTED: f.StepStarted,
        Event.STEP_CACHED: f.StepCached,
        Event.STEP_SUCCEEDED: f.StepSucceeded,
        Event.STEP_RETRYING: f.StepRetrying,
        Event.STEP_FAILED: f.StepFailed,
        Event.STEP_SKIPPED: f.StepSkipped,
        Event.STEP_KILLED: f.StepKilled,
        Event.STEP_HUNG: f.StepHung,
        Event.STEP_MAPPED: f.StepMapped,
        Event.STEP_WAITING: f.StepWaiting,
        Event.STEP_ADMITTED: f.StepAdmitted,
        Event.STEP_PREEMPTING: f.StepPreempting,
        Event.STEP_PREEMPTED: f.StepPreempted,
        Event.PROGRESS_CHANNEL_LOST: f.ProgressChannelLost,
        Event.EPOCH: f.Epoch,
        Event.METRICS: f.Metrics,
        Event.RESTORED: f.Restored,
        Event.CHECKPOINT_SKIPPED: f.CheckpointSkipped,
        Event.CHECKPOINT_DURABLE: f.CheckpointDurable,
        Event.USER_ERROR: f.UserError,
        Event.MODEL_REGISTERED: f.ModelRegistered,
        Event.WORKERS_RESTARTING: f.WorkersRestarting,
        Event.WORKERS_RESIZED: f.WorkersResized,
        Event.NODE_DRAINING: f.NodeDraining,
        Event.USAGE: f.Usage,
        Event.HEARTBEAT: f.Heartbeat,
        Event.STEP_PROCESS: f.StepProcess,
        Event.TRIAL_STARTED: f.TrialStarted,
        Event.TRIAL_FINISHED: f.TrialFinished,
        Event.TRIAL_STOPPED: f.TrialStopped,
        Event.TRIAL_FAILED: f.TrialFailed,
        Event.SWEEP_FINISHED: f.SweepFinished,
        Event.NOTIFY_FAILED: f.NotifyFailed,
        Event.TRACKING_UNAVAILABLE: f.TrackingUnavailable,
        Event.TRACKING_RECOVERED: f.TrackingRecovered,
        Event.TRACKING_DROPPED: f.TrackingDropped,
        Event.TRACKING_FLUSHING: f.TrackingFlushing,
        Event.TRACKING_LOST: f.TrackingLost,
        Event.RAY_RUNTIME: f.RayRuntime,
    }
)

#: The events that change what resume reads from ``state.json``: the run's status and its step
#: attempts' (``engine.runner`` saves the state when it records one). The rest change nothing
#: there and are only logged: a step's progress (epochs, metrics, checkpoints, its workers), a
#: sweep's trials, tracking's news, a hung attempt (the retry or failure that follows is saved),
#: the attempts a run's end kills (its ``run_finished`` is saved with them).
SAVES_STATE = frozenset(
    {
        Event.RUN_STARTED,
        Event.RUN_RESUMED,
        Event.RUN_FINISHED,
        Event.RUN_RECONCILED,
        Event.STEP_STARTED,
        Event.STEP_CACHED,
        Event.STEP_SUCCEEDED,
        Event.STEP_RETRYING,
        Event.STEP_FAILED,
        Event.STEP_SKIPPED,
        Event.STEP_MAPPED,
        Event.STEP_WAITING,
        Event.STEP_ADMITTED,
        Event.STEP_PREEMPTED,
    }
)

#: The events that change nothing in ``state.json`` but that a resume reads from the log itself,
#: made durable before they are shown: a trial's params, which name the MLflow run of a trial
#: its killed driver opened (``tracking.run_tree``).
FLUSHES_LOG = frozenset({Event.TRIAL_STARTED})

#: What every record may carry whichever its event: added when it is sent or recorded.
ENVELOPE = frozenset(f.Record.__annotations__)

#: Where recorded events go: the progress display, a test's list. Called on the driver's thread.
EventSink = Callable[[Mapping[str, Any]], None]


def make(event: Event, **fields: Any) -> dict[str, Any]:
    """The record of ``event`` with ``fields``: a ``TypeError`` names a field its type does not
    declare, or one it requires that is missing (``ts`` and ``run_id`` may come later)."""
    declared: Any = FIELDS[event]  # a TypedDict class
    known = set(declared.__required_keys__) | set(declared.__optional_keys__)
    for name in fields:
        if name not in known:
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            raise TypeError(f"{event}: no field {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    missing = sorted(set(declared.__required_keys__) - ENVELOPE - set(fields))
    if missing:
        raise TypeError(f"{event}: missing field {missing[0]!r}")
    return {"event": event.value, **fields}


def encode(record: Mapping[str, Any]) -> str:
    """A record as its line of ``events.jsonl``."""
    return json.dumps(record, default=str)


def decode(line: str) -> f.Record:
    """One line of ``events.jsonl`` as a record (any version's)."""
    record: f.Record = json.loads(line)
    return record


def kind(record: Mapping[str, Any]) -> Union[Event, None]:
    """The record's event, or None for a name this version does not know."""
    try:
        return Event(record.get("event"))
    except ValueError:
        return None


def required(event: Event) -> set[str]:
    """The fields an event must carry, beyond ``event`` and ``ts``."""
    declared: Any = FIELDS[event]
    return set(declared.__required_keys__) - {"event", "ts"}


class Consumer:
    """A reader of records by hooks, like Ray Train's callbacks: ``consume(record)`` calls
    ``on_<event>(record)`` where the subclass defines it, and returns what the hook returns;
    an event without a hook (or unknown to this version) is ignored."""

    def consume(self, record: Mapping[str, Any]) -> Any:
        hook = getattr(self, f"on_{record.get('event')}", None)
        return None if hook is None else hook(record)
