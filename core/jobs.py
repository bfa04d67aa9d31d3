"""Running a job in a worker thread and streaming its progress events.

A diffusers pipeline is one blocking call. To stream a preview per step and stop within one
step, the call runs in a worker thread; its step callback reports progress through a
`JobContext` and checks for cancellation. The caller iterates a generator of events
(core.events); closing that generator (the UI's Stop, a dropped connection) or calling
`Job.cancel()` makes the worker raise `Cancelled` at its next step.
"""
from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import Cancelled
from .events import Notice, Progress, Result

_ids = itertools.count(1)
_DONE = object()


@dataclass
class Job:
    owner: str
    kind: str
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class JobContext:
    """What the work function gets: report progress, check for cancellation."""

    def __init__(self, job: Job, events: "queue.Queue[Any]"):
        self.job = job
        self._events = events

    def check(self) -> None:
        if self.job.cancelled.is_set():
            raise Cancelled(f"{self.job.kind} stopped")

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
    """Running jobs by owner, so that a Stop button can reach the owner's job."""

    def __init__(self):
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def remove(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)

    def running(self, owner: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if owner is None or j.owner == owner]

    def cancel(self, owner: str) -> int:
        jobs = self.running(owner)
        for job in jobs:
            job.cancel()
        return len(jobs)


def stream(work: Callable[[JobContext], Result], job: Job, registry: JobRegistry,
           lock: threading.Lock | None = None) -> Iterator[Progress | Notice | Result]:
    """Run `work(ctx)` in a worker thread (holding `lock`, if given) and yield its events,
    ending with the `Result` it returns. Progress events that pile up while the consumer is
    slow are coalesced: only the newest one is yielded."""
    events: "queue.Queue[Any]" = queue.Queue()
    ctx = JobContext(job, events)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            if lock is not None:
                while not lock.acquire(timeout=0.1):
                    ctx.check()
            try:
                ctx.check()
                outcome["result"] = work(ctx)
            finally:
                if lock is not None:
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
            raise outcome["error"]
        yield outcome["result"]
    finally:
        job.cancel()  # no-op when finished; stops the worker when the consumer went away
        worker.join()
        registry.remove(job)
