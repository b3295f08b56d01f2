"""``rto queue`` as people read it, from the admission queue's snapshot (no Ray)."""

from __future__ import annotations

from raytrain_orch.cli.queues import show
from raytrain_orch.core.admission import AdmissionQueue
from raytrain_orch.core.placement import ClusterSpec, GangSpec
from raytrain_orch.core.queues import QueuesFile, Quotas

CLUSTER = ClusterSpec(nodes=({"CPU": 8.0, "GPU": 4.0},))
TEAMS = {
    "queues": {
        "team-a": {"quota": {"GPU": 2}, "cohort": "research"},
        "team-b": {"quota": {"GPU": 2}, "cohort": "research"},
    }
}


def gpus(n: int) -> GangSpec:
    return GangSpec(tuple({"CPU": 1.0, "GPU": 1.0} for _ in range(n)))


def test_the_queue_shows_quotas_use_borrowing_holders_and_why_each_gang_waits(capsys):
    queue = AdmissionQueue(quotas=Quotas(QueuesFile.parse(TEAMS)))
    for at, (ticket, label) in enumerate((("t1", "run-a/train0"), ("t2", "run-a/train1"))):
        queue.submit(ticket, gpus(2), label=label, now=10.0 * at, queue="team-a", priority=50, preemptible=True)
        queue.schedule(CLUSTER, now=10.0 * at)
    queue.submit("t3", gpus(2), label="run-b/train", now=100.0, queue="team-b")
    queue.schedule(CLUSTER, now=100.0)
    queue.preempt(CLUSTER, now=100.0)

    show(queue.snapshot(CLUSTER, now=130.0), now=130.0)

    lines = capsys.readouterr().out.splitlines()
    team_a = next(line for line in lines if line.startswith("team-a"))
    assert team_a.split()[1:8] == ["GPU", "2", "CPU", "4,", "GPU", "4", "GPU"]  # quota, uses, borrows
    preempted = next(line for line in lines if "train1" in line and line.startswith("run-a"))
    assert "2 min ago" in preempted and preempted.endswith("preempted by run-b/train")  # the newer of A's two
    waiting = next(line for line in lines if line.startswith("1 "))
    assert "run-b" in waiting and "team-b" in waiting and "waiting for resources" in waiting
    assert any(line.startswith("RUNNING") for line in lines) and any(line.startswith("WAITING") for line in lines)
