"""Queues with quotas, cohorts that borrow, and preemption, on the pure admission queue."""

from __future__ import annotations

import pytest

from raytrain_orch.core import preemption
from raytrain_orch.core.admission import AdmissionQueue
from raytrain_orch.core.errors import ConfigError
from raytrain_orch.core.placement import ClusterSpec, GangSpec
from raytrain_orch.core.queues import QueuesFile, Quotas

FOUR_GPUS = ClusterSpec(nodes=({"CPU": 16.0, "GPU": 4.0},))
TWO_GPUS = ClusterSpec(nodes=({"CPU": 16.0, "GPU": 2.0},))

TEAMS = {
    "queues": {
        "team-a": {"quota": {"GPU": 2}, "cohort": "research"},
        "team-b": {"quota": {"GPU": 2}, "cohort": "research"},
        "solo": {"quota": {"GPU": 1}},
    }
}


def gpus(n: int) -> GangSpec:
    return GangSpec(tuple({"CPU": 1.0, "GPU": 1.0} for _ in range(n)), "PACK")


def queue_with(definitions: dict | None = None) -> AdmissionQueue:
    return AdmissionQueue(quotas=Quotas(QueuesFile.parse(definitions or {})))


def ask(q: AdmissionQueue, label: str, n: int, now: float = 0.0, **terms) -> None:
    terms.setdefault("preemptible", True)
    q.submit(label, gpus(n), label=label, now=now, **terms)


def granted(q: AdmissionQueue) -> list[str]:
    return [r.ticket for r in q.granted()]


def victims(q: AdmissionQueue) -> dict[str, int]:
    return {r.ticket: r.preempted_by["keep"] for r in q.granted() if r.preempted_by}


# --- quotas and borrowing -------------------------------------------------------------------------


def test_a_queue_alone_borrows_its_cohorts_idle_quota():
    q = queue_with(TEAMS)
    ask(q, "a1", 2, queue="team-a")
    ask(q, "a2", 2, queue="team-a")

    q.schedule(FOUR_GPUS, now=1.0)

    assert granted(q) == ["a1", "a2"]
    report = q.snapshot(FOUR_GPUS, now=2.0)["queues"]["team-a"]
    assert (report["quota"], report["uses"]["GPU"], report["borrows"]) == ({"GPU": 2.0}, 4.0, {"GPU": 2.0})


def test_a_queue_without_a_cohort_waits_at_its_quota_without_holding_other_queues():
    q = queue_with(TEAMS)
    ask(q, "s1", 1, queue="solo")
    ask(q, "s2", 1, queue="solo")
    ask(q, "s3", 1, queue="solo")  # behind s2 in its queue: waits with it
    ask(q, "b1", 1, queue="team-b")  # another queue: not held

    q.schedule(FOUR_GPUS, now=1.0)

    assert granted(q) == ["s1", "b1"]
    why = q.verdict("s2", FOUR_GPUS).reason
    assert why == "waiting for quota: queue solo uses 1 of 1 GPU and borrows from no cohort"
    assert q.verdict("s3", FOUR_GPUS).reason.startswith("waiting for quota: queue solo")


def test_borrowing_stops_at_the_borrowing_limit():
    q = queue_with(
        {
            "queues": {
                **TEAMS["queues"],
                "team-a": {"quota": {"GPU": 2}, "cohort": "research", "borrowing_limit": {"GPU": 1}},
            }
        }
    )
    ask(q, "a1", 2, queue="team-a")
    ask(q, "a2", 2, queue="team-a")

    q.schedule(FOUR_GPUS, now=1.0)

    assert granted(q) == ["a1"]
    assert "would pass its borrowing_limit of 1" in q.verdict("a2", FOUR_GPUS).reason


def test_the_default_queue_has_no_quota_and_orders_by_priority_as_before():
    q = queue_with()
    ask(q, "low", 4, priority=0)
    ask(q, "high", 4, priority=5)

    q.schedule(FOUR_GPUS, now=1.0)

    assert granted(q) == ["high"]


# --- preemption -----------------------------------------------------------------------------------


def test_a_higher_priority_gang_preempts_the_lowest_priority_most_recent_gang_and_takes_its_place():
    q = queue_with()
    ask(q, "old-low", 2, now=0.0, priority=0)
    q.schedule(FOUR_GPUS, now=1.0)
    ask(q, "new-low", 2, now=2.0, priority=0)
    q.schedule(FOUR_GPUS, now=3.0)
    ask(q, "urgent", 2, now=4.0, priority=10)
    q.schedule(FOUR_GPUS, now=4.0)

    marked = q.preempt(FOUR_GPUS, now=5.0)

    assert [r.ticket for r in marked] == ["new-low"]  # one is enough, and the most recent one
    assert q.requests["new-low"].preempted_by == {"label": "urgent", "priority": 10, "queue": "default", "keep": 0}
    assert q.preempt(FOUR_GPUS, now=6.0) == []  # nothing more while the victim still holds its gang
    q.release("new-low")
    q.schedule(FOUR_GPUS, now=7.0)
    assert granted(q) == ["old-low", "urgent"]
    assert q.verdict("urgent", FOUR_GPUS).displaced == ("new-low",)

    # The victim comes back at the front of its priority, ahead of one that came after it.
    ask(q, "later-low", 2, now=8.0, priority=0)
    q.submit("new-low-2", gpus(2), label="new-low", now=9.0)
    assert [r.ticket for r in q.waiting()] == ["new-low-2", "later-low"]


def test_nothing_is_preempted_when_it_would_not_make_the_waiting_gang_fit():
    q = queue_with()
    ask(q, "low", 2, priority=0)
    ask(q, "fixed", 2, priority=0, preemptible=False)
    q.schedule(FOUR_GPUS, now=1.0)
    ask(q, "urgent", 4, now=2.0, priority=10)  # needs both, and one cannot be preempted
    q.schedule(FOUR_GPUS, now=2.0)

    assert q.preempt(FOUR_GPUS, now=3.0) == []
    assert victims(q) == {}


def test_min_runtime_protects_a_gang_that_has_just_started():
    q = queue_with()
    ask(q, "low", 4, priority=0, min_runtime_s=60.0)
    q.schedule(FOUR_GPUS, now=0.0)
    ask(q, "urgent", 2, now=1.0, priority=10)
    q.schedule(FOUR_GPUS, now=1.0)

    assert q.preempt(FOUR_GPUS, now=30.0) == []
    assert [r.ticket for r in q.preempt(FOUR_GPUS, now=61.0)] == ["low"]


def test_equal_priority_never_preempts_within_a_queue():
    q = queue_with()
    ask(q, "first", 4)
    q.schedule(FOUR_GPUS, now=0.0)
    ask(q, "second", 4, now=1.0)
    q.schedule(FOUR_GPUS, now=1.0)

    assert q.preempt(FOUR_GPUS, now=2.0) == []


def test_an_elastic_gang_is_shrunk_to_its_minimum_before_anything_is_stopped():
    q = queue_with()
    ask(q, "fixed-low", 1, priority=0)
    ask(q, "elastic", 1, priority=1, min_bundles=1)
    q.schedule(TWO_GPUS, now=0.0)
    q.release("fixed-low")
    q.resize("elastic", gpus(2))  # it grew into the freed GPU
    ask(q, "urgent", 1, now=2.0, priority=5)
    q.schedule(TWO_GPUS, now=2.0)

    assert victims(q) == {} and [r.ticket for r in q.preempt(TWO_GPUS, now=3.0)] == ["elastic"]
    assert victims(q) == {"elastic": 1}  # shrunk, not stopped


def test_a_queue_reclaims_its_quota_from_a_borrower_whatever_its_priority():
    q = queue_with(TEAMS)
    ask(q, "a1", 2, queue="team-a", priority=50)
    q.schedule(FOUR_GPUS, now=0.0)
    ask(q, "a2", 2, now=1.0, queue="team-a", priority=50)  # borrows team-b's idle quota
    q.schedule(FOUR_GPUS, now=1.0)
    ask(q, "b1", 2, now=2.0, queue="team-b", priority=0)
    q.schedule(FOUR_GPUS, now=2.0)

    assert [r.ticket for r in q.preempt(FOUR_GPUS, now=3.0)] == ["a2"]  # the borrowed gang, not a1
    q.release("a2")
    q.schedule(FOUR_GPUS, now=4.0)
    assert granted(q) == ["a1", "b1"]

    # A's gang comes back and waits within its own quota, which A uses in full.
    q.submit("a2-again", gpus(2), label="a2", now=5.0, queue="team-a", preemptible=True, priority=50)
    q.schedule(FOUR_GPUS, now=5.0)
    assert "waiting for quota" in q.verdict("a2-again", FOUR_GPUS).reason
    assert q.preempt(FOUR_GPUS, now=6.0) == []  # b1 is within its quota: nothing to reclaim


def test_a_reclaimed_gang_back_in_the_queue_never_takes_the_room_it_gave_up():
    q = queue_with(TEAMS)
    ask(q, "a-big", 4, queue="team-a", priority=50)  # 2 of its own quota, 2 borrowed
    q.schedule(FOUR_GPUS, now=0.0)
    ask(q, "b1", 2, now=1.0, queue="team-b", priority=0)
    q.schedule(FOUR_GPUS, now=1.0)
    assert [r.ticket for r in q.preempt(FOUR_GPUS, now=2.0)] == ["a-big"]
    q.release("a-big")
    q.submit("a-big-2", gpus(4), label="a-big", now=3.0, queue="team-a", preemptible=True, priority=50)

    q.schedule(FOUR_GPUS, now=3.0)  # a-big comes first by priority, and would fit the freed GPUs

    assert granted(q) == ["b1"]
    q.schedule(FOUR_GPUS, now=3.5)  # the next pass: b1 started, so a-big waits for quota now
    assert q.verdict("a-big-2", FOUR_GPUS).reason.startswith("waiting for quota: queue team-a uses 0 of 2 GPU")
    assert q.preempt(FOUR_GPUS, now=4.0) == []  # nor does it preempt b1 back: it is past its own quota


def test_a_queue_with_preemption_never_is_never_preempted():
    q = queue_with({"queues": {"batch": {"preemption": "never"}}})
    ask(q, "batch-job", 4, queue="batch", priority=0)
    q.schedule(FOUR_GPUS, now=0.0)
    ask(q, "urgent", 2, now=1.0, queue="batch", priority=10)
    q.schedule(FOUR_GPUS, now=1.0)

    assert q.preempt(FOUR_GPUS, now=2.0) == []


def test_the_plan_picks_the_fewest_victims():
    candidates = [
        preemption.Candidate("small-old", 0, 1.0, 1),
        preemption.Candidate("small-new", 0, 2.0, 1),
        preemption.Candidate("big", 1, 0.5, 2),
    ]

    def fits(keep):  # the waiting gang needs 2 bundles back
        return sum({"small-old": 1, "small-new": 1, "big": 2}[t] - k for t, k in keep.items()) >= 2

    plan = preemption.plan(candidates, fits)

    assert [(e.ticket, e.keep) for e in plan] == [("small-new", 0), ("small-old", 0)]


# --- definitions ----------------------------------------------------------------------------------


def test_a_queue_file_with_an_unknown_key_or_resource_is_a_one_line_error():
    with pytest.raises(ConfigError, match="quotaa"):
        QueuesFile.parse({"queues": {"a": {"quotaa": {"GPU": 1}}}})
    with pytest.raises(ConfigError) as error:
        QueuesFile.parse({"queues": {"a": {"quota": {"gpu": 1}}}}).check_resources({"CPU", "GPU"})
    assert str(error.value) == "queues.a.quota: unknown resource 'gpu'; the cluster has CPU, GPU, memory"


def test_an_unknown_queue_names_the_valid_ones():
    quotas = Quotas(QueuesFile.parse(TEAMS))
    assert quotas.unknown("team-c") == (
        "admission.queue: no queue 'team-c' on this cluster; its queues are default, solo, team-a, team-b"
    )
    assert quotas.unknown("default") is None
