"""What the store's modules share: the records a `Store` returns, the `ALL` viewer, the rating
rule and a few small helpers (JSON columns, timestamps, safe file names). See core/store.py."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


class _All:
    def __repr__(self) -> str:
        return "ALL"


ALL = _All()  # viewer that sees everything: maintenance and tests only, never a visitor


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class StoredFile:
    id: int
    path: Path
    kind: str
    owner: str
    published: bool
    created: float
    size: int
    sha256: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    file: StoredFile
    prompt: str


@dataclass(frozen=True)
class Adapter:
    id: int
    name: str
    method: str
    base_model: str
    arch: str
    trigger_words: str
    class_name: str
    rank: int | None
    steps: int | None
    hyperparameters: dict
    extra: dict
    created: float
    owner: str
    published: bool
    path: Path  # the diffusers-format safetensors file; `pipe.load_lora_weights(str(path))` reads it
    size: int
    sha256: str
    samples: tuple[Sample, ...] = ()

    @property
    def parts(self) -> dict[str, list[str]]:
        """Named subsets of the keys (B-LoRA: {"content": [...], "style": [...]}), or {}."""
        return dict(self.extra.get("parts") or {})


@dataclass(frozen=True)
class StyleEntry:
    """A style of its own in the library (issue 18): its source images, a text descriptor, and
    whichever forms of it exist: a library adapter that carries it (StyleDrop, a B-LoRA's style
    half, an imported LoRA), a Style-Aligned reference image with the prompt that describes it."""
    id: int
    name: str
    owner: str
    published: bool
    base_model: str
    descriptor: str
    source: str                      # the tab it was saved from ("styledrop", "blora", ...)
    adapter_id: int | None
    reference_prompt: str
    images: tuple[Path, ...]         # the source images, in order
    reference: Path | None           # the Style-Aligned reference image, when there is one
    extra: dict
    created: float


@dataclass(frozen=True)
class Loop:
    id: int
    name: str
    owner: str
    published: bool
    base_model: str
    style_image: Path | None
    content_description: str
    style_descriptor: str
    extra: dict
    created: float


@dataclass(frozen=True)
class Round:
    id: int
    loop_id: int
    number: int
    adapter_id: int | None
    metrics: dict
    extra: dict
    created: float


@dataclass(frozen=True)
class Candidate:
    id: int
    round_id: int
    position: int
    path: Path
    prompt: str
    seed: int | None
    scores: dict
    created: float


@dataclass(frozen=True)
class CandidateScore:
    candidate_id: int
    up: int
    down: int

    @property
    def net(self) -> int:
        return self.up - self.down

    @property
    def votes(self) -> int:
        return self.up + self.down


@dataclass
class RecoveryReport:
    ran: bool = False
    temp_files_removed: list[str] = field(default_factory=list)
    orphan_files_removed: list[str] = field(default_factory=list)
    rows_dropped: list[str] = field(default_factory=list)  # "kind id path" of rows whose file was missing


def combine_ratings(ratings: Iterable[tuple[int, str, int]]) -> dict[int, CandidateScore]:
    """Net-score rule: per candidate, count each rater's latest +1/-1 once; net = ups - downs.

    `ratings` are (candidate_id, rater, value) rows; a later row of the same rater replaces an
    earlier one, as the table's upsert does.
    """
    latest: dict[tuple[int, str], int] = {}
    for cand, rater, value in ratings:
        if value not in (-1, 1):
            raise ValueError(f"rating must be +1 or -1, got {value!r}")
        latest[(cand, rater)] = value
    ups: dict[int, int] = {}
    downs: dict[int, int] = {}
    for (cand, _), v in latest.items():
        (ups if v > 0 else downs)[cand] = (ups if v > 0 else downs).get(cand, 0) + 1
    return {c: CandidateScore(c, ups.get(c, 0), downs.get(c, 0)) for c in set(ups) | set(downs)}


# --------------------------------------------------------------------------- helpers

def now() -> float:
    return time.time()


def to_json(obj: Any) -> str:
    return json.dumps(obj if obj is not None else {}, sort_keys=True, default=str)


def from_json(s: str | None) -> Any:
    return json.loads(s) if s else {}


def safe_filename(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip(" ._") or "adapter"
    return name[:80]
