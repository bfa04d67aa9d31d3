"""DreamBooth (Ruiz et al., CVPR 2023) as a recipe of the shared trainer (core/train.py).

A few photos of a subject are bound to a rare identifier [V]: the model is tuned on the
instance prompt "a [V] [class]", and the class-specific prior-preservation loss keeps the class
itself from drifting, using class images the frozen model generated from "a [class]":

    loss = E||eps - eps_theta(x_t, c_inst)||^2 + lambda * E||eps - eps_theta(x'_t, c_class)||^2

with lambda = 1 by default. LoRA on the UNet by default (SDXL: the Style-Aligned paper's
DB-LoRA baseline, 400 steps); full fine-tuning on SD 1.5 as an option. The paper fine-tunes the
text encoder as well (diffusers' script: `--train_text_encoder`); here that is an option too,
as a LoRA on the text encoders' attention (`text_encoder_rank` > 0; off by default).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Sequence

from PIL import Image

from . import library
from .errors import UserError
from .events import Result
from .images import center_crop_resize, load_image
from .store import Adapter
from .train import AdapterSpec, Example, Recipe, TrainSettings, train

MIN_IMAGES, MAX_IMAGES = 1, 20
MAX_CLASS_IMAGES = 400
RARE_MIN_ID = 40000  # CLIP BPE ids are roughly merge order: high ids are rare merges

# Presets shown in the UI: (description, TrainSettings fields, recipe fields)
PRESETS: dict[str, dict[str, Any]] = {
    "SDXL LoRA (DB-LoRA, 400 steps)": dict(
        steps=400, learning_rate=1e-4, rank=8, batch_size=1, grad_accum=1, gradient_checkpointing=True,
        prior=True, num_class_images=100, prior_weight=1.0, full=False, sample_every=100, sample_steps=25),
    "SD 1.5 LoRA (800 steps with prior)": dict(
        steps=800, learning_rate=1e-4, rank=8, batch_size=1, grad_accum=1, gradient_checkpointing=False,
        prior=True, num_class_images=200, prior_weight=1.0, full=False, sample_every=200, sample_steps=25),
    "SD 1.5 full fine-tune (paper)": dict(
        steps=800, learning_rate=5e-6, rank=32, batch_size=1, grad_accum=1, gradient_checkpointing=True,
        prior=True, num_class_images=200, prior_weight=1.0, full=True, sample_every=200, sample_steps=25),
    "Quick test (tiny models)": dict(
        steps=12, learning_rate=1e-3, rank=4, batch_size=1, grad_accum=1, gradient_checkpointing=False,
        prior=True, num_class_images=4, prior_weight=1.0, full=False, sample_every=6, sample_steps=3),
}

# The paper's prompt families (section 4.3): {v} is the identifier, {c} the class noun.
PROMPT_FAMILIES: dict[str, list[str]] = {
    "Recontextualization": ["a {v} {c} on the beach", "a {v} {c} in the jungle", "a {v} {c} in the snow",
                            "a {v} {c} on top of a wooden table", "a {v} {c} with the Eiffel Tower in the background"],
    "Property modification": ["a red {v} {c}", "a shiny {v} {c}", "a {v} {c} made of crystal",
                              "a wet {v} {c}", "a purple {v} {c}"],
    "Novel views": ["a {v} {c} seen from the back", "a {v} {c} seen from above", "a {v} {c} seen from below",
                    "a {v} {c} seen from the side"],
    "Art renditions": ["a painting of a {v} {c} in the style of Vincent van Gogh",
                       "a {v} {c} in the style of Johannes Vermeer", "a watercolor painting of a {v} {c}",
                       "a pencil sketch of a {v} {c}"],
    "Accessorization": ["a {v} {c} wearing a chef outfit", "a {v} {c} wearing a santa hat",
                        "a {v} {c} in a firefighter outfit"],
}


def default_preset(engine) -> str:
    if engine.offline:
        return "Quick test (tiny models)"
    return "SDXL LoRA (DB-LoRA, 400 steps)" if engine.xl else "SD 1.5 LoRA (800 steps with prior)"


# --------------------------------------------------------------------------- identifier

def _tok(engine_or_tokenizer):
    """A tokenizer, or an engine's (its pipeline's first tokenizer)."""
    return engine_or_tokenizer.pipe.tokenizer if hasattr(engine_or_tokenizer, "pipe") else engine_or_tokenizer


def rare_tokens(tokenizer, n: int = 8, seed: int = 0) -> list[str]:
    """Short rare single tokens of the tokenizer's vocabulary (the paper's recommendation: a
    rare token with a weak prior), e.g. "sks"-like: 3-4 letters, no vowel, a rare merge.
    `tokenizer` may be an engine (its pipeline's tokenizer)."""
    vocab = _tok(tokenizer).get_vocab()
    cands = sorted(s[:-4] for s, i in vocab.items()
                   if i >= RARE_MIN_ID and s.endswith("</w>") and re.fullmatch(r"[a-z]{3,4}", s[:-4])
                   and not re.search(r"[aeiouy]", s[:-4]))
    rng = random.Random(seed)
    rng.shuffle(cands)
    return cands[:n]


def check_identifier(tokenizer, word: str) -> list[str]:
    """Warnings about an identifier: several tokens, a common word, not one word. `tokenizer` may
    be an engine (its pipeline's tokenizer)."""
    tokenizer = _tok(tokenizer)
    word = (word or "").strip()
    if not word:
        raise UserError("Choose an identifier for the subject (a rare token such as \"sks\").")
    if len(word) > 40 or not re.fullmatch(r"[\w-]+", word):
        raise UserError("The identifier must be one short word without spaces or punctuation.")
    warnings = []
    ids = tokenizer(word.lower(), add_special_tokens=False).input_ids
    if len(ids) > 1:
        pieces = " + ".join(tokenizer.convert_ids_to_tokens(ids)).replace("</w>", "")
        warnings.append(f"\"{word}\" splits into {len(ids)} tokens ({pieces}); a single rare token binds "
                        "the subject better.")
    elif ids and ids[0] < 20000:
        warnings.append(f"\"{word}\" is a common token (vocabulary rank {ids[0]}): the model already "
                        "knows a meaning for it, which the subject has to overwrite. Prefer a rare token.")
    return warnings


def instance_prompt(identifier: str, class_noun: str) -> str:
    return f"a {identifier.strip()} {class_noun.strip()}"


def class_prompt(class_noun: str) -> str:
    return f"a {class_noun.strip()}"


# --------------------------------------------------------------------------- images

def subject_images(files: Sequence[Any] | None, size: int) -> list[Image.Image]:
    """1-20 uploads, each checked, centre-cropped and resized to the model's resolution."""
    files = [f for f in (files or []) if f is not None]
    if not MIN_IMAGES <= len(files) <= MAX_IMAGES:
        raise UserError(f"Upload between {MIN_IMAGES} and {MAX_IMAGES} photos of the subject "
                        f"(3-5 work well); got {len(files)}.")
    out = []
    for i, f in enumerate(files):
        path = f if not isinstance(f, dict) else f.get("path")
        img = load_image(getattr(path, "name", path), what=f"subject image {i + 1}", max_side=4096)
        if min(img.size) < 32:
            raise UserError(f"Subject image {i + 1} is only {img.width}x{img.height} pixels; use photos of "
                            "at least 256 pixels a side.")
        out.append(center_crop_resize(img, size, size))
    return out


def class_set_key(engine, prompt: str, steps: int, guidance: float, seed: int) -> str:
    return (f"dreambooth-class|{engine.spec.source}|{engine.dtype}|{engine.resolution}|{steps}|"
            f"{guidance}|{seed}|{prompt}")


def class_images(engine, ctx, prompt: str, count: int, *, steps: int, guidance: float, seed: int = 0,
                 batch: int = 4) -> list[Image.Image]:
    """`count` images of the class prompt by the frozen model, cached in the store by model,
    prompt and settings: a later run reuses them and only generates what is missing."""
    store = library.get_store(engine)
    key = class_set_key(engine, prompt, steps, guidance, seed)
    have = [load_image(p, what="cached class image") for p in store.get_image_set(key)]
    if len(have) >= count:
        ctx.notice(f"Reusing {count} cached class images of \"{prompt}\".")
        return have[:count]
    library.disable_everywhere(engine)  # the frozen model: no adapter active (UNet or text encoders)
    images = list(have)
    while len(images) < count:
        n = min(batch, count - len(images))
        images += engine.text_to_image(ctx, [prompt] * n, seed=seed + len(images), steps=steps,
                                       guidance=guidance,
                                       message=f"Class images {len(images) + 1}-{len(images) + n} of {count}:")
    store.put_image_set(key, images)
    return images


# --------------------------------------------------------------------------- the recipe

def make_recipe(engine, images: Sequence[Image.Image], *, identifier: str, class_noun: str,
                prior: bool = True, num_class_images: int = 100, prior_weight: float = 1.0,
                rank: int = 8, full: bool = False, name: str = "", sample_prompts: Sequence[str] | None = None,
                class_steps: int | None = None, class_guidance: float = 5.0, class_seed: int = 0,
                target_modules: Sequence[str] | None = None, text_encoder_rank: int = 0,
                class_photos: Sequence[Image.Image] = ()) -> Recipe:
    """The DreamBooth recipe. Prior preservation uses `class_photos` (your own pictures of the
    class, as diffusers' `--class_data_dir`; cropped to the model's size) first, and class images
    generated by the frozen model fill up to `num_class_images`."""
    tok = engine.pipe.tokenizer
    warnings = check_identifier(tok, identifier)
    class_noun = re.sub(r"\s+", " ", (class_noun or "")).strip()
    if not class_noun:
        raise UserError("Name the subject's class (a single noun such as \"dog\", \"backpack\", \"vase\").")
    if len(class_noun) > 60:
        raise UserError("The class should be a short noun phrase (at most 60 characters).")
    if prior and not 1 <= int(num_class_images) <= MAX_CLASS_IMAGES:
        raise UserError(f"The number of class images must be between 1 and {MAX_CLASS_IMAGES}.")
    if not 0 <= float(prior_weight) <= 10:
        raise UserError("The prior-preservation weight lambda must be between 0 and 10.")
    if not 1 <= int(rank) <= 256:
        raise UserError("The LoRA rank must be between 1 and 256.")
    if not 0 <= int(text_encoder_rank or 0) <= 256:
        raise UserError("The text-encoder LoRA rank must be between 0 (off) and 256.")
    if full and int(text_encoder_rank or 0):
        raise UserError("Text-encoder LoRA goes with LoRA training; full fine-tuning trains the UNet only.")
    inst, cls = instance_prompt(identifier, class_noun), class_prompt(class_noun)
    spec = AdapterSpec(rank=int(rank), full=bool(full), full_extract_rank=int(rank),
                       text_encoder_rank=int(text_encoder_rank or 0))
    if target_modules:
        spec.target_modules = list(target_modules)
    steps = class_steps or (4 if engine.offline else 30)

    photos = [center_crop_resize(im.convert("RGB"), engine.resolution, engine.resolution)
              for im in list(class_photos)[:MAX_CLASS_IMAGES]]

    def prepare(engine, ctx, recipe: Recipe) -> None:
        if prior and prior_weight > 0:
            missing = int(num_class_images) - len(photos)
            imgs = photos + (class_images(engine, ctx, cls, missing, steps=steps, guidance=class_guidance,
                                          seed=class_seed) if missing > 0 else [])
            recipe.prior = [Example(im, cls) for im in imgs]
        for w in warnings:
            ctx.notice(w)

    return Recipe(method="dreambooth", name=name.strip() or f"{identifier} {class_noun}",
                  examples=[Example(im, inst) for im in images], adapter=spec,
                  prior_weight=float(prior_weight) if prior else 0.0, trigger_words=identifier,
                  class_name=class_noun,
                  sample_prompts=list(sample_prompts) if sample_prompts is not None else [inst, f"{inst} on the beach"],
                  extra={"instance_prompt": inst, "class_prompt": cls, "prior_preservation": bool(prior),
                         "num_class_images": max(int(num_class_images), len(photos)) if prior else 0,
                         "class_photos": len(photos) if prior else 0,
                         "identifier_warnings": warnings},
                  prepare=prepare)


def train_dreambooth(engine, recipe: Recipe, config: TrainSettings, *, owner: str = "local", **kw) -> Iterator:
    return train(engine, recipe, config, owner=owner, **kw)


# --------------------------------------------------------------------------- after training

def fill(template: str, identifier: str, class_noun: str) -> str:
    return template.replace("{v}", identifier).replace("{c}", class_noun)


# What the Personalize tab lists and generates with: subjects trained here and LoRAs imported into
# the library (B-LoRA and StyleDrop adapters have tabs of their own, with their own triggers).
LISTED_METHODS = ("dreambooth", "imported")
NO_CLASS = "object"  # {c} of a prompt template when no adapter names a class


def subject_adapters(engine, *, owner: Any) -> list[Adapter]:
    """The library adapters that DreamBooth generation uses sensibly (LISTED_METHODS: DreamBooth
    subjects and imported LoRAs) for this engine's base model: `owner`'s own and published ones,
    newest first."""
    store = library.get_store(engine)
    return [a for a in store.list_adapters(owner, base_model=library.base_model_id(engine))
            if a.method in LISTED_METHODS]


def fill_triggers(engine, templates: Iterable[str], adapter_ids: Iterable[int], *, owner: Any) -> list[str]:
    """Prompt templates with "{v}" (the identifier) and "{c}" (the class noun) filled from the
    first of `adapter_ids` (in order) whose library entry has trigger words; without one, "{v} "
    is dropped and "{c}" becomes "object". Every id is looked up as `owner` sees it, so an id
    that is not found (or not theirs) is a `UserError` before anything runs."""
    store = library.get_store(engine)
    entries = [store.get_adapter(int(i), owner) for i in adapter_ids]
    trigger = next((a for a in entries if a.trigger_words), None)
    if trigger is None:
        return [t.replace("{v} ", "").replace("{v}", "").replace("{c}", NO_CLASS) for t in templates]
    return [fill(t, trigger.trigger_words, trigger.class_name or NO_CLASS) for t in templates]


@dataclass(frozen=True)
class TrainedAdapter:
    """What a finished DreamBooth run reports, typed: the library entry it saved (`adapter_id`
    is None only in a non-main process of a multi-process run, which saves nothing), the
    instance loss on fixed draws before and after, the count of trained parameters, the wall
    time, the loss history and the text encoders that got a LoRA."""

    adapter_id: int | None
    name: str
    loss_before: float
    loss_after: float
    trainable_params: int
    seconds: float
    history: tuple[dict, ...] = ()
    text_encoder_lora: tuple[str, ...] = ()

    @classmethod
    def from_result(cls, result: Result) -> "TrainedAdapter":
        """From the trainer's closing `Result` (`core.train.train`; its `info` dict)."""
        info = result.info
        aid = info.get("adapter_id")
        return cls(adapter_id=None if aid is None else int(aid), name=str(info.get("adapter_name") or ""),
                   loss_before=float(info.get("loss_before", math.nan)),
                   loss_after=float(info.get("loss_after", math.nan)),
                   trainable_params=int(info.get("trainable_params", 0)),
                   seconds=float(info.get("seconds", math.nan)),
                   history=tuple(info.get("history") or ()),
                   text_encoder_lora=tuple(info.get("text_encoder_lora") or ()))


def language_drift(engine, adapter_id: int, *, owner: Any, metrics, seeds: Sequence[int] = (0, 1, 2, 3),
                   steps: int = 25, guidance: float = 5.0, weight: float = 1.0,
                   stop_key: str | None = None) -> Iterator:
    """The class prompt with the adapter on and with the frozen model, same seeds; CLIP image
    similarity per seed (1 = no drift). Streams; ends with a Result (frozen images, then adapted)."""
    a = library.get_store(engine).get_adapter(adapter_id, owner)
    prompt = a.extra.get("class_prompt") or (class_prompt(a.class_name) if a.class_name else "")
    if not prompt:
        raise UserError("This adapter has no class noun recorded, so there is no class prompt to measure.")
    seeds = [int(s) for s in seeds][:8]

    def work(ctx) -> Result:
        res = library.adapters(engine)
        frozen, adapted = [], []
        for s in seeds:
            with res.active({}):
                frozen += engine.text_to_image(ctx, [prompt], seed=s, steps=steps, guidance=guidance,
                                               message=f"Frozen model, seed {s}:")
            with res.active({adapter_id: weight}, owner):
                adapted += engine.text_to_image(ctx, [prompt], seed=s, steps=steps, guidance=guidance,
                                                message=f"With the adapter, seed {s}:")
        emb_f = metrics.clip_image_embeddings(frozen)
        emb_a = metrics.clip_image_embeddings(adapted)
        sims = [round(float(x), 4) for x in (emb_f * emb_a).sum(-1)]
        return Result(images=frozen + adapted,
                      info={"prompt": prompt, "seeds": seeds, "similarity": sims,
                            "mean_similarity": round(sum(sims) / len(sims), 4), "note": metrics.note})
    return engine.run(work, stop_key=stop_key or owner, kind="drift")


# --------------------------------------------------------------------------- CLI

def add_cli_args(p) -> None:
    p.add_argument("--model", default="sdxl")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--owner", default="local", help="library owner of the new adapter")
    p.add_argument("--images", nargs="+", required=True, help="1-20 photos of the subject")
    p.add_argument("--identifier", default="sks")
    p.add_argument("--class", dest="class_noun", required=True)
    p.add_argument("--name", default="")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--full", action="store_true", help="full fine-tuning (SD 1.5 only)")
    p.add_argument("--text-encoder-rank", type=int, default=0,
                   help="also train a LoRA of this rank on the text encoder(s); 0 = off")
    p.add_argument("--no-prior", action="store_true")
    p.add_argument("--class-images", type=int, default=100, help="size of the prior-preservation set")
    p.add_argument("--class-photos", nargs="*", default=[],
                   help="your own photos of the class for the prior set (generated images fill the rest)")
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--export", default="", help="also write a kohya-format copy to this path")


def from_cli(engine, a, cfg: TrainSettings) -> tuple[Recipe, TrainSettings]:
    engine.load()
    imgs = subject_images(a.images, engine.resolution)
    recipe = make_recipe(engine, imgs, identifier=a.identifier, class_noun=a.class_noun, prior=not a.no_prior,
                         num_class_images=a.class_images, prior_weight=a.prior_weight, rank=a.rank,
                         full=a.full, name=a.name, class_steps=cfg.sample_steps if engine.offline else None,
                         text_encoder_rank=a.text_encoder_rank,
                         class_photos=[load_image(p, what="class photo", max_side=4096) for p in a.class_photos])
    return recipe, replace(cfg)
