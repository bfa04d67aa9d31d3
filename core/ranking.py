"""Best-of-N ranking (issue 18): score N candidates of one prompt with the papers' own measures
and order them by a user preference between content and style.

The measures (core/metrics.py, the evaluation measures of the Style-Aligned and B-LoRA papers):

* ``text``: CLIP text-image cosine similarity of a candidate with its prompt;
* ``content``: DINO ViT-B/8 cosine similarity with the content image(s) (absent without one);
* ``style``: DINO ViT-B/8 cosine similarity with the style image(s) (absent without one).

The combined score, with the preference ``p`` in [0, 1] (0 = content only, 1 = style only):

    score_i = text_weight * n(text)_i + (1 - p) * n(content)_i + p * n(style)_i

where ``n(x)_i = (x_i - min_j x_j) / (max_j x_j - min_j x_j)`` normalises a measure over the N
candidates to [0, 1] (0 for every candidate when the N values are all equal, e.g. N = 1), and an
absent measure contributes 0. ``text_weight`` is 1 by default: prompt adherence always counts as
much as the content and style terms together. The candidates come back best first (highest
score; equal scores in their original order).

Seeds: the caller gives each candidate the seed that regenerates it. In B-LoRA (core/blora.py)
and Personalize (core/best_of.py) candidate i of a run with seed ``base`` is exactly the image
an ordinary run with seed ``base + i`` gives (`candidate_seeds`, `candidate_latents`), so a pick
is reproducible by its seed alone; StyleDrop's grid (core/styledrop.py) keeps each candidate's
seed in the store.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from PIL import Image

from .errors import UserError

MAX_CANDIDATES = 8
MEASURES = ("text", "content", "style")


@dataclass(frozen=True)
class Ranked:
    """One candidate as the ranking scored it: its seed, its index among the N images given,
    each measure (None when absent), its normalised measures' combination, and its place."""

    seed: int
    index: int
    text: float
    content: float | None
    style: float | None
    score: float
    rank: int  # 1 = best

    def as_info(self) -> dict:
        return asdict(self)

    def caption(self) -> str:
        """"#1 · seed 12 · text 0.312 · content 0.801 · style 0.455 · score 1.62" (absent measures left out)."""
        parts = [f"#{self.rank}", f"seed {self.seed}", f"text {self.text:.3f}"]
        parts += [f"{m} {getattr(self, m):.3f}" for m in ("content", "style") if getattr(self, m) is not None]
        return " · ".join([*parts, f"score {self.score:.2f}"])


def check_candidates(n, field: str = "Candidates (best of N)") -> int:
    """N, a whole number from 1 to MAX_CANDIDATES (core callers; handlers use core.validate)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CANDIDATES:
        raise UserError(f"{field} must be from 1 to {MAX_CANDIDATES} (got {n!r}).")
    return n


def check_preference(p, field: str = "Preference: content ↔ style") -> float:
    """The preference, a number from 0 (content) to 1 (style)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise UserError(f"{field} must be from 0 (content) to 1 (style) (got {p!r}).")
    return float(p)


def normalised(values: Sequence[float]) -> list[float]:
    """Min-max normalisation over the candidates: the lowest 0, the highest 1; all 0 when equal."""
    lo, hi = min(values), max(values)
    return [0.0] * len(values) if hi <= lo else [(x - lo) / (hi - lo) for x in values]


def combine(text: Sequence[float], content: Sequence[float] | None, style: Sequence[float] | None,
            preference: float, text_weight: float = 1.0) -> list[float]:
    """The combined score of each candidate (the module docstring's formula)."""
    weights = {"text": text_weight, "content": 1.0 - preference, "style": preference}
    scores = [0.0] * len(text)
    for name, values in (("text", text), ("content", content), ("style", style)):
        if values is None:
            continue
        scores = [s + weights[name] * x for s, x in zip(scores, normalised(values))]
    return scores


def rank(metrics, images: Sequence[Image.Image], seeds: Sequence[int], prompt: str, *,
         content_images: Sequence[Image.Image] = (), style_images: Sequence[Image.Image] = (),
         preference: float = 0.5, text_weight: float = 1.0) -> list[Ranked]:
    """Score each candidate image (its seed alongside) against `prompt` and the content and style
    images with `metrics` (a core.metrics.Metrics), combine with `preference` (0 = content,
    1 = style) and return them best first."""
    if len(images) != len(seeds) or not images:
        raise ValueError("one seed per candidate image, at least one image")
    check_preference(preference)
    text = metrics.clip_text_scores(list(images), [prompt] * len(images))
    content = metrics.dino_similarity(list(images), list(content_images)) if content_images else None
    style = metrics.dino_similarity(list(images), list(style_images)) if style_images else None
    return rank_scores(text, content, style, seeds, preference=preference, text_weight=text_weight)


def rank_scores(text: Sequence[float], content: Sequence[float] | None, style: Sequence[float] | None,
                seeds: Sequence[int], *, preference: float = 0.5, text_weight: float = 1.0) -> list[Ranked]:
    """`rank` on measures already taken (one value per candidate; None: the measure is absent),
    e.g. scores kept in the store with each candidate (StyleDrop's grid): best first."""
    if not (len(text) == len(seeds) and (content is None or len(content) == len(seeds))
            and (style is None or len(style) == len(seeds))) or not seeds:
        raise ValueError("one value of each measure and one seed per candidate, at least one candidate")
    check_preference(preference)
    scores = combine(text, content, style, preference, text_weight)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep their order
    return [Ranked(seed=int(seeds[i]), index=i, text=text[i], content=None if content is None else content[i],
                   style=None if style is None else style[i], score=round(scores[i], 6), rank=place + 1)
            for place, i in enumerate(order)]


# --------------------------------------------------------------------------- N candidates in one batch

def candidate_seeds(seed: int, n: int) -> list[int]:
    """The seeds of N candidates: candidate i is what an ordinary run (N = 1) with seed
    `seed + i` gives (its prompt k with seed + i + k, as every batch), so a pick is
    reproducible by its seed alone."""
    return [int(seed) + i for i in range(int(n))]


def candidate_latents(engine, seed: int, n: int, n_prompts: int, width: int, height: int):
    """Starting noise of N candidates of `n_prompts` prompts in one batch, candidate-major (image
    i * n_prompts + k is candidate i of prompt k): each candidate's block is the noise of an
    ordinary run with its seed (`engine.initial_latents`)."""
    import torch

    return torch.cat([engine.initial_latents(n_prompts, s, width, height) for s in candidate_seeds(seed, n)])


def rank_candidates(metrics, images: Sequence[Image.Image], prompts: Sequence[str], seeds: Sequence[int], *,
                    references: dict[str, Sequence[Image.Image]], preference: float
                    ) -> tuple[list[Image.Image], list[dict]]:
    """Each prompt's candidates ranked (`rank`) from the candidate-major batch `images`, against
    `references` ("content" and "style" images; a missing key: that measure is absent): (the
    images, prompt by prompt, each prompt's best first; one record per image in that order)."""
    out_images, records = [], []
    for k, prompt in enumerate(prompts):
        mine = [images[i * len(prompts) + k] for i in range(len(seeds))]
        ranked = rank(metrics, mine, seeds, prompt, content_images=references.get("content", ()),
                      style_images=references.get("style", ()), preference=preference)
        for r in ranked:
            out_images.append(mine[r.index])
            records.append({**r.as_info(), "prompt": prompt, "prompt_index": k, "caption": r.caption()})
    return out_images, records


@dataclass(frozen=True)
class RankedSet:
    """One candidate set (Style-Aligned) as the ranking scored it: its seed (the ordinary run with
    it gives this set), its index among the N, the mean CLIP text score of its images, its DINO
    consistency (mean pairwise similarity), the combined score, and its place."""

    seed: int
    index: int
    text: float
    consistency: float | None
    score: float
    rank: int  # 1 = best

    def as_info(self) -> dict:
        return asdict(self)

    def caption(self) -> str:
        parts = [f"set #{self.rank}", f"seed {self.seed}", f"text {self.text:.3f}"]
        if self.consistency is not None:
            parts.append(f"consistency {self.consistency:.3f}")
        return " · ".join([*parts, f"score {self.score:.2f}"])


def rank_sets(text: Sequence[float], consistency: Sequence[float | None], seeds: Sequence[int],
              preference: float = 0.5) -> list[RankedSet]:
    """N candidate sets, best first, by the Style-Aligned paper's two measures: the mean CLIP text
    score of a set's images (each image shows its prompt: the content side) and its DINO
    consistency (the style side), each min-max normalised over the N (as `normalised`), then

        score_i = (1 - p) * n(text)_i + p * n(consistency)_i

    with the preference p in [0, 1] (0 = prompts only, 1 = consistency only); a set of one image
    has no consistency (None), which counts 0. Equal scores keep their order."""
    if not (len(text) == len(consistency) == len(seeds)) or not seeds:
        raise ValueError("one text score, consistency and seed per set, at least one set")
    p = check_preference(preference, "Preference: prompts ↔ consistency")
    have = [c for c in consistency if c is not None]
    cons = normalised([0.0 if c is None else c for c in consistency]) if len(have) == len(consistency) else \
        [0.0] * len(consistency)
    scores = [(1 - p) * t + p * c for t, c in zip(normalised(list(text)), cons)]
    order = sorted(range(len(seeds)), key=lambda i: -scores[i])
    return [RankedSet(seed=int(seeds[i]), index=i, text=float(text[i]), consistency=consistency[i],
                      score=round(scores[i], 6), rank=place + 1) for place, i in enumerate(order)]


__all__ = ["MAX_CANDIDATES", "MEASURES", "Ranked", "RankedSet", "rank", "rank_scores", "rank_sets", "combine",
           "normalised", "check_candidates", "check_preference", "candidate_seeds", "candidate_latents",
           "rank_candidates"]
