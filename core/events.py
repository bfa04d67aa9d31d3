"""Progress events that core generators yield and tabs render.

Every long operation in `core/` is a generator of these. The tabs never look inside the
model code: they only turn events into widget updates. The trainer (core/train.py) adds three of
its own: `TrainStep` every optimizer step, `TrainSamples` and `Checkpointed`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Progress:
    """One step of a long job; `preview` is an optional cheap image of the current state."""

    step: int
    total: int
    message: str = ""
    preview: list[Image.Image] | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


@dataclass
class Result:
    """The outcome of a job: images and/or files plus a dict of extra information."""

    images: list[Image.Image] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


@dataclass
class Notice:
    """Something the user should know that is not an error (e.g. a prompt was truncated)."""

    message: str


# --------------------------------------------------------------------------- training

@dataclass
class TrainStep:
    """One optimizer step (never coalesced, so a loss plot sees every point)."""

    step: int
    total: int
    loss: float
    lr: float
    instance_loss: float
    prior_loss: float | None = None
    seconds: float = 0.0

    @property
    def message(self) -> str:
        return f"Training step {self.step}/{self.total}: loss {self.loss:.4f}"


@dataclass
class TrainSamples:
    """Validation samples generated with the adapter being trained."""

    step: int
    images: list[Image.Image]
    prompts: list[str]


@dataclass
class Checkpointed:
    """A training checkpoint was written at `step` (its folder is `path`)."""

    step: int
    path: str
