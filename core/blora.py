"""B-LoRA (Frenkel et al., ECCV 2024): implicit style-content separation on two SDXL blocks.

LoRA on the attention projections (to_q, to_k, to_v, to_out.0 of the self- and cross-attention
layers) of only two transformer blocks of SDXL's UNet, trained jointly on one image:

    up_blocks.0.attentions.0   the *content* block (the paper's W^4_0)
    up_blocks.0.attentions.1   the *style* block   (the paper's W^5_0)

Training is a recipe of the shared trainer (core/train.py); each image becomes one library entry
holding both halves (store parts "content" and "style") with the image as its thumbnail.

At inference a half is loaded **by block**: only the keys under the content block are ever loaded
from an entry as its content half, and only the keys under the style block as its style half
(a half in the wrong block is refused), each as its own named peft adapter on the engine's
resident UNet. The paper's four uses combine halves:

* image style transfer:   content of image A + style of image B, "A [c] in [s] style"
* text-based stylization: content only, "A [c] made of gold"
* consistent style:       style only, "A car in [s] style"
* style-content mixing:   content of one stylized image + style of another

Differences from the reference implementation, on purpose:

* weights scale linearly: the half's update is `w * B A * alpha / r` (peft's adapter scale), where
  the reference multiplies both LoRA matrices by alpha, so its update scales by alpha squared;
* no negative prompt: with *any* negative prompt, even "", the unconditional branch is encoded
  text that also passes through the B-LoRA's cross-attention, and the guidance difference that
  carries most of the effect cancels. The unconditional branch always uses zero embeddings here
  (what the reference gets from `negative_prompt=None` with SDXL's force_zeros_for_empty_prompt);
* the shared UNet is left exactly as it was after every job: the halves' adapters are deleted
  again (and the peft wrappers removed when no other adapter is resident), also on error or Stop.
"""
from __future__ import annotations

import contextlib
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from PIL import Image

from . import library, ranking
from . import lora_format as lf
from .errors import UserError
from .events import Progress, Result
from .images import center_crop_resize, load_image
from .train import AdapterSpec, Example, Recipe, TrainSettings, Trainer, save_outcome

METHOD = "b-lora"
CONTENT_BLOCK = "up_blocks.0.attentions.0"
STYLE_BLOCK = "up_blocks.0.attentions.1"
BLOCKS = {"content": CONTENT_BLOCK, "style": STYLE_BLOCK}
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
# peft matches a string target with re.fullmatch against the full module name
TARGET_MODULES = (r"up_blocks\.0\.attentions\.[01]\.transformer_blocks\.\d+\.attn[12]\."
                  r"(to_q|to_k|to_v|to_out\.0)")
PARTS = {part: [f"unet.{block}"] for part, block in BLOCKS.items()}
MAX_IMAGES = 8
MAX_BATCH = 16  # images in one generation call (candidates x prompts)

# The reference recipe (README of the authors' repository) and a quick one for the tiny models.
PRESETS: dict[str, dict[str, Any]] = {
    "Paper (SDXL, 1000 steps)": dict(steps=1000, learning_rate=5e-5, rank=64, gradient_checkpointing=True,
                                      sample_every=250, sample_steps=30, checkpoint_every=500),
    "Quick test (tiny models)": dict(steps=30, learning_rate=3e-3, rank=8, gradient_checkpointing=False,
                                     sample_every=10, sample_steps=3, checkpoint_every=0),
}

# The paper's four uses: which halves they take and their prompt presets ([c] content, [s] style).
USES: dict[str, dict[str, Any]] = {
    "Image style transfer": dict(halves=("content", "style"), prompts=["A [c] in [s] style"],
                                 help="content B-LoRA of image A + style B-LoRA of image B"),
    "Text-based stylization": dict(halves=("content",), prompts=[
        "A [c] made of gold", "A [c] made of wooden blocks", "A [c] made of crystal", "A [c] made of lego"],
        help="content B-LoRA only; the text gives the style"),
    "Consistent style": dict(halves=("style",), prompts=[
        "A car in [s] style", "A dog in [s] style", "A house in [s] style", "A bicycle in [s] style"],
        help="style B-LoRA only; any object in that style"),
    "Style-content mixing": dict(halves=("content", "style"), prompts=["A [c] in [s] style"],
                                 help="content of one stylized image + style of another"),
}


def default_preset(engine) -> str:
    return "Quick test (tiny models)" if engine.offline else "Paper (SDXL, 1000 steps)"


# --------------------------------------------------------------------------- blocks

def block_of(module_name: str) -> str | None:
    """"content" / "style" for a module (or key) inside one of the two blocks, else None.
    Accepts names with or without the "unet." prefix."""
    name = module_name[5:] if module_name.startswith("unet.") else module_name
    for part, block in BLOCKS.items():
        if name == block or name.startswith(block + "."):
            return part
    return None


def check_model(unet) -> None:
    """B-LoRA needs an SDXL-like UNet whose up_blocks.0 holds the two attention blocks."""
    names = {n for n, _ in unet.named_modules()}
    missing = [b for b in BLOCKS.values() if b not in names]
    if missing:
        raise UserError("B-LoRA needs an SDXL model: this UNet has no "
                        f"{' / '.join(missing)} (the content and style blocks).")


# --------------------------------------------------------------------------- training

def trigger_prompt(trigger: str) -> str:
    """The reference recipe's instance prompt, "A [v]"."""
    return f"A {trigger}"


def check_trigger(trigger: str) -> str:
    trigger = (trigger or "").strip()
    if not trigger:
        raise UserError("Give the B-LoRA a trigger word, e.g. \"[v1]\".")
    if len(trigger) > 30 or not re.fullmatch(r"[\w\[\]-]+", trigger):
        raise UserError("The trigger must be one short word without spaces, e.g. \"[v1]\" or \"sks\".")
    return trigger


def fresh_triggers(engine, owner, n: int, base: str | None = None) -> list[str]:
    """Triggers for `n` new B-LoRAs: `base` (numbered when several), else "[vN]" words not yet
    used by the owner's B-LoRAs."""
    if base:
        if n == 1:
            return [base]
        return [f"{base[:-1]}{i + 1}]" if base.endswith("]") else f"{base}{i + 1}" for i in range(n)]
    used = {a.trigger_words for a in library.get_store(engine).list_adapters(owner, method=METHOD)}
    out, k = [], 1
    while len(out) < n:
        if f"[v{k}]" not in used:
            out.append(f"[v{k}]")
        k += 1
    return out


def training_images(files: Sequence[Any] | None, size: int) -> list[Image.Image]:
    files = [f for f in (files or []) if f is not None]
    if not 1 <= len(files) <= MAX_IMAGES:
        raise UserError(f"Upload between 1 and {MAX_IMAGES} images (each becomes its own B-LoRA); got {len(files)}.")
    out = []
    for i, f in enumerate(files):
        path = f if not isinstance(f, (dict, Image.Image)) else (f.get("path") if isinstance(f, dict) else None)
        img = f if isinstance(f, Image.Image) else load_image(getattr(path, "name", path), what=f"image {i + 1}",
                                                                  max_side=4096)
        if min(img.size) < 32:
            raise UserError(f"Image {i + 1} is only {img.width}x{img.height} pixels; use at least 256 a side.")
        out.append(center_crop_resize(img.convert("RGB"), size, size))
    return out


def make_recipe(engine, image: Image.Image, *, trigger: str, name: str = "", rank: int = 64,
                sample_prompts: Sequence[str] | None = None, images: Sequence[Image.Image] = ()) -> Recipe:
    """The B-LoRA recipe: "A [v]" on one image (or a few, for a multi-image content B-LoRA), LoRA on
    the attention projections of the content and style blocks only, trained jointly, no prior
    preservation, text encoders frozen."""
    check_model(engine.pipe.unet)
    trigger = check_trigger(trigger)
    if not 1 <= int(rank) <= 256:
        raise UserError("The LoRA rank must be between 1 and 256.")
    prompt = trigger_prompt(trigger)
    examples = [Example(im, prompt) for im in [image, *images]]
    spec = AdapterSpec(target_modules=TARGET_MODULES, rank=int(rank), parts=PARTS)
    return Recipe(method=METHOD, name=name.strip() or trigger, examples=examples, adapter=spec,
                  trigger_words=trigger,
                  sample_prompts=list(sample_prompts) if sample_prompts is not None else
                  [prompt, f"A dog in {trigger} style", f"A {trigger} made of gold"],
                  extra={"instance_prompt": prompt, "blocks": dict(BLOCKS), "images": len(examples)})


def train_config(engine, *, steps: int, learning_rate: float, gradient_checkpointing: bool = False,
                 seed: int = 0, sample_every: int = 0, checkpoint_every: int = 0,
                 resume: bool = True) -> TrainSettings:
    """The trainer settings of a B-LoRA run from what the tab asks for: the paper's constant
    learning rate and batch 1, samples of 3 steps on the tiny family (30 on a real model)."""
    return TrainSettings(steps=steps, learning_rate=learning_rate, lr_scheduler="constant", batch_size=1,
                       gradient_checkpointing=gradient_checkpointing, seed=seed, sample_every=sample_every,
                       checkpoint_every=checkpoint_every, resume=resume,
                       sample_steps=3 if engine.offline else 30, sample_guidance=7.5)


@dataclass(frozen=True)
class TrainedBLoRA:
    """One B-LoRA a training run saved to the library: its entry, trigger, the instance loss on
    fixed draws before and after, and how many keys each half holds."""

    adapter_id: int
    adapter_name: str
    trigger: str
    loss_before: float
    loss_after: float
    trainable_params: int
    seconds: float
    parts: dict[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class BLoRATraining:
    """What a finished `train_blora` job made, in training order (the last is the newest)."""

    adapters: tuple[TrainedBLoRA, ...]

    @classmethod
    def from_result(cls, result: Result) -> BLoRATraining:
        return cls.from_info(result.info)

    @classmethod
    def from_info(cls, info: Any) -> BLoRATraining:
        """From a Result's info, or the info a page kept of it (None or anything else: none)."""
        rows = info.get("adapters") if isinstance(info, dict) else None
        return cls(tuple(TrainedBLoRA(**a) for a in rows or () if isinstance(a, dict)))

    def as_info(self) -> dict:
        """The JSON a page keeps: {"adapters": [one dict per B-LoRA]}."""
        return {"adapters": [asdict(a) for a in self.adapters]}


def train_blora(engine, images: Sequence[Image.Image], config: TrainSettings, *, owner: str = "local",
                stop_key: str | None = None,
                trigger: str | None = None, name: str = "", rank: int = 64, joint: bool = False,
                sample_prompts: Sequence[str] | None = None, step_hook=None) -> Iterator[Any]:
    """Train one B-LoRA per image (or one from all images when `joint`), in one job on the shared
    trainer; each is saved to the library with both halves and the image as its first thumbnail.
    Streams the trainer's events (TrainStep, TrainSamples, Checkpointed, Notice, Progress) and
    ends with a Result whose info lists the new entries (read it as `BLoRATraining.from_result`).
    `owner` owns the entries; `stop_key` (default: `owner`) is the key a Stop button cancels the
    job with."""
    images = list(images)
    if not images:
        raise UserError("Upload an image to train a B-LoRA on.")
    config = config.check()
    engine.load()
    check_model(engine.pipe.unet)
    groups = [images] if joint else [[im] for im in images]
    triggers = fresh_triggers(engine, owner, len(groups), check_trigger(trigger) if trigger else None)
    recipes = []
    for i, (group, trig) in enumerate(zip(groups, triggers)):
        label_ = (f"{name.strip()} {i + 1}" if len(groups) > 1 else name.strip()) if name.strip() else ""
        recipes.append(make_recipe(engine, group[0], images=group[1:], trigger=trig, name=label_, rank=rank,
                                   sample_prompts=sample_prompts))

    def work(ctx) -> Result:
        made, history, all_samples = [], [], []
        for i, recipe in enumerate(recipes):
            if len(recipes) > 1:
                ctx.notice(f"B-LoRA {i + 1} of {len(recipes)}: {recipe.trigger_words}")
            trainer = Trainer(engine, recipe, config, step_hook=step_hook, owner=owner)
            out = trainer.run(ctx)
            # the training image first, as the entry's thumbnail (the trainer keeps samples only)
            out.samples = [(recipe.examples[0].image, "training image")] + list(out.samples)
            # no cancel check: the run is finished (its checkpoints are gone), so its adapter is saved
            # rather than left on the UNet; a Stop now takes effect at the next step, if there is one
            ctx.emit(Progress(config.steps, config.steps, "Saving the B-LoRA to the library"))
            a = save_outcome(engine, recipe, config, out, owner=owner)
            made.append(asdict(TrainedBLoRA(
                adapter_id=a.id, adapter_name=a.name, trigger=recipe.trigger_words,
                loss_before=out.loss_before, loss_after=out.loss_after, trainable_params=out.trainable_params,
                seconds=round(out.seconds, 2), parts={p: len(k) for p, k in a.parts.items()})))
            history += [{**h, "image": i + 1} for h in out.history]
            all_samples += [im for im, _ in out.samples[1:]]
        return Result(images=all_samples, info={"adapters": made, "history": history})
    return engine.run(work, stop_key=stop_key or owner, kind="train-b-lora")


# --------------------------------------------------------------------------- loading halves

@dataclass
class Half:
    """One half of a library B-LoRA: its entry, which half, and its weight (linear)."""

    adapter_id: int
    part: str  # "content" or "style"
    weight: float = 1.0

    @property
    def peft_name(self) -> str:
        return f"blora-{self.part}-{int(self.adapter_id)}"


def half_state_dict(engine, adapter_id: int, part: str, owner: Any
                    ) -> tuple[dict[str, torch.Tensor], dict[str, dict], Any]:
    """The keys of one half, selected by block: only keys under the half's own block are taken
    (an entry's recorded part list must agree); a half with no keys there is refused."""
    if part not in BLOCKS:
        raise UserError(f"A B-LoRA half is \"content\" or \"style\", not {part!r}.")
    store = library.get_store(engine)
    a = store.get_adapter(int(adapter_id), owner)
    sd, header_configs = store.load_adapter(a.id, owner)
    keys = sorted(k for k in sd if lf.component_of(k) == "unet" and block_of(k) == part)
    recorded = a.parts.get(part)
    if recorded is not None:
        stray = [k for k in recorded if block_of(k) != part]
        if stray:
            raise UserError(f"The {part} half of {a.name!r} holds weights outside the {part} block "
                            f"{BLOCKS[part]} ({lf.few(stray)}); it was not loaded.")
    if not keys:
        raise UserError(f"{a.name!r} has no {part} half (no LoRA weights in {BLOCKS[part]}).")
    sub = {k: sd[k] for k in keys}
    cfg = dict(header_configs.get("unet") or lf.config_from_scales("unet", sub, lf.module_scales(sub, {})))
    mods = sorted(lf.normalize_module_name("unet", m[len("unet."):]) for m in lf.modules_in(sub))
    cfg["target_modules"] = mods
    for pat in ("rank_pattern", "alpha_pattern"):
        if cfg.get(pat):
            cfg[pat] = {k: v for k, v in cfg[pat].items() if block_of(k) in (None, part)}
    return sub, {"unet": cfg}, a


def load_half(engine, half: Half, owner: Any) -> str:
    """Inject one half as its own named peft adapter into the resident UNet; checks afterwards
    that its weights landed only in its own block."""
    unet = engine.pipe.unet
    sd, configs, _ = half_state_dict(engine, half.adapter_id, half.part, owner)
    name = half.peft_name
    if name in library.peft_names(unet):
        unet.delete_adapters(name)
    with warnings.catch_warnings():  # peft warns whenever a second adapter joins the model
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")
        library.load_into_unet(unet, sd, name, lf.pack_metadata(configs))
    placed = adapter_modules(unet, name)
    wrong = [m for m in placed if block_of(m) != half.part]
    if wrong or not placed:
        unet.delete_adapters(name)
        raise UserError(f"The {half.part} half did not load into {BLOCKS[half.part]} only "
                        f"({lf.few(wrong) if wrong else 'nothing loaded'}).")
    return name


def adapter_modules(unet, adapter_name: str) -> list[str]:
    """Names of the modules that carry LoRA weights of `adapter_name`."""
    out = []
    for n, m in unet.named_modules():
        lora_a = getattr(m, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter_name in lora_a:
            out.append(n)
    return out


@contextlib.contextmanager
def halves_active(engine, halves: Sequence[Half], owner: Any,
                  also: Mapping[str, float] | None = None) -> Iterator[list[str]]:
    """Load the halves into their blocks, active with their (linear) weights, for one block of
    code; afterwards the UNet is as it was: the halves' adapters deleted, every module that was
    wrapped for them unwrapped again, the peft bookkeeping as before, every remaining adapter
    disabled. `also`: peft adapters already on the UNet (name: weight) kept active beside the
    halves (a DreamBooth subject with a B-LoRA's style). Run inside a job (it changes the shared UNet)."""
    unet = engine.pipe.unet
    halves = [h for h in halves if h is not None and float(h.weight) != 0.0]
    parts = [h.part for h in halves]
    if len(set(parts)) != len(parts):
        raise UserError("Use at most one content half and one style half at a time.")
    before = _peft_layout(unet)
    names: list[str] = []
    try:
        for h in halves:
            names.append(load_half(engine, h, owner))
        also = dict(also or {})
        if names or also:
            unet.set_adapters([*names, *also], weights=[float(h.weight) for h in halves] + list(also.values()))
            unet.enable_adapters()
        else:
            library.disable_all(unet)
        yield names
    finally:
        restore_unet(engine, names, before)


_MISSING = object()


def _wrapped(unet) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)}


def _peft_layout(unet) -> dict:
    """What peft changed on the UNet: wrapped modules and the adapter bookkeeping."""
    return {"wrapped": _wrapped(unet), "has_config": hasattr(unet, "peft_config"),
            "flag": getattr(unet, "_hf_peft_config_loaded", _MISSING)}


def restore_unet(engine, names: Sequence[str], before: dict | None = None) -> None:
    """Delete our adapters (and any "blora-" adapter a crashed job left); with `before`, unwrap
    the modules that were wrapped only for them and put peft's bookkeeping back as it was."""
    unet = engine.pipe.unet
    stale = [n for n in library.peft_names(unet) if n in names or n.startswith("blora-")]
    with warnings.catch_warnings():  # "adapter X was active which is now deleted"
        warnings.filterwarnings("ignore", message=".*now deleted.*")
        for n in stale:  # ours, and any left by a job that died mid-load
            unet.delete_adapters(n)
    if before is not None:
        for name in sorted(_wrapped(unet) - before["wrapped"], key=len, reverse=True):
            mod = unet.get_submodule(name)
            lora_a = getattr(mod, "lora_A", None)
            if lora_a is not None and len(lora_a) == 0 and hasattr(mod, "base_layer"):
                parent, _, child = name.rpartition(".")
                setattr(unet.get_submodule(parent) if parent else unet, child, mod.get_base_layer())
        if not library.peft_names(unet):
            if not before["has_config"] and hasattr(unet, "peft_config"):
                del unet.peft_config
            if before["flag"] is _MISSING:
                if hasattr(unet, "_hf_peft_config_loaded"):
                    del unet._hf_peft_config_loaded
            else:
                unet._hf_peft_config_loaded = before["flag"]
    elif not library.peft_names(unet):
        library.unload_peft(unet)
    library.disable_all(unet)


# --------------------------------------------------------------------------- generation

def zero_negative_kwargs(pipe, n: int) -> dict:
    """Pipeline kwargs for an unconditional branch of zero embeddings (no negative prompt):
    nothing when the pipeline zeroes an absent negative prompt itself (SDXL base), else explicit
    zero embeddings of the right shapes."""
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return {}
    cross = pipe.unet.config.cross_attention_dim
    pooled = pipe.text_encoder_2.config.projection_dim
    dev, dtype = pipe.unet.device, pipe.unet.dtype
    return {"negative_prompt_embeds": torch.zeros(n, 77, cross, device=dev, dtype=dtype),
            "negative_pooled_prompt_embeds": torch.zeros(n, pooled, device=dev, dtype=dtype)}


def fill_prompt(template: str, content_trigger: str | None, style_trigger: str | None) -> str:
    return template.replace("[c]", content_trigger or "thing").replace("[s]", style_trigger or "this")


def plan(engine, use: str | None, content: tuple[int, float] | None, style: tuple[int, float] | None,
         prompts: Sequence[str] | None, owner: Any) -> tuple[list[Half], list[str]]:
    """The halves and the filled prompts for one of the four uses (or "custom": the halves given,
    the prompts given). Checks that each use has the halves it needs."""
    store = library.get_store(engine)
    if use and use not in USES and use.lower() != "custom":
        raise UserError(f"Unknown use {use!r}: choose one of {', '.join(USES)} or Custom.")
    spec = USES.get(use or "", None)
    need = spec["halves"] if spec else ()
    if spec:  # a use takes only the halves it is about
        content = content if "content" in need else None
        style = style if "style" in need else None
    for part, given in (("content", content), ("style", style)):
        if part in need and (given is None or given[0] is None):
            raise UserError(f"{use} needs a {part} B-LoRA: pick one from the gallery.")
    halves = []
    triggers = {}
    for part, given in (("content", content), ("style", style)):
        if given is None or given[0] is None:
            continue
        aid, weight = int(given[0]), float(1.0 if given[1] is None else given[1])
        if not -2.0 <= weight <= 2.0:
            raise UserError(f"The {part} weight must be between -2 and 2 (got {weight}).")
        a = store.get_adapter(aid, owner)
        triggers[part] = a.trigger_words or None
        halves.append(Half(aid, part, weight))
    templates = [p.strip() for p in (prompts or []) if p and p.strip()]
    if not templates:
        if not spec:
            raise UserError("Write at least one prompt ([c] = content trigger, [s] = style trigger).")
        templates = list(spec["prompts"])
    if len(templates) > 8:
        raise UserError(f"{len(templates)} prompts given; at most 8 at a time.")
    filled = [fill_prompt(t, triggers.get("content"), triggers.get("style")) for t in templates]
    return halves, filled


candidate_seeds, candidate_latents = ranking.candidate_seeds, ranking.candidate_latents  # shared (core/ranking.py)


def reference_images(engine, halves: Sequence[Half], owner: Any, *, max_side: int = 512
                     ) -> dict[str, list[Image.Image]]:
    """The image each half learned (its entry's first sample), by part: the ranking's content and
    style references. A half without one (an imported file) gives none, and its measure is absent."""
    store = library.get_store(engine)
    out: dict[str, list[Image.Image]] = {}
    for h in halves:
        img = thumbnail_image(store.get_adapter(h.adapter_id, owner), max_side=max_side)
        if img is not None:
            out.setdefault(h.part, []).append(img)
    return out


rank_candidates = ranking.rank_candidates


def generate(engine, *, use: str | None = None, content: tuple[int, float] | None = None,
             style: tuple[int, float] | None = None, prompts: Sequence[str] | None = None,
             owner: Any = "local", stop_key: str | None = None, seed: int = 0, steps: int = 30,
             guidance: float = 7.5, width: int | None = None, height: int | None = None,
             candidates: int = 1, preference: float = 0.5, metrics=None,
             fail_after_load: bool = False) -> Iterator[Any]:
    """Generate with B-LoRA halves (streamed, cancellable). No negative prompt (see the module
    docstring). `content`/`style` are (library id, weight) or None, read from `owner`'s library
    (and published entries); `stop_key` (default: `owner`) is what a Stop reaches the job by.

    Best of N (`candidates` > 1): N candidates of every prompt in one batched pipeline call, one
    noise seed per image (candidate i = the ordinary run with seed + i, `candidate_seeds`), then
    each prompt's candidates ranked by `metrics` (a core.metrics.Metrics) with `preference`
    (0 = content, 1 = style; core/ranking.py) and returned best first, prompt by prompt, with
    info["ranking"] (one record per image: seed, measures, score, rank, caption)."""
    n = ranking.check_candidates(candidates)
    preference = ranking.check_preference(preference)
    if n > 1 and metrics is None:
        raise UserError("Best of N needs the scoring models (CLIP, DINO); this instance has none.")
    halves, filled = plan(engine, use, content, style, prompts, owner)
    if len(filled) * n > MAX_BATCH:
        raise UserError(f"Candidates (best of N): {n} candidates of {len(filled)} prompts make {len(filled) * n} "
                        f"images; at most {MAX_BATCH} at a time (fewer candidates or prompts).")
    engine.load()
    check_model(engine.pipe.unet)
    references = reference_images(engine, halves, owner) if n > 1 else {}

    def work(ctx) -> Result:
        started = time.monotonic()
        w, h = engine.check_size(width or engine.resolution, height or engine.resolution)
        latents = candidate_latents(engine, seed, n, len(filled), w, h) if n > 1 else None
        with halves_active(engine, halves, owner) as names:
            if fail_after_load:  # tests: an error with the halves loaded
                raise RuntimeError("failure injected after loading the halves")
            images = engine.text_to_image(ctx, list(filled) * n, seed=int(seed), steps=int(steps),
                                          guidance=float(guidance), width=w, height=h, latents=latents,
                                          negative_prompt="", **zero_negative_kwargs(engine.pipe, len(filled) * n))
        records: list[dict] = []
        if n > 1:
            ctx.progress(int(steps), int(steps), f"Scoring {n} candidates of each prompt")
            images, records = rank_candidates(metrics, images, filled, candidate_seeds(seed, n),
                                              references=references, preference=preference)
        return Result(images=images, info={
            "use": use or "custom", "prompts": filled, "seconds": round(time.monotonic() - started, 2),
            "halves": [{"adapter_id": h.adapter_id, "part": h.part, "weight": h.weight, "block": BLOCKS[h.part]}
                       for h in halves], "adapters_loaded": names, "candidates": n, "preference": preference,
            "ranking": records})
    return engine.run(work, stop_key=stop_key or owner, kind="b-lora")


# --------------------------------------------------------------------------- the library's B-LoRAs

def entries(engine, owner: Any) -> list:
    """The library's B-LoRAs the owner may use (theirs and published ones), newest first:
    entries trained here, and imported LoRA files with weights in both blocks (e.g. the
    authors' published B-LoRAs, imported on the Personalize tab)."""
    store = library.get_store(engine)
    out = []
    for a in store.list_adapters(owner, base_model=library.base_model_id(engine)):
        if a.method == METHOD or {"content", "style"} <= set(a.parts) or \
                (a.method == "imported" and {"content", "style"} <= _blocks_in_file(a.path)):
            out.append(a)
    return out


def _blocks_in_file(path) -> set[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:  # the header only
            return {b for b in (block_of(k) for k in f.keys() if k.startswith("unet.")) if b}
    except Exception:  # noqa: BLE001 - an unreadable file is simply not a B-LoRA
        return set()


def thumbnail(a) -> str | None:
    """The file of a B-LoRA's first sample (its training image), or None."""
    return str(a.samples[0].file.path) if a.samples else None


def thumbnail_image(a, *, max_side: int = 256) -> Image.Image | None:
    """A B-LoRA's first sample as an image, at most `max_side` a side (never a path: the library
    is not served); None when it has none or the file cannot be read."""
    path = thumbnail(a)
    try:
        return load_image(path, what="sample", max_side=max_side) if path else None
    except UserError:
        return None


def label(a) -> str:
    return f"#{a.id} {a.name} {a.trigger_words}".strip() if a.trigger_words != a.name else f"#{a.id} {a.name}"


@dataclass(frozen=True)
class LibraryEntry:
    """One B-LoRA as a page lists it: its id (as the pickers hold it), label and thumbnail."""

    id: str
    label: str
    thumbnail: Image.Image | None = field(default=None, compare=False, hash=False)


def library_entries(engine, *, owner: Any, max_side: int = 256) -> list[LibraryEntry]:
    """The B-LoRAs `owner` may use (`entries`: theirs and published ones, newest first), each
    with its label and thumbnail (`thumbnail_image`)."""
    return [LibraryEntry(str(a.id), label(a), thumbnail_image(a, max_side=max_side))
            for a in entries(engine, owner)]


def preset_settings(name: Any, engine) -> dict[str, Any]:
    """The settings of the preset called `name` (an unknown name: the engine's default preset)."""
    return dict(PRESETS.get(name) if isinstance(name, str) and name in PRESETS else PRESETS[default_preset(engine)])


__all__ = ["BLOCKS", "CONTENT_BLOCK", "STYLE_BLOCK", "TARGET_MODULES", "PRESETS", "USES", "Half", "make_recipe",
           "train_blora", "generate", "halves_active", "load_half", "half_state_dict", "entries", "plan",
           "TrainedBLoRA", "BLoRATraining", "LibraryEntry", "library_entries", "thumbnail_image",
           "train_config", "preset_settings", "candidate_seeds", "rank_candidates"]
