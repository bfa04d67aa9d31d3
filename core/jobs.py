"""Running a job in a worker thread and streaming its progress events, with a fair share of
the accelerator.

A diffusers pipeline is one blocking call. To stream a preview per step and stop within one
step, the call runs in a worker thread; its step callback reports progress through a
`JobContext` and checks for cancellation. The caller iterates a generator of events
(core.events); closing that generator (the UI's Stop, a dropped connection) or calling
`Job.cancel()` makes the worker raise `Cancelled` at its next step.

Sharing one accelerator among strangers (a public Space):

- `GpuSlot`: jobs take the accelerator one at a time, in the order they asked for it; a
  waiting job reports its place in the line and can be stopped while it waits.
- `JobLimits` (set on the engine by the app): how many jobs one owner and one client address
  may have in the engine at once (running or waiting), how many may wait in all, and how long
  one job may hold the accelerator. `JobRegistry.admit` refuses a job over a limit at once,
  with a message that says why; a job past its time limit is stopped like a Stop, with the
  reason in its `Cancelled` (`Cancelled.reason`).
- `JobKey`: the key a Stop reaches a job by (a page session), a `str`, carrying whose job it
  is for the limits (`owner`: whose library; `client`: the caller's network address).
"""
from __future__ import annotations

import collections
import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import Cancelled, UserError
from .events import Notice, Progress, Result

_ids = itertools.count(1)
_DONE = object()


class JobKey(str):
    """A Stop key (equal to the plain string), with whose job it is for the limits."""

    owner: str | None
    client: str | None

    def __new__(cls, key: str, *, owner: str | None = None, client: str | None = None):
        obj = super().__new__(cls, key)
        obj.owner, obj.client = owner, client
        return obj


@dataclass
class JobLimits:
    per_owner: int | None = None       # jobs (running or waiting) of one owner
    per_client: int | None = None      # jobs of one client address
    max_waiting: int | None = None     # jobs waiting for the accelerator, in all
    time_limit_s: float | None = None  # how long one job may hold the accelerator


@dataclass
class Job:
    stop_key: str  # what a Stop reaches the job by (a JobKey where the app knows whose job it is)
    kind: str
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None    # why it was stopped, when not by a Stop (a time limit)
    running: bool = False        # holds the accelerator (or never needed it)

    def cancel(self, reason: str | None = None) -> None:
        if reason and not self.cancelled.is_set():
            self.reason = reason
        self.cancelled.set()

    def stopped(self) -> Cancelled:
        exc = Cancelled(self.reason or f"{self.kind} stopped")
        exc.reason = self.reason
        return exc


class JobContext:
    """What the work function gets: report progress, check for cancellation."""

    def __init__(self, job: Job, events: "queue.Queue[Any]"):
        self.job = job
        self._events = events

    def check(self) -> None:
        if self.job.cancelled.is_set():
            raise self.job.stopped()

    def progress(self, step: int, total: int, message: str = "", preview=None,
                 **metrics: float) -> None:
        self.check()
        self._events.put(Progress(step, total, message, preview, dict(metrics)))

    def notice(self, message: str) -> None:
        self._events.put(Notice(message))

    def emit(self, event: Any) -> None:
        """Any other event (e.g. an intermediate Result)."""
        self._events.put(event)


class JobRegistry:
    """Jobs in the engine (running or waiting) by Stop key, so that a Stop button can reach
    the owner's job, and so that no one takes more than their share."""

    def __init__(self):
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def admit(self, job: Job, limits: JobLimits | None) -> None:
        """Register `job`, or raise `UserError` if it would go over a limit."""
        with self._lock:
            if limits is not None and job.id not in self._jobs:
                _check_limits(job, list(self._jobs.values()), limits)
            self._jobs[job.id] = job

    def remove(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)

    def running(self, stop_key: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if stop_key is None or j.stop_key == stop_key]

    def cancel(self, stop_key: str, reason: str | None = None) -> int:
        jobs = self.running(stop_key)
        for job in jobs:
            job.cancel(reason)
        return len(jobs)


def _check_limits(job: Job, others: list[Job], limits: JobLimits) -> None:
    owner, client = getattr(job.stop_key, "owner", None), getattr(job.stop_key, "client", None)
    if owner and limits.per_owner is not None:
        mine = [j for j in others if getattr(j.stop_key, "owner", None) == owner]
        if len(mine) >= limits.per_owner:
            raise UserError(f"You already have {_jobs_text(mine)} running or waiting; stop it or wait "
                            "for it to finish, then start this one.")
    if client and limits.per_client is not None:
        theirs = [j for j in others if getattr(j.stop_key, "client", None) == client]
        if len(theirs) >= limits.per_client:
            raise UserError(f"Your network address already has {len(theirs)} jobs running or waiting "
                            f"(at most {limits.per_client}); wait for one to finish.")
    if limits.max_waiting is not None:
        waiting = [j for j in others if not j.running]
        if len(waiting) >= limits.max_waiting:
            raise UserError(f"The studio is busy: {len(waiting)} jobs are waiting for the accelerator. "
                            "Try again in a few minutes.")


def _jobs_text(jobs: list[Job]) -> str:
    kinds = sorted({j.kind for j in jobs})
    return f"a job ({', '.join(kinds)})" if len(jobs) == 1 else f"{len(jobs)} jobs ({', '.join(kinds)})"


class GpuSlot:
    """The accelerator, held by one job at a time and handed out in arrival order."""

    def __init__(self):
        self._cond = threading.Condition()
        self._line: collections.deque[Job] = collections.deque()
        self._holder: Job | None = None

    def locked(self) -> bool:
        with self._cond:
            return self._holder is not None

    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    def acquire(self, job: Job, on_wait: Callable[[int], None] | None = None) -> None:
        """Wait for the slot (raising `Cancelled` if the job is stopped while it waits);
        `on_wait(n)` is told the number of jobs ahead whenever it changes."""
        told = None
        with self._cond:
            self._line.append(job)
            try:
                while self._holder is not None or self._line[0] is not job:
                    if job.cancelled.is_set():
                        raise job.stopped()
                    ahead = self._line.index(job) + (self._holder is not None)
                    if on_wait is not None and ahead != told:
                        told = ahead
                        on_wait(ahead)
                    self._cond.wait(timeout=0.1)
                if job.cancelled.is_set():
                    raise job.stopped()
                self._line.popleft()
                self._holder = job
            except BaseException:
                if job in self._line:
                    self._line.remove(job)
                self._cond.notify_all()
                raise

    def try_acquire(self, job: Job) -> bool:
        """Take the slot only if it is free and nobody is waiting (never waits)."""
        with self._cond:
            if self._holder is not None or self._line:
                return False
            self._holder = job
            return True

    def release(self, job: Job) -> None:
        with self._cond:
            if self._holder is job:
                self._holder = None
            self._cond.notify_all()


def time_limit_reason(seconds: float) -> str:
    minutes = seconds / 60
    span = f"{minutes:g} minutes" if minutes >= 1 else f"{seconds:g} seconds"
    return (f"Stopped: a job may use the accelerator for at most {span} on this shared instance "
            "(what it had finished is kept where the tab says so).")


def stream(work: Callable[[JobContext], Result], job: Job, registry: JobRegistry,
           lock: GpuSlot | threading.Lock | None = None,
           time_limit_s: float | None = None) -> Iterator[Progress | Notice | Result]:
    """Run `work(ctx)` in a worker thread (holding the slot `lock`, if given, and stopped after
    `time_limit_s` seconds in it) and yield its events, ending with the `Result` it returns.
    Progress events that pile up while the consumer is slow are coalesced: only the newest one
    is yielded."""
    events: "queue.Queue[Any]" = queue.Queue()
    ctx = JobContext(job, events)
    outcome: dict[str, Any] = {}

    def waiting(ahead: int) -> None:
        events.put(Progress(0, 0, f"Waiting for the accelerator: {ahead} job{'s' if ahead != 1 else ''} "
                                  "ahead of yours"))

    def run() -> None:
        timer = None
        try:
            if isinstance(lock, GpuSlot):
                lock.acquire(job, on_wait=waiting)
            elif lock is not None:
                while not lock.acquire(timeout=0.1):
                    ctx.check()
            job.running = True
            if time_limit_s:
                timer = threading.Timer(time_limit_s, job.cancel, kwargs={"reason": time_limit_reason(time_limit_s)})
                timer.daemon = True
                timer.start()
            try:
                ctx.check()
                outcome["result"] = work(ctx)
            finally:
                if timer is not None:
                    timer.cancel()
                if isinstance(lock, GpuSlot):
                    lock.release(job)
                elif lock is not None:
                    lock.release()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    registry.add(job)
    worker = threading.Thread(target=run, name=f"job-{job.kind}-{job.id}", daemon=True)
    worker.start()
    try:
        while True:
            item = events.get()
            if item is _DONE:
                break
            if isinstance(item, Progress):
                # skip stale progress if newer events are already waiting
                while True:
                    try:
                        nxt = events.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(nxt, Progress):
                        item = nxt
                        continue
                    yield item
                    item = nxt
                    break
                if item is _DONE:
                    break
            yield item
        if "error" in outcome:
            err = outcome["error"]
            if isinstance(err, Cancelled) and job.reason and not getattr(err, "reason", None):
                err.reason = job.reason  # stopped by the time limit inside a method's own check
            raise err
        yield outcome["result"]
    finally:
        job.cancel()  # no-op when finished; stops the worker when the consumer went away
        worker.join()
        registry.remove(job)
