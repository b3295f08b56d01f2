"""Internal tunables, read once from ``RTO_*`` environment variables.

User configs hold what a user decides; these are knobs for operators and tests.
"""

from __future__ import annotations

import os


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


#: Print tracebacks for user errors instead of one line (``RTO_DEBUG=1``).
DEBUG = os.environ.get("RTO_DEBUG", "") not in ("", "0", "false")

#: Let Ray, Ray Train, Tune and MLflow talk on the console as they do by themselves: workers'
#: output forwarded to the driver, their INFO logs (``RTO_VERBOSE=1``). Without it the console has
#: the project's own lines and errors; the steps' logs keep everything (``rto logs``).
VERBOSE = os.environ.get("RTO_VERBOSE", "") not in ("", "0", "false")

#: How long a step waits for Ray to place its admitted placement group before the attempt fails
#: (as an infrastructure fault, so it is retried).
GANG_TIMEOUT_S = _float("RTO_GANG_TIMEOUT_S", 600.0)

#: A lease (granted or waiting) not renewed for this long belongs to a dead driver and is
#: dropped from the admission queue. Holders renew it every sixth of that.
LEASE_TTL_S = _float("RTO_LEASE_TTL_S", 30.0)
#: How often a lease holder asks whether the queue preempted its gang (with its renewal).
PREEMPTION_POLL_S = _float("RTO_PREEMPTION_POLL_S", 2.0)
#: How long a preempted train step may take to reach its next report and checkpoint before it is
#: stopped without one (it then resumes from its previous checkpoint).
PREEMPTION_GRACE_S = _float("RTO_PREEMPTION_GRACE_S", 600.0)
#: How long a stopping driver waits for the admission queue to take back its leases.
LEASE_RELEASE_WAIT_S = 20.0

#: How long a step whose gang the cluster can no longer hold at all (it lost nodes since the run
#: started) waits for nodes to join before it fails, when its ``admission.timeout_s`` is unset.
CAPACITY_WAIT_S = _float("RTO_CAPACITY_WAIT_S", 600.0)

#: How long one call to the admission queue waits for a grant before it reports back.
ADMISSION_POLL_S = _float("RTO_ADMISSION_POLL_S", 1.0)

#: How often the runner wakes to drain progress events while steps run.
POLL_INTERVAL_S = _float("RTO_POLL_INTERVAL_S", 0.2)

#: Ray Train V2's controller polls its workers this often, and a worker's ``ray.train.report``
#: waits until the controller has taken the previous report (a queue of one). Ray's default
#: (2 s) costs about 1.9 s per report here; 0.05 s brings a report with its checkpoint to ~15 ms on
#: the digits model and detects a dead worker within 0.05 s. Lower buys nothing more there and
#: costs the controller CPU (bench/overhead.py, docs/benchmarks.md). Set in the controller's
#: environment through the job's runtime_env.
TRAIN_HEALTH_CHECK_INTERVAL_S = _float("RTO_TRAIN_HEALTH_CHECK_INTERVAL_S", 0.05)

#: How long Ray Train waits for a train step's worker group to be placed before it tries again
#: (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``; Ray's default is 60 s). Short, because an elastic
#: step that lost a node first asks for the group it had (the lost node still counts for a few
#: seconds) and only chooses the smaller group that fits after this timeout.
TRAIN_START_TIMEOUT_S = _float("RTO_TRAIN_START_TIMEOUT_S", 20.0)

#: How many times Ray Train retries starting a train step's worker group that did not fit within
#: ``TRAIN_START_TIMEOUT_S`` before the attempt ends as an infrastructure fault, which the runner
#: retries through the admission queue (3 minutes in all, as with Ray's 60 s and 2 retries).
TRAIN_START_RETRIES = int(_float("RTO_TRAIN_START_RETRIES", 8))

#: How long a train worker whose loop raised waits for Ray Train's controller to abort the
#: worker group before it raises anyway (a bug is not retried by Ray Train's failure budget).
TRAIN_ABORT_WAIT_S = _float("RTO_TRAIN_ABORT_WAIT_S", 10.0)

#: How often rank 0 of a train step samples its node's CPU, memory, disk and network use (the
#: ``system/*`` metrics logged per epoch are the means of these samples).
SYSTEM_METRICS_SAMPLE_S = _float("RTO_SYSTEM_METRICS_SAMPLE_S", 1.0)

#: How often every process of a step's gang sends what it used so far (``ray/usage.py``): the run
#: report's CPU and GPU use, known up to this long before a process died.
USAGE_SAMPLE_S = _float("RTO_USAGE_SAMPLE_S", 10.0)

#: Webhook delivery (``notify:``): each message is tried this many times, waiting
#: ``RTO_NOTIFY_BACKOFF_S`` doubling between tries, each try given ``RTO_NOTIFY_TIMEOUT_S``;
#: at the run's end the driver waits at most ``RTO_NOTIFY_FLUSH_S`` for messages still going out.
NOTIFY_TRIES = int(_float("RTO_NOTIFY_TRIES", 4))
NOTIFY_BACKOFF_S = _float("RTO_NOTIFY_BACKOFF_S", 1.0)
NOTIFY_TIMEOUT_S = _float("RTO_NOTIFY_TIMEOUT_S", 5.0)
NOTIFY_FLUSH_S = _float("RTO_NOTIFY_FLUSH_S", 10.0)

#: How long a step's own ``register_model``/``log_artifact`` call waits for the driver's MLflow
#: writer to have created the step's run (the step starts without waiting for it). Past it (an
#: MLflow outage) the call fails as an infrastructure fault and the step is retried; everything
#: the driver logs for the step catches up when MLflow is back.
TRACKING_START_WAIT_S = _float("RTO_TRACKING_START_WAIT_S", 10.0)

#: At the end of a run, how long the driver keeps retrying MLflow operations still queued
#: (an outage that has not ended) before it gives up on them and says how many were lost.
TRACKING_FLUSH_TIMEOUT_S = _float("RTO_TRACKING_FLUSH_TIMEOUT_S", 120.0)

#: How long a stopped job's driver gets after SIGTERM to end its run and MLflow runs KILLED
#: before Ray kills it (Ray's ``RAY_JOB_STOP_WAIT_TIME_S``, set by ``rto submit`` for its jobs;
#: Ray's own default is 3 s).
JOB_STOP_WAIT_S = _float("RTO_JOB_STOP_WAIT_S", 60.0)

#: On an object store, a run's events wait in the driver's memory until this long after the
#: first of them, or until there are ``EVENTS_FLUSH_COUNT`` of them, and are then written as one
#: object (``store.eventlog``). A driver killed there loses at most this much of its progress
#: events; an event that changed the run's state is always written before the state is.
EVENTS_FLUSH_S = _float("RTO_EVENTS_FLUSH_S", 1.0)
EVENTS_FLUSH_COUNT = int(_float("RTO_EVENTS_FLUSH_COUNT", 1000))

#: How often ``rto submit --wait`` and ``rto stop`` ask the cluster for a job's status.
JOB_POLL_S = _float("RTO_JOB_POLL_S", 1.0)

#: Config file names and directories the runtime creates under the storage root.
RUNS_DIR = "runs"
STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
EVENTS_DIR = "events"  # the event log's segments, on an object store
RESOLVED_CONFIG_FILE = "config.yaml"
PLAN_FILE = "plan.json"

#: Prestart Ray Train's processes (and a task worker during a long train step) ahead of need
#: (``ray/warm.py``); ``RTO_PRESTART=0`` starts them when a step asks, as Ray does by itself.
PRESTART = os.environ.get("RTO_PRESTART", "1") not in ("0", "false")
