"""When an optimisation loop may stop to show its work, and where its time goes.

`PreviewPacer`: a loop that writes a preview (an SVG and its PNG, a decoded image) every few
steps can spend more time on previews than on the work when the steps are fast: VectorFusion
at 75 SDS steps on 64 px spent 28% of each iteration writing its SVG and PNG with a preview at
every step. The pacer keeps the steps' cadence (`every`) as the most frequent rhythm and, with
a `share`, lets a preview through only while previews have taken at most that share of the
loop's time so far, counting the one about to be made at the cost of the last. The first step
the caller asks about after `start` and the last step are always shown.

`PhaseTimer`: seconds per named phase of a loop (render, encode, UNet, backward, ...), for the
benchmarks; it waits for the device at each edge so CUDA figures are true. Loops take a timer
argument whose default, `untimed`, costs nothing.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator


class PreviewPacer:
    """`pacer.due(step, last=...)` says whether to preview now; `with pacer.showing(): ...`
    around the preview measures what it costs."""

    def __init__(self, every: int = 1, share: float | None = None, clock: Callable[[], float] = time.perf_counter):
        if share is not None and not 0 < share <= 1:
            raise ValueError("the preview share is a fraction in (0, 1]")
        self.every, self.share, self.clock = max(1, int(every)), share, clock
        self.start = clock()
        self.spent = 0.0          # seconds in previews so far
        self.last_cost = 0.0      # seconds the last preview took
        self.shown = 0

    def due(self, step: int, *, last: bool = False) -> bool:
        if last or self.shown == 0:
            return True
        if step % self.every:
            return False
        if self.share is None:
            return True
        elapsed = self.clock() - self.start
        return self.spent + self.last_cost <= self.share * (elapsed + self.last_cost)

    @contextmanager
    def showing(self) -> Iterator[None]:
        t = self.clock()
        try:
            yield
        finally:
            self.last_cost = self.clock() - t
            self.spent += self.last_cost
            self.shown += 1


class PhaseTimer:
    """`timer = PhaseTimer(device)`; `with timer("unet"): ...`; `timer.seconds` per phase and
    `timer.split()` as fractions of their sum."""

    def __init__(self, device=None):
        import torch

        self._sync = (torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda"
                      else (lambda: None))
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - t

    def split(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1.0
        return {k: v / total for k, v in self.seconds.items()}


def untimed(name: str):
    """The timer loops use by default: no waiting, no figures."""
    return nullcontext()
