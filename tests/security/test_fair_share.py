"""A fair share of the one accelerator: limits per owner and per address, a bounded line,
arrival order, a time limit per job, and a Stop that reaches a waiting job."""
from __future__ import annotations

import threading
import time

import pytest

from core.errors import Cancelled, UserError
from core.events import Result
from core.jobs import GpuSlot, Job, JobKey, JobLimits, JobRegistry, stream


def key(session, owner=None, client=None):
    return JobKey(f"session:{session}", owner=owner, client=client)


def test_job_keys_are_the_stop_keys():
    k = key("a", owner="visitor:1", client="10.0.0.1")
    assert k == "session:a" and {k: 1}["session:a"] == 1
    assert k.owner == "visitor:1" and k.client == "10.0.0.1"


def test_admission_limits():
    reg, limits = JobRegistry(), JobLimits(per_owner=1, per_client=2, max_waiting=3)
    reg.admit(Job(key("a", "visitor:1", "ip1"), "train-dreambooth"), limits)
    with pytest.raises(UserError, match="You already have a job \\(train-dreambooth\\)"):
        reg.admit(Job(key("b", "visitor:1", "ip9"), "generate"), limits)        # same owner, other page
    reg.admit(Job(key("c", "visitor:2", "ip1"), "generate"), limits)            # same address, 2nd owner
    with pytest.raises(UserError, match="network address already has 2 jobs"):
        reg.admit(Job(key("d", "visitor:3", "ip1"), "generate"), limits)        # minted ids do not help
    reg.admit(Job(key("e", "visitor:4", "ip2"), "generate"), limits)
    with pytest.raises(UserError, match="busy: 3 jobs are waiting"):
        reg.admit(Job(key("f", "visitor:5", "ip3"), "generate"), limits)
    assert len(reg.running()) == 3
    reg.admit(Job("local", "generate"), None)  # a private instance: no limits


def test_the_slot_is_handed_out_in_arrival_order_and_reports_the_line():
    slot, order, told = GpuSlot(), [], {}
    first = Job("a", "x")
    slot.acquire(first)
    jobs = [Job(f"j{i}", "x") for i in range(4)]
    threads = []
    for i, j in enumerate(jobs):
        def take(j=j):
            slot.acquire(j, on_wait=lambda n, j=j: told.setdefault(j.stop_key, n))
            order.append(j.stop_key)
            slot.release(j)
        t = threading.Thread(target=take)
        t.start()
        threads.append(t)
        while slot.waiting() < i + 1:  # each one in the line before the next arrives
            time.sleep(0.005)
    assert slot.locked() and not slot.try_acquire(Job("w", "webcam"))  # a frame never jumps the line
    slot.release(first)
    for t in threads:
        t.join(5)
    assert order == ["j0", "j1", "j2", "j3"]
    assert told == {"j0": 1, "j1": 2, "j2": 3, "j3": 4}  # jobs ahead, the holder included
    assert not slot.locked() and slot.waiting() == 0 and slot.try_acquire(Job("w", "webcam"))


def test_a_waiting_job_can_be_stopped_and_leaves_the_line():
    slot, reg = GpuSlot(), JobRegistry()
    holder = Job("a", "x")
    slot.acquire(holder)
    waiting = Job("b", "x")
    events = stream(lambda ctx: Result(info={"ran": True}), waiting, reg, lock=slot)
    first = next(events)  # "Waiting for the accelerator: 1 job ahead of yours"
    assert "1 job ahead" in first.message
    assert reg.cancel("b") == 1
    with pytest.raises(Cancelled):
        list(events)
    assert slot.waiting() == 0
    slot.release(holder)
    assert not slot.locked()


def test_a_job_past_its_time_limit_is_stopped_with_the_reason():
    slot, reg = GpuSlot(), JobRegistry()
    ran = []

    def work(ctx):
        for i in range(1000):
            ctx.progress(i, 1000, "working")
            ran.append(i)
            time.sleep(0.01)
        return Result()

    started = time.monotonic()
    with pytest.raises(Cancelled) as err:
        list(stream(work, Job("a", "train"), reg, lock=slot, time_limit_s=0.3))
    assert time.monotonic() - started < 3 and 5 < len(ran) < 200
    assert err.value.reason and "at most 0.3 seconds" in err.value.reason
    assert not slot.locked() and reg.running() == []
