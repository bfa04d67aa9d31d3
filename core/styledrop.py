"""StyleDrop (Sohn et al., NeurIPS 2023) on the shared trainer: adapter tuning on one style
image, then feedback rounds.

The paper's base model (Muse, a masked transformer) is not public; like the Style-Aligned paper's
SDRP-SDXL baseline (arXiv 2312.02133, Sec. 4.2) we tune a small adapter on the SDXL (or SD 1.5)
UNet, predicting noise where Muse predicts token logits.

**What is the paper's** (source: arXiv 2306.00983, the ar5iv text)

* The adapter (App. B.1.1, Fig. S1), the default form "gelu": after the feed-forward of every
  transformer block, out' = out + U GELU(D out), D: r x d truncated normal std 0.02 (cut at 2
  std, as flax's truncated normal), U: d x r zeros (the identity at step 0), no bias; GELU the
  tanh approximation (`jax.nn.gelu`'s default, as Fig. S1 calls it). Only D and U train
  (2 r d per block). It is not a LoRA: core/styledrop_adapter.py hooks it onto the resident
  UNet's `ff` modules for the job and removes the hooks after (the UNet is never changed); the
  library keeps D and U with the tag extra["adapter_form"] = "styledrop-gelu", and
  `library.adapters(engine).active` puts it on the same way for generation and feedback rounds.
* Training text "[content description] in [style descriptor] style" (Sec. 3.2.1); sampling
  prompts "[new content] in [style descriptor] style".
* Adapter guidance (Eq. 4), `lambdas=(lambda_A, lambda_B)`: G^(t) + lambda_A (G^(t) - G(t)) +
  lambda_B (G(t) - G(n)) on noise predictions, three UNet passes a step (`adapter_guidance`).
  Table S3: lambda_B = 5, lambda_A 0-2 (round 1), 2 (round 2). Without `lambdas`: plain CFG with
  the adapter on in both halves (what LoRA users know).
* CLIP feedback default (Sec. 3.3, 4.4.3): per content prompt, the one candidate with the best
  CLIP image-text score (k = 1, text weight 1, per prompt). Top-k / threshold on a mix with the
  CLIP style score stay options.
* Subject + style (Sec. 3.4, Eqs. 5-6), `generate_with_subject(mix="predictions")`:
  (1 - gamma) Eq. 4 of the style adapter on t + gamma Eq. 4 of the subject adapter on c (t without
  its style phrase); the paper's gamma 0.5-0.7. The subject is a DreamBooth LoRA here (the paper:
  a DreamBooth-trained adapter). `mix="weights"` (both adapters on at once) stays the API default.
* Each round trains a new adapter from scratch (Sec. 3.3, "iterative training ... trains a new
  adapter on images sampled from a previously trained adapter").

**What differs, and why**

* One adapter per block, after the feed-forward; the paper puts two per layer (after
  cross-attention and after the MLP, App. B.1.1), and round 1 shares them across layers
  (is_shared, d_prj 4). We follow the SDRP-SDXL baseline's single adapter after each FF.
* Round 2 trains on the liked candidates **plus** the style image(s) (the paper: the selected
  samples only) at the rank given (the paper: d_prj 32, not shared). Liked = net thumbs >= 1
  over all raters (CLIP counts as one).
* Defaults: 400 steps at lr 1e-4 (the SDRP-SDXL baseline), not 1000 at 3e-5 with batch 8 (Muse).
* The "linear" form (`form="linear"`), for A1111/ComfyUI: out' = out + U D (out - b) as a LoRA
  on `ff.net.2` (out = W2 h + b): lora_A = D W2 (parametrised, W2 frozen; only D and U train),
  lora_B = U; the bias term U D b is dropped in training too, so what is saved is what was
  trained. No GELU: a different adapter, trained separately. A plain LoRA on `ff.net.2` would
  not be this function class (its A is any r x d_ff matrix). `export_for_lora_loaders` writes a
  linear adapter exactly and a GELU one linearised (GELU(z) ~ z/2, see EXPORT_NOTE).

**Feedback rounds.** Round 1 trains on the style image. Its adapter generates a grid of
candidates over a list of content prompts; people (thumbs up/down) and CLIP rate them in the
store, each under its own rater key ("clip" for CLIP). The next round trains a fresh adapter on
the liked images (each with its own sampling prompt as training text) plus the original style
image(s). Every round keeps its adapter, candidates, ratings and metrics (mean CLIP text score,
mean CLIP style score) in the store.

**Best of N in the grid** (issue 18): each content prompt's samples are its N candidates, made in
one batch (sample j with seed + j, kept with the candidate, so `generate_candidates` with that
seed and one sample makes it again); the grid shows each prompt's candidates best first by the
CLIP text score against the DINO similarity to the style image(s), with the round's preference
(`grid_order`, core/ranking.py). Ratings are by candidate id, never by place in the grid.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import io
import os
import re
from typing import Any, Iterator, Mapping, Sequence

import torch
from PIL import Image

from . import library, ranking, styledrop_adapter
from .errors import UserError
from .events import Notice, Progress, Result
from .images import center_crop_resize, load_image
from .train import AdapterSpec, Example, Recipe, TrainSettings, Trainer, save_outcome

METHOD = "styledrop"
CLIP_RATER = "clip"
TARGETS = r".*transformer_blocks\.\d+\.ff\.net\.2"
MAX_STYLE_IMAGES = 8
MAX_CANDIDATES = 64
MAX_PROMPTS = 32
FORMS = ("gelu", "linear")  # the paper's adapter (default); the LoRA-compatible linear layer (A1111/ComfyUI)
DEFAULT_PREFERENCE = 0.5  # the grid's order (best of N, issue 18): 0 the CLIP text score, 1 DINO style similarity

# a varied set of objects, scenes and animals (editable in the UI)
DEFAULT_CONTENT_PROMPTS = [
    "a cat", "a house", "a bicycle", "a tree", "a cup of coffee", "a robot", "a flower", "a mountain lake",
    "a sailboat", "a guitar", "an owl", "a city street",
]

PRESETS: dict[str, dict[str, Any]] = {
    # the Style-Aligned paper's SDRP-SDXL baseline: 400 steps; lr 1e-4 (the paper's 3e-5 is for Muse + Adam,
    # 1000 steps, batch 8)
    "SDXL (SDRP-SDXL baseline, 400 steps)": dict(steps=400, learning_rate=1e-4, rank=4, batch_size=1,
                                                  gradient_checkpointing=True, sample_steps=30, guidance=5.0,
                                                  samples_per_prompt=1, prompts=8),
    "SD 1.5 (400 steps)": dict(steps=400, learning_rate=1e-4, rank=4, batch_size=1, gradient_checkpointing=False,
                               sample_steps=30, guidance=7.0, samples_per_prompt=1, prompts=8),
    "Quick test (tiny models)": dict(steps=8, learning_rate=1e-3, rank=4, batch_size=1, gradient_checkpointing=False,
                                     sample_steps=3, guidance=5.0, samples_per_prompt=1, prompts=4),
}


def default_preset(engine) -> str:
    if engine.offline:
        return "Quick test (tiny models)"
    return "SDXL (SDRP-SDXL baseline, 400 steps)" if engine.xl else "SD 1.5 (400 steps)"


# --------------------------------------------------------------------------- text

def _clean(text: str, what: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"[\x00-\x1f\x7f]", " ", text or "")).strip()
    if not text:
        raise UserError(f"Write the {what}.")
    if len(text) > limit:
        raise UserError(f"The {what} is too long (at most {limit} characters).")
    return text


def style_phrase(style_descriptor: str) -> str:
    """"in [style descriptor] style" (no doubled "style style")."""
    s = _clean(style_descriptor, "style descriptor (e.g. \"watercolor painting\")", 120)
    s = re.sub(r"^in\s+", "", s, flags=re.I) if re.search(r"\bstyle$", s, re.I) else s
    return f"in {s}" if re.search(r"\bstyle$", s, re.I) else f"in {s} style"


def training_text(content: str, style_descriptor: str) -> str:
    """The paper's training text: "[content description] in [style descriptor] style"."""
    return f"{_clean(content, 'content description of the style image', 150)} {style_phrase(style_descriptor)}"


sampling_prompt = training_text  # "[new content] in [style descriptor] style"


def content_of(prompt: str, style_descriptor: str) -> str:
    """The content part of a sampling prompt (what the CLIP text score compares against)."""
    suffix = " " + style_phrase(style_descriptor)
    return prompt[: -len(suffix)] if prompt.endswith(suffix) else prompt


def parse_prompts(text_or_list: str | Sequence[str]) -> list[str]:
    items = text_or_list.splitlines() if isinstance(text_or_list, str) else list(text_or_list)
    items = [re.sub(r"\s+", " ", p).strip() for p in items]
    items = [p for p in items if p]
    if not items:
        raise UserError("Write at least one content prompt (one per line, e.g. \"a cat\").")
    if len(items) > MAX_PROMPTS:
        raise UserError(f"{len(items)} content prompts given; at most {MAX_PROMPTS}.")
    return [_clean(p, "content prompt", 150) for p in items]


# --------------------------------------------------------------------------- the adapter

def adapter_spec(rank: int = 4, form: str = "gelu") -> AdapterSpec:
    """"gelu": the paper's module out + U GELU(D out), hooked on (core/styledrop_adapter.py);
    "linear": out + U D (out - b) as a LoRA on ff.net.2 (only D and U train), loadable by A1111/ComfyUI."""
    if not 1 <= int(rank) <= 128:
        raise UserError("The adapter rank must be between 1 and 128.")
    if form not in FORMS:
        raise UserError(f"The adapter form is one of {', '.join(FORMS)}.")
    if form == "gelu":
        return AdapterSpec(target_modules=styledrop_adapter.BLOCKS + r"\.ff", rank=int(rank),
                           module_adapter=styledrop_adapter.factory(rank))
    # trained as the paper's adapter without the GELU (only D and U), saved as a plain LoRA on ff.net.2
    return AdapterSpec(target_modules=TARGETS, rank=int(rank), init="gaussian",
                       down_parametrization=DownThroughW2)


def ff_out_layers(unet) -> dict[str, torch.nn.Linear]:
    """The FF output Linear (`ff.net.2`) of every transformer block, by module name (base layers)."""
    out = {}
    for name, mod in unet.named_modules():
        if re.fullmatch(TARGETS, name):
            base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
            if isinstance(base, torch.nn.Linear):
                out[name] = base
    return out


def param_count(unet, rank: int) -> int:
    """The stated formula: sum over transformer blocks of 2 r d (D: r x d, U: d x r)."""
    return sum(2 * int(rank) * lin.out_features for lin in ff_out_layers(unet).values())


def lora_numbers(unet, rank: int) -> int:
    """Numbers in the saved LoRA file: sum of r (d_ff + d) (lora_A = D W2 is r x d_ff)."""
    return sum(int(rank) * (lin.in_features + lin.out_features) for lin in ff_out_layers(unet).values())


class DownThroughW2(torch.nn.Module):
    """Parametrization of a LoRA down-projection: lora_A.weight = D @ W2, W2 the frozen FF weight.
    The trainable tensor is D (r x d); W2 is read from the base layer, not copied or trained."""

    def __init__(self, base: torch.nn.Linear, generator: torch.Generator | None = None):
        super().__init__()
        self._base = (base,)  # a tuple: not a submodule, so no second copy and no gradient
        self._gen = generator

    def forward(self, D: torch.Tensor) -> torch.Tensor:
        return D @ self._base[0].weight.to(D.dtype)

    def right_inverse(self, A: torch.Tensor) -> torch.Tensor:
        # the paper's initialisation of the down-projection: truncated normal, std 0.02
        D = torch.empty(A.shape[0], self._base[0].out_features, dtype=torch.float32)
        torch.nn.init.trunc_normal_(D, std=0.02, a=-0.04, b=0.04, generator=self._gen)
        return D.to(A.device, A.dtype)


# --------------------------------------------------------------------------- recipe

def make_recipe(engine, style: Sequence[tuple[Image.Image, str]], liked: Sequence[tuple[Image.Image, str]] = (),
                *, rank: int = 4, name: str = "", style_descriptor: str = "", round_number: int = 1,
                loop_id: int | None = None, liked_ids: Sequence[int] = (), form: str = "gelu") -> Recipe:
    """StyleDrop as a recipe: examples = style image(s) with "[content] in [style] style", plus
    (rounds >= 2) the liked candidates, each with its own sampling prompt."""
    if not style:
        raise UserError("A StyleDrop round needs the style image.")
    res = engine.resolution
    examples = [Example(center_crop_resize(im.convert("RGB"), res, res), text) for im, text in style]
    examples += [Example(center_crop_resize(im.convert("RGB"), res, res), text) for im, text in liked]
    described = {"gelu": "the paper's adapter out + U GELU(D out) after each block's feed-forward (forward "
                          "hooks); not a LoRA",
                 "linear": "linear adapter U(D out) on ff.net.2, saved as LoRA lora_A = D W2, lora_B = U "
                           "(bias term U D b dropped)"}
    return Recipe(method=METHOD, name=name or f"StyleDrop round {round_number}", examples=examples,
                  adapter=adapter_spec(rank, form), trigger_words=style_phrase(style_descriptor) if style_descriptor
                  else "", sample_prompts=[],
                  extra={"loop_id": loop_id, "round": round_number, "style_images": len(style),
                         "liked_candidates": list(liked_ids),
                         "adapter_form": styledrop_adapter.FORM if form == "gelu" else "linear",
                         "adapter_description": described.get(form, "")})


def store_of(engine):
    return library.get_store(engine)


def style_images(store, loop, owner) -> list[Image.Image]:
    """The loop's style image(s): the main one, then any extra ones."""
    imgs = []
    if loop.style_image is not None:
        imgs.append(load_image(loop.style_image, what="style image"))
    for p in store.get_image_set(_extra_style_key(loop.id), owner):
        imgs.append(load_image(p, what="style image"))
    return imgs


def _extra_style_key(loop_id: int) -> str:
    return f"styledrop-style|{int(loop_id)}"


def create_loop(engine, images: Sequence[Image.Image], *, owner: str, content_description: str,
                style_descriptor: str, name: str = ""):
    """A new feedback loop (no rounds yet) with its style image(s) in the store."""
    images = [im for im in images if im is not None]
    if not images:
        raise UserError("Upload a style image (one is enough; up to 8).")
    if len(images) > MAX_STYLE_IMAGES:
        raise UserError(f"{len(images)} style images; at most {MAX_STYLE_IMAGES}.")
    text = training_text(content_description, style_descriptor)
    store = store_of(engine)
    loop = store.create_loop(owner=owner, style_image=images[0].convert("RGB"),
                             name=(name or "").strip()[:100] or _clean(style_descriptor, "style descriptor"),
                             content_description=_clean(content_description, "content description"),
                             style_descriptor=_clean(style_descriptor, "style descriptor"),
                             base_model=library.base_model_id(engine),
                             extra={"training_text": text, "style_images": len(images)})
    if len(images) > 1:
        store.put_image_set(_extra_style_key(loop.id), [im.convert("RGB") for im in images[1:]], owner=owner)
    return loop


def training_set(store, loop_id: int, owner: str) -> tuple[list[tuple[Image.Image, str]],
                                                         list[tuple[Image.Image, str]], list[int], int]:
    """(style examples, liked examples, liked candidate ids, next round number) for the next round:
    round 1 trains on the style image(s) alone; round n+1 on the liked candidates of round n (net
    score >= 1 over all raters) plus the style image(s)."""
    loop = store.get_loop(loop_id, owner)
    text = training_text(loop.content_description, loop.style_descriptor)
    style = [(im, text) for im in style_images(store, loop, owner)]
    rounds = store.rounds(loop.id, owner)
    if not rounds:
        return style, [], [], 1
    last = rounds[-1]
    liked = store.liked(last.id, owner, min_net=1)
    if not liked:
        raise UserError(f"No candidate of round {last.number} is liked yet: give thumbs up to the images in the "
                        "style you want (or use CLIP feedback), then train the next round.")
    ex = [(load_image(c.path, what="candidate image"), c.prompt) for c in liked]
    return style, ex, [c.id for c in liked], last.number + 1


# --------------------------------------------------------------------------- candidates and scores

def _generate_grid(engine, ctx, adapter_id: int | None, owner, loop, contents: Sequence[str], *,
                   samples_per_prompt: int, seed: int, steps: int, guidance: float,
                   lambdas: tuple[float, float] | None = None):
    prompts = [sampling_prompt(c, loop.style_descriptor) for c in contents]
    items = []
    total = len(prompts) * samples_per_prompt
    with sampling(engine, {adapter_id: 1.0} if adapter_id else {}, owner, lambdas) as guidance_used:
        guidance = guidance if guidance_used is None else guidance_used
        for i, p in enumerate(prompts):
            imgs = engine.text_to_image(ctx, [p] * samples_per_prompt, seed=seed, steps=steps, guidance=guidance,
                                        message=f"Candidates {i * samples_per_prompt + 1}-"
                                                f"{(i + 1) * samples_per_prompt} of {total}:")
            items += [dict(image=im, prompt=p, seed=seed + j) for j, im in enumerate(imgs)]
    return items


def score_items(items: list[dict], contents_of: Sequence[str], style: Sequence[Image.Image], metrics) -> None:
    """CLIP text score (image vs its content prompt), CLIP style score (image vs the style image;
    the paper's CLIP feedback mixes the two) and DINO style similarity (image vs the style
    image(s), core.metrics.Metrics.dino_similarity: the grid's order, `grid_order`)."""
    if metrics is None or not items:
        return
    imgs = [it["image"] for it in items]
    text = metrics.clip_text_scores(imgs, list(contents_of))
    sty = metrics.clip_style_scores(imgs, list(style))
    dino = metrics.dino_similarity(imgs, list(style))
    for it, t, s, d in zip(items, text, sty, dino):
        it["scores"] = {"clip_text": float(t), "clip_style": float(s), "dino_style": float(d)}


def grid_order(cands, preference: float = DEFAULT_PREFERENCE) -> list[tuple[Any, ranking.Ranked | None]]:
    """A round's candidates as the grid shows them (best of N, issue 18): content prompts in the
    grid's order (by first position), each prompt's candidates (its N samples) best first by

        score = (1 - p) n(CLIP text score) + p n(DINO style similarity)

    (core.ranking.rank_scores; n: min-max over the prompt's candidates), p = `preference`. Each
    with its ranking record (place, seed, measures); None for a prompt whose candidates are not
    all scored (no scoring models), which keeps its stored order. A candidate keeps its id, so
    its ratings stay with it in any order."""
    p = ranking.check_preference(preference, "Grid order: prompt ↔ style")
    groups: dict[str, list] = {}
    for c in sorted(cands, key=lambda c: c.position):
        groups.setdefault(c.prompt, []).append(c)
    out: list[tuple[Any, ranking.Ranked | None]] = []
    for group in groups.values():
        if not all("clip_text" in c.scores for c in group):
            out += [(c, None) for c in group]
            continue
        style = [c.scores["dino_style"] for c in group] if all("dino_style" in c.scores for c in group) else None
        ranked = ranking.rank_scores([c.scores["clip_text"] for c in group], None, style,
                                     [c.seed if c.seed is not None else -1 for c in group], preference=p,
                                     text_weight=1 - p)
        out += [(group[r.index], r) for r in ranked]
    return out


def set_order(engine, round_id: int, *, owner: str, preference: float):
    """The preference of a round's grid order (`grid_order`), kept with the round (owner only;
    the next round starts with it). Returns the round."""
    p = ranking.check_preference(preference, "Grid order: prompt ↔ style")
    store = store_of(engine)
    rnd = store.get_round(int(round_id), owner)
    if store.get_loop(rnd.loop_id, owner).owner != owner:
        raise UserError("Only the loop's owner can set its grid's order; you can rate its candidates.")
    return store.update_round(rnd.id, owner, extra={"preference": p})


def round_metrics(cands) -> dict:
    """Mean CLIP text and style scores over a round's candidates."""
    t = [c.scores["clip_text"] for c in cands if "clip_text" in c.scores]
    s = [c.scores["clip_style"] for c in cands if "clip_style" in c.scores]
    out = {"candidates": len(cands)}
    if t:
        out["clip_text"] = round(sum(t) / len(t), 4)
    if s:
        out["clip_style"] = round(sum(s) / len(s), 4)
    return out


def _add_candidates(store, engine, round_id, owner, loop, items, metrics):
    style = style_images(store, loop, owner)
    score_items(items, [content_of(it["prompt"], loop.style_descriptor) for it in items], style, metrics)
    store.add_candidates(round_id, owner, items)
    cands = store.candidates(round_id, owner)
    return store.update_round(round_id, owner, metrics=round_metrics(cands))


# --------------------------------------------------------------------------- adapter guidance (Eq. 4)

def eq4(uncond_base: torch.Tensor, cond_base: torch.Tensor, cond_adapter: torch.Tensor, lambda_a: float,
        lambda_b: float) -> torch.Tensor:
    """StyleDrop's adapter guidance (Eq. 4), on noise predictions:
    G^(t) + lambda_A (G^(t) - G(t)) + lambda_B (G(t) - G(n)), with G^ the adapted model, G the
    base model, t the prompt and n the negative (here: unconditional) prompt. lambda_A = -1 is
    the base model's plain CFG at scale 1 + lambda_B (diffusers' guidance w = 1 + lambda_B)."""
    return cond_adapter + float(lambda_a) * (cond_adapter - cond_base) + float(lambda_b) * (cond_base - uncond_base)


def check_lambdas(lambda_a, lambda_b) -> tuple[float, float]:
    a, b = float(lambda_a), float(lambda_b)
    if not (-1 <= a <= 10 and 0 <= b <= 30):
        raise UserError("Adapter guidance needs lambda_A between -1 and 10 and lambda_B between 0 and 30.")
    return a, b


def _half(value, n: int):
    """The second (conditional) half of a CFG-batched UNet argument; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 2 * n:
        return value[n:]
    if isinstance(value, dict):
        return {k: _half(v, n) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _guided(engine, combine):
    """For the block, every CFG-batched UNet call ([negative; prompt]) runs the base model (adapters
    off) on both halves, G(n) and G(t), and returns `combine(unet, args, kwargs, G(n), G(t))` (the
    arguments of the prompt half) in both halves; the pipeline's own CFG then leaves it unchanged
    whatever its scale (u + w (c - u) with u = c): it only needs a scale above 1 to batch."""
    unet = engine.pipe.unet
    inside: list[bool] = []

    def hook(module, args, kwargs, output):
        if inside:  # the extra passes themselves
            return output
        sample = output[0] if isinstance(output, tuple) else output.sample
        n = sample.shape[0] // 2
        args_c = [_half(a, n) for a in args]
        kwargs_c = {k: _half(v, n) for k, v in kwargs.items()}
        inside.append(True)
        try:
            mixed = combine(module, args_c, {**kwargs_c, "return_dict": False}, sample[:n], sample[n:])
        finally:
            inside.pop()
        both = torch.cat([mixed, mixed]).to(sample.dtype)
        if isinstance(output, tuple):
            return (both, *output[1:])
        output.sample = both
        return output

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        library.disable_everywhere(engine)
        yield
    finally:
        handle.remove()


def adapter_guidance(engine, weights: Mapping[int, float], owner, lambda_a: float, lambda_b: float):
    """Eq. 4 for the block: G(n), G(t) from the base model, G^(t) with `weights`' adapters on
    (three UNet evaluations per step)."""
    resident = library.adapters(engine)

    def combine(unet, args, kwargs, uncond, cond):
        with resident.active(dict(weights), owner):
            adapted = unet(*args, **kwargs)[0]
        return eq4(uncond, cond, adapted, lambda_a, lambda_b)
    return _guided(engine, combine)


def subject_style_guidance(engine, *, style_adapter_id: int, subject_adapter_id: int, owner, content_prompt: str,
                           gamma: float, lambda_a: float, lambda_b: float):
    """The paper's "my content in my style" (Sec. 3.4, Eqs. 5-6) for one prompt t (with the style
    descriptor) and its content prompt c (without): (1 - gamma) l_s + gamma l_c, with
    l_s = Eq. 4 of the style adapter on t and l_c = Eq. 4 of the subject adapter on c, sharing
    the base model's G(n): five UNet evaluations per step."""
    resident = library.adapters(engine)
    pipe = engine.pipe
    with torch.no_grad():
        enc = pipe.encode_prompt(content_prompt, device=engine.device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
    c_emb, c_pooled = enc[0], (enc[2] if engine.xl else None)

    def on_content(kwargs):
        b = kwargs["encoder_hidden_states"].shape[0]
        out = {**kwargs, "encoder_hidden_states": c_emb.expand(b, -1, -1).to(kwargs["encoder_hidden_states"])}
        if c_pooled is not None and kwargs.get("added_cond_kwargs"):
            added = dict(kwargs["added_cond_kwargs"])
            added["text_embeds"] = c_pooled.expand(b, -1).to(added["text_embeds"])
            out["added_cond_kwargs"] = added
        return out

    def combine(unet, args, kwargs, uncond, cond):
        with resident.active({int(style_adapter_id): 1.0}, owner):
            styled = unet(*args, **kwargs)[0]
        kw_c = on_content(kwargs)
        base_c = unet(*args, **kw_c)[0]
        with resident.active({int(subject_adapter_id): 1.0}, owner):
            subject = unet(*args, **kw_c)[0]
        g = float(gamma)
        return (1 - g) * eq4(uncond, cond, styled, lambda_a, lambda_b) + g * eq4(uncond, base_c, subject, lambda_a,
                                                                                   lambda_b)
    return _guided(engine, combine)


@contextlib.contextmanager
def sampling(engine, weights: Mapping[int, float], owner, lambdas: tuple[float, float] | None):
    """Adapters on for a generation block: plain (the adapted model in both CFG halves; yields
    None) or, with `lambdas` = (lambda_A, lambda_B), adapter guidance (Eq. 4; yields the
    pipeline guidance scale to pass, 1 + lambda_B, at least 1.5 so the pipeline batches CFG)."""
    if lambdas is None or not weights:
        with library.adapters(engine).active(weights, owner):
            yield None
        return
    a, b = check_lambdas(*lambdas)
    with adapter_guidance(engine, weights, owner, a, b):
        yield max(1.0 + b, 1.5)


def check_grid(contents, samples_per_prompt, steps):
    contents = parse_prompts(contents)
    n = int(samples_per_prompt or 1)
    if not 1 <= n <= 16:
        raise UserError("Samples per prompt must be between 1 and 16.")
    if len(contents) * n > MAX_CANDIDATES:
        raise UserError(f"{len(contents)} prompts x {n} samples = {len(contents) * n} candidates; at most "
                        f"{MAX_CANDIDATES} per grid.")
    if not 1 <= int(steps) <= 150:
        raise UserError("Sampling steps must be between 1 and 150.")
    return contents, n


# --------------------------------------------------------------------------- a round

@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    """What a trained round made (`train_round`'s Result): the round, its adapter, what it was
    trained on (the style image count and the liked candidates' ids) and its metrics."""

    loop_id: int
    round_id: int
    round: int
    adapter_id: int
    adapter_name: str
    trainable_params: int
    lora_numbers: int
    loss_before: float | None
    loss_after: float | None
    metrics: dict
    style_images: int
    liked_candidates: tuple[int, ...]
    seconds: float

    def info(self) -> dict:
        """The same as the Result's `info` dict (the API's JSON)."""
        info = dataclasses.asdict(self)
        info["trained_on"] = {"style_images": info.pop("style_images"),
                              "liked_candidates": list(info.pop("liked_candidates"))}
        return info


@dataclasses.dataclass(frozen=True)
class CandidatesOutcome:
    """What `generate_candidates` added to a round."""

    loop_id: int
    round_id: int
    round: int
    metrics: dict
    added: int

    def info(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RoundResult(Result):
    """A round job's Result: `outcome` typed for the tab, `info` the same as a dict for the API."""

    outcome: RoundOutcome | CandidatesOutcome | None = None


def round_outcome(result: Result) -> RoundOutcome | CandidatesOutcome:
    """The typed outcome of a `train_round` / `first_round` / `generate_candidates` Result."""
    outcome = getattr(result, "outcome", None)
    if not isinstance(outcome, (RoundOutcome, CandidatesOutcome)):
        raise TypeError("not the Result of a StyleDrop round job")
    return outcome


def train_round(engine, loop_id: int, config: TrainSettings, *, owner: str, stop_key: str | None = None,
                rank: int = 4, contents: str | Sequence[str] = DEFAULT_CONTENT_PROMPTS, samples_per_prompt: int = 1,
                seed: int = 0, sample_steps: int = 30, guidance: float = 5.0, metrics=None,
                step_hook=None, recipe_hook=None, form: str = "gelu",
                lambdas: tuple[float, float] | None = None) -> Iterator:
    """Train the loop's next round and generate its candidate grid, in one job. Every round
    trains a **fresh** adapter (D re-drawn, U = 0), also round 2 on the liked images; the paper
    (Sec. 3.3) says "trains a new adapter" as well, but on the selected samples only (ours adds the
    style image(s)), with a wider adapter in round 2 (Table S3: d_prj 32, not shared; ours keeps
    the rank given). `form`: "gelu" (the paper's module) or "linear" (a LoRA for A1111/ComfyUI).
    `lambdas` = (lambda_A, lambda_B): the grid by adapter guidance (Eq. 4), else plain CFG.
    Streams the trainer's events; ends with a Result (candidate images; info: round, adapter,
    trainable parameters, metrics)."""
    store = store_of(engine)
    loop = store.get_loop(loop_id, owner)
    if loop.owner != owner:
        raise UserError("Only the loop's owner can train its rounds; you can rate its candidates.")
    contents, n = check_grid(contents, samples_per_prompt, sample_steps)
    style, liked, liked_ids, number = training_set(store, loop.id, owner)
    earlier = store.rounds(loop.id, owner)
    preference = earlier[-1].extra.get("preference", DEFAULT_PREFERENCE) if earlier else DEFAULT_PREFERENCE
    if lambdas is not None:
        lambdas = check_lambdas(*lambdas)
    recipe = make_recipe(engine, style, liked, rank=rank, name=f"{loop.name} · StyleDrop round {number}",
                         style_descriptor=loop.style_descriptor, round_number=number, loop_id=loop.id,
                         liked_ids=liked_ids, form=form)
    if recipe_hook is not None:  # tests: see exactly what the trainer gets
        recipe_hook(recipe)
    trainer = Trainer(engine, recipe, config, step_hook=step_hook, owner=owner)

    def work(ctx) -> Result:
        out = trainer.run(ctx)
        # no cancel check: the run is finished (its checkpoints are gone), so its adapter is saved
        # rather than left on the UNet; a Stop now takes effect at the next step, if there is one
        ctx.emit(Progress(config.steps, config.steps, "Saving the adapter to the library"))
        a = save_outcome(engine, recipe, config, out, owner=owner)
        rnd = None
        try:  # a round is its adapter and its grid: both, or neither
            rnd = store.add_round(loop.id, owner, adapter_id=a.id, extra={
                "trained_on": {"style_images": len(style), "liked_candidates": liked_ids},
                "trainable_params": out.trainable_params, "rank": int(rank),
                "lora_numbers": (lora_numbers(engine.pipe.unet, rank) if form == "linear"
                                 else param_count(engine.pipe.unet, rank)),
                "adapter_form": recipe.extra["adapter_form"], "steps": int(config.steps),
                "learning_rate": float(config.learning_rate), "loss_before": out.loss_before,
                "loss_after": out.loss_after, "seconds": round(out.seconds, 2),
                "content_prompts": list(contents), "samples_per_prompt": n, "seed": int(seed),
                "sample_steps": int(sample_steps), "guidance": float(guidance),
                "adapter_guidance": list(lambdas) if lambdas is not None else None, "preference": preference})
            items = _generate_grid(engine, ctx, a.id, owner, loop, contents, samples_per_prompt=n, seed=seed,
                                   steps=sample_steps, guidance=guidance, lambdas=lambdas)
            rnd = _add_candidates(store, engine, rnd.id, owner, loop, items, metrics)
        except BaseException:
            library.adapters(engine).remove(a.id)
            if rnd is not None:
                store.delete_round(rnd.id, owner, delete_adapter=True)
            else:
                store.delete_adapter(a.id, owner)
            raise
        trained_on = rnd.extra["trained_on"]
        outcome = RoundOutcome(loop_id=loop.id, round_id=rnd.id, round=rnd.number, adapter_id=a.id,
                               adapter_name=a.name, trainable_params=out.trainable_params,
                               lora_numbers=rnd.extra["lora_numbers"], loss_before=out.loss_before,
                               loss_after=out.loss_after, metrics=dict(rnd.metrics),
                               style_images=trained_on["style_images"],
                               liked_candidates=tuple(trained_on["liked_candidates"]),
                               seconds=round(out.seconds, 2))
        return RoundResult(images=[it["image"] for it in items], info=outcome.info(), outcome=outcome)
    return engine.run(work, stop_key=stop_key or owner, kind="train-styledrop")


def first_round(engine, images: Sequence[Image.Image], config: TrainSettings, *, owner: str,
                content_description: str, style_descriptor: str, name: str = "", **round_kw) -> Iterator:
    """A new loop and its round 1, all or nothing: the loop is made when the job starts and
    deleted again if round 1 does not finish (an error, a Stop, a time limit), so no loop with
    no round is left behind. Streams `train_round`'s events."""
    training_text(content_description, style_descriptor)  # clear messages before anything is stored
    check_grid(round_kw.get("contents", DEFAULT_CONTENT_PROMPTS), round_kw.get("samples_per_prompt", 1),
               round_kw.get("sample_steps", 30))
    loop = create_loop(engine, images, owner=owner, content_description=content_description,
                       style_descriptor=style_descriptor, name=name)
    finished = False
    try:
        yield Notice(f"New loop \"{loop.name}\" (#{loop.id}).")
        for ev in train_round(engine, loop.id, config, owner=owner, **round_kw):
            finished = finished or isinstance(ev, Result)
            yield ev
    finally:
        if not finished:
            store = store_of(engine)
            if not store.rounds(loop.id, owner):
                store.delete_loop(loop.id, owner)
                store.put_image_set(_extra_style_key(loop.id), [], owner=owner)


def generate_candidates(engine, round_id: int, *, owner: str, stop_key: str | None = None,
                        contents: str | Sequence[str] = DEFAULT_CONTENT_PROMPTS, samples_per_prompt: int = 1,
                        seed: int = 0, sample_steps: int = 30, guidance: float = 5.0, metrics=None,
                        lambdas: tuple[float, float] | None = None) -> Iterator:
    """More candidates for a round (its adapter active; with `lambdas` = (lambda_A, lambda_B) by
    adapter guidance, Eq. 4), appended to its grid and scored."""
    store = store_of(engine)
    rnd = store.get_round(round_id, owner)
    loop = store.get_loop(rnd.loop_id, owner)
    if loop.owner != owner:
        raise UserError("Only the loop's owner can generate candidates; you can rate them.")
    if rnd.adapter_id is None:
        raise UserError("This round's adapter was deleted from the library; train a new round.")
    store.get_adapter(rnd.adapter_id, owner)
    contents, n = check_grid(contents, samples_per_prompt, sample_steps)
    if lambdas is not None:
        lambdas = check_lambdas(*lambdas)

    def work(ctx) -> Result:
        items = _generate_grid(engine, ctx, rnd.adapter_id, owner, loop, contents, samples_per_prompt=n,
                               seed=seed, steps=sample_steps, guidance=guidance, lambdas=lambdas)
        r2 = _add_candidates(store, engine, rnd.id, owner, loop, items, metrics)
        outcome = CandidatesOutcome(loop_id=loop.id, round_id=rnd.id, round=rnd.number, metrics=dict(r2.metrics),
                                    added=len(items))
        return RoundResult(images=[it["image"] for it in items], info=outcome.info(), outcome=outcome)
    return engine.run(work, stop_key=stop_key or owner, kind="styledrop-generate")


# --------------------------------------------------------------------------- feedback

def rate(engine, candidate_id: int, rater: str, value: int) -> None:
    """A person's thumbs up (+1), down (-1) or withdrawal (0), under their own rater key."""
    if rater == CLIP_RATER:
        raise UserError("That rater key is reserved for CLIP feedback.")
    store_of(engine).rate(int(candidate_id), rater, int(value))


def pick_score(scores: Mapping[str, float], text_weight: float) -> float | None:
    """The CLIP feedback score: w * CLIP text score + (1 - w) * CLIP style score."""
    if "clip_text" not in scores or "clip_style" not in scores:
        return None
    w = float(text_weight)
    return w * float(scores["clip_text"]) + (1 - w) * float(scores["clip_style"])


def clip_picks(cands, *, mode: str = "top_k", k: int = 1, threshold: float = 0.5, text_weight: float = 1.0,
               per_prompt: bool = True) -> list[int]:
    """Candidate ids CLIP picks: the k best by `pick_score` (per content prompt when
    `per_prompt`), or every candidate whose score is at least `threshold`. Ties keep the earlier
    candidate. The defaults are the paper's CLIP feedback (Sec. 3.3, 4.4.3): per prompt, the one
    sample with the best CLIP image-text score (k = 1, text weight 1, style score unused)."""
    if mode not in ("top_k", "threshold"):
        raise UserError("CLIP feedback is by top-k or by threshold.")
    if not 0 <= float(text_weight) <= 1:
        raise UserError("The text weight must be between 0 and 1.")
    scored = [(pick_score(c.scores, text_weight), c.position, c) for c in cands]
    scored = [s for s in scored if s[0] is not None]
    if not scored:
        raise UserError("These candidates have no CLIP scores.")
    if mode == "threshold":
        return [c.id for s, _, c in scored if s >= float(threshold)]
    k = int(k)
    if k < 1:
        raise UserError("Top-k needs k of at least 1.")
    groups: dict[str, list] = {}
    for s in scored:
        groups.setdefault(s[2].prompt if per_prompt else "", []).append(s)
    picked = []
    for g in groups.values():
        picked += [c.id for _, _, c in sorted(g, key=lambda x: (-x[0], x[1]))[:k]]
    return picked


def _rate_as_clip(store, ratings: Mapping[int, int], owner: str) -> None:
    """CLIP's ratings, under the rater key "clip", recorded by the loop's owner."""
    store.rate_many(ratings, CLIP_RATER, viewer=owner)


def clip_feedback(engine, round_id: int, *, owner: str, mode: str = "top_k", k: int = 1, threshold: float = 0.5,
                  text_weight: float = 1.0, per_prompt: bool = True) -> dict:
    """Apply CLIP feedback to a round: thumbs up under the rater "clip" on the picks, CLIP's earlier
    picks withdrawn elsewhere (so changing k or the threshold re-picks). Owner only."""
    store = store_of(engine)
    rnd = store.get_round(round_id, owner)
    loop = store.get_loop(rnd.loop_id, owner)
    if loop.owner != owner:
        raise UserError("Only the loop's owner can apply CLIP feedback.")
    cands = store.candidates(rnd.id, owner)
    picked = clip_picks(cands, mode=mode, k=k, threshold=threshold, text_weight=text_weight, per_prompt=per_prompt)
    _rate_as_clip(store, {c.id: (1 if c.id in set(picked) else 0) for c in cands}, owner)
    store.update_round(rnd.id, owner, extra={"clip_feedback": {"mode": mode, "k": int(k), "threshold": float(threshold),
                                                                "text_weight": float(text_weight),
                                                                "per_prompt": bool(per_prompt),
                                                                "picked": picked}})
    return {"picked": picked, "mode": mode, "k": int(k), "threshold": float(threshold),
            "text_weight": float(text_weight)}


def candidate_votes(engine, candidate_id: int, owner: str) -> dict:
    """One candidate's combined counts and the caller's own rating (after an API rating)."""
    store = store_of(engine)
    rid = store.candidate_round(int(candidate_id), owner)  # visibility-checked lookup of its round
    s = store.scores(rid, owner)[int(candidate_id)]
    return {"candidate": int(candidate_id), "round_id": rid, "up": s.up, "down": s.down, "net": s.net,
            "liked": s.net >= 1, "mine": store.my_ratings(rid, owner).get(int(candidate_id), 0)}


# --------------------------------------------------------------------------- what the tab shows

@dataclasses.dataclass
class Tile:
    id: int
    position: int
    path: str
    prompt: str
    content: str
    seed: int | None
    clip_text: float | None
    clip_style: float | None
    up: int
    down: int
    net: int
    mine: int
    clip: bool
    liked: bool
    dino_style: float | None = None
    rank: int | None = None       # its place among its prompt's candidates (1 = best); None: not scored
    score: float | None = None    # grid_order's combined score


def round_view(engine, round_id: int, owner: str) -> dict:
    """A round's grid as the tab draws it, in `grid_order` (the round's preference): each
    candidate with scores, its place, combined counts, the caller's own rating and whether CLIP
    picked it."""
    store = store_of(engine)
    rnd = store.get_round(round_id, owner)
    loop = store.get_loop(rnd.loop_id, owner)
    cands = store.candidates(rnd.id, owner)
    sc = store.scores(rnd.id, owner)
    clip = store.scores(rnd.id, owner, raters=[CLIP_RATER])
    mine = store.my_ratings(rnd.id, owner)
    preference = rnd.extra.get("preference", DEFAULT_PREFERENCE)
    tiles = [Tile(c.id, c.position, str(c.path), c.prompt, content_of(c.prompt, loop.style_descriptor), c.seed,
                  c.scores.get("clip_text"), c.scores.get("clip_style"), sc[c.id].up, sc[c.id].down, sc[c.id].net,
                  mine.get(c.id, 0), clip[c.id].up > 0, sc[c.id].net >= 1, c.scores.get("dino_style"),
                  r.rank if r else None, r.score if r else None) for c, r in grid_order(cands, preference)]
    return {"round": rnd, "loop": loop, "tiles": tiles, "liked": sum(t.liked for t in tiles),
            "up": sum(t.up for t in tiles), "down": sum(t.down for t in tiles),
            "clip_picked": sum(t.clip for t in tiles), "preference": preference}


def rounds_table(engine, loop_id: int, owner: str) -> list[dict]:
    """One row per round, side by side: adapter, training set, candidates, liked, metrics."""
    store = store_of(engine)
    rows = []
    for r in store.rounds(loop_id, owner):
        liked = len(store.liked(r.id, owner))
        name = ""
        if r.adapter_id is not None:
            try:
                name = store.get_adapter(r.adapter_id, owner).name
            except UserError:
                name = "(deleted)"
        t = r.extra.get("trained_on", {})
        rows.append({"round": r.number, "round_id": r.id, "adapter_id": r.adapter_id, "adapter": name,
                     "trained_on": f"{t.get('style_images', 1)} style + {len(t.get('liked_candidates', []))} liked",
                     "params": r.extra.get("trainable_params"), "steps": r.extra.get("steps"),
                     "candidates": r.metrics.get("candidates", 0), "liked": liked,
                     "clip_text": r.metrics.get("clip_text"), "clip_style": r.metrics.get("clip_style"),
                     "loss_before": r.extra.get("loss_before"), "loss_after": r.extra.get("loss_after")})
    return rows


def pick_loop(engine, owner: str, wanted: int | None = None) -> int | None:
    """The loop to show: `wanted` if the owner may see it, else their own newest, else the
    newest shared one, else None."""
    loops = store_of(engine).list_loops(owner)
    if wanted is not None and int(wanted) in {lp.id for lp in loops}:
        return int(wanted)
    own = [lp for lp in loops if lp.owner == owner]
    return (own or loops)[0].id if (own or loops) else None


def set_published(engine, loop_id: int, owner: str, published: bool):
    """Share a loop for rating (or stop sharing it); only its owner can, a rater's request
    changes nothing. Returns the loop."""
    store = store_of(engine)
    loop = store.get_loop(loop_id, owner)
    if loop.owner == owner and loop.published != bool(published):
        loop = store.publish_loop(loop_id, owner, bool(published))
    return loop


TILE_SIDE = 256


def tile_thumbnail(path: str | os.PathLike) -> str:
    """A candidate's small JPEG as a data URI (the grid shows it without a file route), cached
    by path and modification time; "" for a file that is gone."""
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        return ""
    return _thumbnail_uri(str(path), mtime)


@functools.lru_cache(maxsize=1024)
def _thumbnail_uri(path: str, mtime: float) -> str:
    img = Image.open(path).convert("RGB")
    img.thumbnail((TILE_SIDE, TILE_SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclasses.dataclass(frozen=True)
class AdapterSize:
    """The adapter at rank r on the loaded UNet: transformer blocks, trained parameters (sum of
    2 r d) and numbers in the saved LoRA file (sum of r (d_ff + d))."""

    rank: int
    blocks: int
    trainable_params: int
    lora_numbers: int


def adapter_size(engine, rank: int) -> AdapterSize | None:
    """The adapter's size at `rank`, or None while the model is not loaded (asking loads nothing)."""
    if engine.health().state != "ready":
        return None
    unet = engine.pipe.unet
    return AdapterSize(rank=int(rank), blocks=len(ff_out_layers(unet)), trainable_params=param_count(unet, rank),
                       lora_numbers=lora_numbers(unet, rank))


# --------------------------------------------------------------------------- export for LoRA loaders

EXPORT_NOTE = (
    "A1111 and ComfyUI load LoRAs, which are linear. A round trained in the **linear form** exports exactly "
    "(it is a LoRA on `ff.net.2`). The **paper's adapter** has a GELU between D and U, which no LoRA can "
    "express: its export replaces GELU(z) by its tangent at 0, z/2 (lora_A = ½·D·W2, lora_B = U) and drops the "
    "constant ½·U·D·b. That is exact only while D·out stays near 0, so it loses what the GELU's curvature "
    "learned, and its images differ from the ones made here. For an exact LoRA, train the round in the linear "
    "form (a separate adapter, trained without the GELU).")


def export_for_lora_loaders(engine, round_id: int, *, owner: str) -> tuple[str, bool]:
    """A kohya-format LoRA file of a round's adapter for A1111/ComfyUI: (path, exact). A linear
    adapter is written as it is (exact); a GELU adapter as its linearisation
    (`styledrop_adapter.linearised_lora`, not exact; see EXPORT_NOTE)."""
    import uuid

    from . import lora_format
    from .files import atomic_path
    from .store_base import safe_filename

    store = store_of(engine)
    rnd = store.get_round(int(round_id), owner)
    if rnd.adapter_id is None:
        raise UserError("This round's adapter was deleted from the library.")
    a = store.get_adapter(rnd.adapter_id, owner)
    if not styledrop_adapter.is_gelu(a):
        return str(store.export(a.id, owner, fmt="kohya")), True
    adapter = styledrop_adapter.StyleDropAdapter.from_canonical(store.load_adapter(a.id, owner)[0])
    sd = styledrop_adapter.linearised_lora(adapter, engine.pipe.unet)
    configs = {"unet": {"r": adapter.rank, "lora_alpha": adapter.rank,
                        "target_modules": sorted(k[len("unet."):-len(".lora_A.weight")] for k in sd
                                                 if k.endswith(".lora_A.weight"))}}
    header = {"ss_network_module": "networks.lora", "ss_output_name": a.name, "ss_network_dim": str(adapter.rank),
              "ss_base_model": a.base_model, "studio_note": "linearised StyleDrop GELU adapter (GELU(z) ~ z/2)"}
    folder = store.root / "exports" / uuid.uuid4().hex
    final = folder / f"{safe_filename(a.name + '-linearised')}.safetensors"
    with atomic_path(final) as tmp:
        lora_format.write_safetensors(tmp, lora_format.to_kohya(sd, configs, te_style="te1" if engine.xl else "te"),
                                      header)
    return str(final), False


# --------------------------------------------------------------------------- StyleDrop + DreamBooth

def subject_style_prompt(subject_adapter, style_descriptor: str) -> str:
    """"a [V] [class] in [style] style" for a Personalize (DreamBooth) subject."""
    v = (subject_adapter.trigger_words or "").strip()
    c = (subject_adapter.class_name or "").strip()
    subject = " ".join(x for x in (v, c) if x) or subject_adapter.name
    return f"a {subject} {style_phrase(style_descriptor)}"


def combined_prompt(engine, *, style_adapter_id: int, subject_adapter_id: int, owner: str) -> str:
    """"a [V] [class] in [style] style" for two library adapters the owner may use."""
    store = store_of(engine)
    style = store.get_adapter(int(style_adapter_id), owner)
    subject = store.get_adapter(int(subject_adapter_id), owner)
    return subject_style_prompt(subject, style.trigger_words or "")


def generate_with_subject(engine, *, style_adapter_id: int, subject_adapter_id: int | None, prompts: Sequence[str],
                          style_weight: float = 1.0, subject_weight: float = 1.0, owner: str,
                          stop_key: str | None = None, mix: str = "weights", gamma: float = 0.6,
                          lambdas: tuple[float, float] = (1.0, 5.0), **kwargs) -> Iterator:
    """Style + subject. `mix="weights"`: both adapters active at once (peft set_adapters, a weight
    each; the GELU style adapter through its hooks). `mix="predictions"`: the paper's way (Sec.
    3.4), (1 - gamma) Eq. 4 of the style adapter on the prompt + gamma Eq. 4 of the subject
    adapter on the prompt without its style phrase (`subject_style_guidance`), `lambdas` =
    (lambda_A, lambda_B); the paper: gamma 0.5-0.7."""
    weights = {int(style_adapter_id): float(style_weight)}
    if subject_adapter_id is not None:
        if int(subject_adapter_id) == int(style_adapter_id):
            raise UserError("Pick a subject adapter different from the style adapter.")
        weights[int(subject_adapter_id)] = float(subject_weight)
    if mix == "weights":
        return library.generate(engine, prompts, weights, owner=owner, stop_key=stop_key, **kwargs)
    if mix != "predictions":
        raise UserError("Mix the predictions or the weights.")
    if not 0 <= float(gamma) <= 1:
        raise UserError("gamma (subject share) must be between 0 and 1.")
    lambda_a, lambda_b = check_lambdas(*lambdas)
    from .validate import prompt_list

    prompts = prompt_list(prompts)
    store = store_of(engine)
    if subject_adapter_id is None:  # no subject: the style adapter's Eq. 4 alone (gamma = 0)
        store.get_adapter(int(style_adapter_id), owner)
        kwargs.pop("guidance", None)

        def style_only(ctx) -> Result:
            with sampling(engine, weights, owner, (lambda_a, lambda_b)) as w:
                images = engine.text_to_image(ctx, prompts, guidance=w, **kwargs)
            return Result(images=images, info={"prompts": list(prompts), "adapters": weights,
                                               "lambdas": [lambda_a, lambda_b]})
        return engine.run(style_only, stop_key=stop_key or owner, kind="generate")
    style = store.get_adapter(int(style_adapter_id), owner)
    store.get_adapter(int(subject_adapter_id), owner)
    phrase = " " + (style.trigger_words or "").strip()
    kwargs.pop("guidance", None)

    def work(ctx) -> Result:
        images = []
        for p in prompts:
            content = p[: -len(phrase)].strip() if len(phrase) > 1 and p.endswith(phrase) else p
            with subject_style_guidance(engine, style_adapter_id=style.id, subject_adapter_id=int(subject_adapter_id),
                                        owner=owner, content_prompt=content, gamma=gamma, lambda_a=lambda_a,
                                        lambda_b=lambda_b):
                images += engine.text_to_image(ctx, [p], guidance=max(1.0 + lambda_b, 1.5), **kwargs)
        return Result(images=images, info={"prompts": list(prompts), "adapters": weights, "mix": "predictions",
                                           "gamma": float(gamma), "lambdas": [lambda_a, lambda_b]})
    return engine.run(work, stop_key=stop_key or owner, kind="generate")
