"""Best of N for Personalize generation (issue 18): a DreamBooth subject, with a library style or
without, N candidates per prompt in one batch, ranked by the papers' measures (core/ranking.py).

What each candidate is scored against:

* **text**: the CLIP text score of the candidate with the prompt it was made from;
* **content**: DINO similarity to the subject's images. The library does not keep the photos a
  subject was trained on (core/train.py keeps the adapter and its validation samples, not the
  instance images), so the subject's images here are its adapter's samples: the images the
  trained adapter made of the instance prompt "a [V] [class]" (all its samples when none has
  that prompt). An adapter without samples (an imported LoRA) gives none; no subject image at
  all: the content measure is absent.
* **style** (a library style on): DINO similarity to the style's images: a saved style's source
  images, a StyleDrop adapter's loop style image(s), a B-LoRA's training image; an imported LoRA
  has none, and the measure is absent.

Candidate i of a run with seed s is the ordinary run (N = 1) with seed s + i
(core.ranking.candidate_latents), so a pick is reproducible by its seed alone.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from PIL import Image

from . import library, ranking, style_aligned, styles
from .errors import UserError
from .events import Result
from .images import load_image

MAX_BATCH = 16  # images in one generation call (candidates x prompts)
REFERENCE_SIDE = 512


def subject_references(engine, adapter_ids: Sequence[int], owner: Any) -> list[Image.Image]:
    """The subject's images (see the module docstring): for each adapter, its samples of its
    instance prompt (all its samples when none has that prompt)."""
    store = library.get_store(engine)
    out: list[Image.Image] = []
    for aid in adapter_ids:
        a = store.get_adapter(int(aid), owner)
        instance = a.extra.get("instance_prompt")
        samples = [s for s in a.samples if instance and s.prompt == instance] or list(a.samples)
        out += [im for im in (_image(s.file.path) for s in samples) if im is not None]
    return out


def style_references(engine, style: styles.LibraryStyle | None, owner: Any) -> list[Image.Image]:
    """A library style's images (`styles.images_of`: a saved style's source images, a StyleDrop
    adapter's loop style image(s), a B-LoRA's training image); [] when it has none to show."""
    if style is None:
        return []
    found = styles.images_of(engine, style, owner=owner)
    return [im for im in (p if isinstance(p, Image.Image) else _image(p) for p in found) if im is not None]


def _image(path) -> Image.Image | None:
    try:
        return load_image(path, what="sample", max_side=REFERENCE_SIDE)
    except UserError:
        return None


def generate(engine, prompts: Sequence[str], weights: Mapping[int, float], *, style: styles.LibraryStyle | None,
             style_weight: float = 1.0, owner: Any, stop_key: str | None = None, candidates: int = 1,
             preference: float = 0.5, metrics=None, seed: int = 0, **kwargs):
    """`core.styles.generate` (the subject's adapters, a library style if any) with N candidates
    of every prompt in one batch, each prompt's ranked best first by `metrics` with `preference`
    (0 = the subject's images, 1 = the style's; core/ranking.py); info["ranking"] has one record
    per image (seed, measures, score, rank, caption). N = 1 is the ordinary run. A saved style
    with only images (no adapter): `style_aligned.aligned_generate`, one candidate."""
    n = ranking.check_candidates(candidates)
    p = ranking.check_preference(preference)
    if style is not None and style.adapter_id is None and styles.reference_of(style) is not None:
        # a saved style with only images: a Style-Aligned set to its image (one candidate)
        return style_aligned.aligned_generate(engine, prompts, weights, style=style, style_weight=style_weight,
                                              owner=owner, stop_key=stop_key, seed=seed, candidates=n, **kwargs)
    if n == 1:
        return styles.generate(engine, prompts, weights, style=style, style_weight=style_weight, owner=owner,
                               stop_key=stop_key, seed=seed, **kwargs)
    if metrics is None:
        raise UserError("Best of N needs the scoring models (CLIP, DINO); this instance has none.")
    count = len([q for q in prompts if q and q.strip()])
    if count * n > MAX_BATCH:
        raise UserError(f"Candidates (best of N): {n} candidates of {count} prompts make {count * n} images; at most "
                        f"{MAX_BATCH} at a time (fewer candidates or prompts).")
    references = {"content": subject_references(engine, list(weights), owner),
                  "style": style_references(engine, style, owner)}
    references = {k: imgs for k, imgs in references.items() if imgs}
    seeds = ranking.candidate_seeds(seed, n)

    def ranker(images, filled):
        return ranking.rank_candidates(metrics, images, filled, seeds, references=references, preference=p)

    events = styles.generate(engine, prompts, weights, style=style, style_weight=style_weight, owner=owner,
                             stop_key=stop_key, seed=seed, candidates=n, ranker=ranker, **kwargs)
    return _noting(events, {"preference": p, "references": {k: len(v) for k, v in references.items()}})


def _noting(events, more: Mapping[str, Any]):
    """The job's events, its Result's info with `more` added (closing the job's stream when the
    caller closes this one: a page gone, a Stop)."""
    try:
        for ev in events:
            if isinstance(ev, Result):
                ev.info.update(more)
            yield ev
    finally:
        events.close()


__all__ = ["MAX_BATCH", "subject_references", "style_references", "generate"]
