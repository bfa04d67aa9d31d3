"""Style Aligned Image Generation via Shared Attention (Hertz et al., CVPR 2024).

A set of images shares one style by letting every target image attend, in the UNet's
self-attention layers, to the first image of the set (the reference) as well as to itself.
Before attending, the targets' queries and keys are normalised to the reference's statistics
(AdaIN over the token axis, per channel). The reference attends only to itself, so it is the
image its prompt gives alone. Under classifier-free guidance the unconditional and the
conditional half of the batch each share with their own reference; without guidance there is
one group.

A real image can be the reference: it is DDIM-inverted and its inverted latent is put back
in the reference slot after every denoising step.
"""
from __future__ import annotations

import contextlib
import math
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import library, ranking, styles
from .attention import attention, project_qkv, self_attention_names, swapped_processors
from .errors import UserError
from .events import Result
from .images import load_image
from .jobs import JobContext
from .styles import LibraryStyle

MAX_SET = 8
MAX_BATCH = 16  # images in one batch: candidate sets x their images (best of N)
EPS = 1e-5


@dataclass
class SharingOptions:
    """The shared-attention handler's settings; defaults are the reference SDXL ones."""

    adain_queries: bool = True
    adain_keys: bool = True
    adain_values: bool = False
    share_group_norm: bool = False
    full_attention_share: bool = False   # every image attends to every other (leakage baseline)
    shared_score_shift: float = 0.0      # added to the logits of the reference keys (log 2: 2x weight)
    shared_score_scale: float = 1.0      # multiplies the reference keys seen by the targets
    share_fraction: float = 1.0          # fraction of self-attention layers that share
    enabled: bool = True


@dataclass
class SharingState:
    """Per-run facts the processors need: how many independent groups the batch holds
    (2 under classifier-free guidance, else 1)."""

    groups: int = 1
    options: SharingOptions = field(default_factory=SharingOptions)


def adain(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """AdaIN over the token axis (-2): x normalised per channel, then given ref's mean/std."""
    work = torch.promote_types(x.dtype, torch.float32)  # statistics in fp32 at least
    xf, rf = x.to(work), ref.to(work)
    mu_x, var_x = xf.mean(-2, keepdim=True), xf.var(-2, keepdim=True, unbiased=False)
    mu_r, var_r = rf.mean(-2, keepdim=True), rf.var(-2, keepdim=True, unbiased=False)
    out = (xf - mu_x) * torch.rsqrt(var_x + EPS) * torch.sqrt(var_r + EPS) + mu_r
    return out.to(x.dtype)


def biased_attention(q, k, v, n_plain: int, shift: float) -> torch.Tensor:
    """softmax(q k^T * s + b) v where b is `shift` on keys n_plain.. and 0 on the others.

    The bias is folded into an extra head dimension (q gets a 1, the shifted keys get
    shift/s), so the product carries it exactly and no (tokens x tokens) bias or logits
    tensor is ever built: the fused SDPA kernels (flash included) stay in use and memory is
    what plain attention needs. Head dims are padded to a multiple of 8 for those kernels."""
    if shift == 0.0:
        return attention(q, k, v)
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    pad = 8 - d % 8 if d % 8 else 8
    q_extra = torch.zeros(*q.shape[:-1], pad, dtype=q.dtype, device=q.device)
    q_extra[..., 0] = 1.0
    k_extra = torch.zeros(*k.shape[:-1], pad, dtype=k.dtype, device=k.device)
    k_extra[..., n_plain:, 0] = shift / scale
    v_extra = torch.zeros(*v.shape[:-1], pad, dtype=v.dtype, device=v.device)
    out = F.scaled_dot_product_attention(torch.cat([q, q_extra], -1), torch.cat([k, k_extra], -1),
                                         torch.cat([v, v_extra], -1), scale=scale)
    return out[..., :d]


class SharedAttentionProcessor:
    """Self-attention processor of one UNet layer; identical to diffusers' AttnProcessor2_0
    when sharing is off (or the batch holds a single image per group)."""

    def __init__(self, state: SharingState, share: bool = True):
        self.state = state
        self.share = share

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        q, k, v, restore = project_qkv(attn, hidden_states, encoder_hidden_states, temb)
        opts, groups = self.state.options, self.state.groups
        batch = q.shape[0]
        if (not (self.share and opts.enabled) or attention_mask is not None
                or encoder_hidden_states is not None or batch % groups or batch // groups < 2):
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, k.shape[2], batch)
                attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
            return restore(attention(q, k, v, attention_mask))
        return restore(self.shared(q, k, v, groups, opts))

    @staticmethod
    def shared(q, k, v, groups: int, opts: SharingOptions) -> torch.Tensor:
        """Shared attention on (batch, heads, tokens, dim) tensors."""
        b, h, n_tok, d = q.shape
        n = b // groups

        def split(x):  # (groups, images, heads, tokens, dim)
            return x.reshape(groups, n, h, -1, d)

        q, k, v = split(q), split(k), split(v)
        if opts.full_attention_share:
            def flat(x):
                return x.permute(0, 2, 1, 3, 4).reshape(groups, h, n * n_tok, d)
            out = attention(flat(q), flat(k), flat(v))
            return out.reshape(groups, h, n, n_tok, d).permute(0, 2, 1, 3, 4).reshape(b, h, n_tok, d)

        q_ref, k_ref, v_ref = q[:, :1], k[:, :1], v[:, :1]
        q_t, k_t, v_t = q[:, 1:], k[:, 1:], v[:, 1:]
        if opts.adain_queries:
            q_t = adain(q_t, q_ref)
        if opts.adain_keys:
            k_t = adain(k_t, k_ref)
        if opts.adain_values:
            v_t = adain(v_t, v_ref)
        m = n - 1
        k_shared = k_ref * opts.shared_score_scale if opts.shared_score_scale != 1.0 else k_ref
        keys = torch.cat([k_t, k_shared.expand(groups, m, h, n_tok, d)], dim=-2)
        values = torch.cat([v_t, v_ref.expand(groups, m, h, n_tok, d)], dim=-2)
        out_t = biased_attention(q_t.reshape(groups * m, h, n_tok, d),
                                 keys.reshape(groups * m, h, 2 * n_tok, d),
                                 values.reshape(groups * m, h, 2 * n_tok, d),
                                 n_plain=n_tok, shift=opts.shared_score_shift)
        out_ref = attention(q_ref.reshape(groups, h, n_tok, d), k_ref.reshape(groups, h, n_tok, d),
                            v_ref.reshape(groups, h, n_tok, d))
        out = torch.cat([out_ref.reshape(groups, 1, h, n_tok, d),
                         out_t.reshape(groups, m, h, n_tok, d)], dim=1)
        return out.reshape(b, h, n_tok, d)


def sharing_layers(names: Sequence[str], fraction: float) -> set[str]:
    """Evenly spaced subset of the self-attention layers holding `fraction` of them."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError("The fraction of sharing layers must be between 0 and 1.")
    count = round(fraction * len(names))
    if count == 0:
        return set()
    picks = {min(len(names) - 1, int(i * len(names) / count)) for i in range(count)}
    return {names[i] for i in picks}


def _shared_group_norm_forward(state: SharingState):
    def forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        groups, b = state.groups, x.shape[0]
        if not state.options.enabled or b % groups or b // groups < 2:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        n = b // groups
        xf = x.float().reshape(groups, n, self.num_groups, -1)
        mean, sq = xf.mean(-1, keepdim=True), (xf * xf).mean(-1, keepdim=True)
        # statistics pooled with the reference (equal sizes: the average of the two)
        mean = (mean + mean[:, :1]) / 2
        sq = (sq + sq[:, :1]) / 2
        y = (xf - mean) * torch.rsqrt((sq - mean * mean).clamp_min(0) + self.eps)
        y = y.reshape(x.shape).to(x.dtype)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if self.weight is not None:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y
    return forward


@contextlib.contextmanager
def shared_group_norm(unet, state: SharingState) -> Iterator[None]:
    """GroupNorm statistics of every image pooled with its group's reference."""
    norms = [m for m in unet.modules() if isinstance(m, nn.GroupNorm)]
    forward = _shared_group_norm_forward(state)
    for m in norms:
        m.forward = types.MethodType(forward, m)
    try:
        yield
    finally:
        for m in norms:
            m.__dict__.pop("forward", None)


@contextlib.contextmanager
def style_aligned(unet, options: SharingOptions, groups: int) -> Iterator[SharingState]:
    """Shared attention (and optionally group norm) on `unet` for the duration of the block;
    the processors the UNet had before are restored afterwards, whatever happens."""
    state = SharingState(groups=groups, options=options)
    chosen = sharing_layers(self_attention_names(unet), options.share_fraction)

    def make(name, original):
        if name.endswith("attn1.processor"):
            return SharedAttentionProcessor(state, share=name in chosen)
        return None

    with contextlib.ExitStack() as stack:
        stack.enter_context(swapped_processors(unet, make))
        if options.share_group_norm:
            stack.enter_context(shared_group_norm(unet, state))
        yield state


# ---------------------------------------------------------------------- the job
def candidate_seeds(seed: int, n: int, set_size: int) -> list[int]:
    """The seeds of N candidate sets of `set_size` images: set i starts at seed + i * set_size, so
    no two sets share an image's noise (an ordinary run draws seed, seed + 1, ... for its images)
    and each is what the ordinary run with its seed gives."""
    return [int(seed) + i * int(set_size) for i in range(int(n))]


def uses_guidance(pipe, guidance: float) -> bool:
    """Whether the pipeline will run classifier-free guidance (a doubled batch)."""
    return guidance > 1.0 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None


@torch.no_grad()
def ddim_invert(engine, ctx: JobContext, latent: torch.Tensor, prompt: str, steps: int,
                guidance: float = 1.0) -> list[torch.Tensor]:
    """Deterministic DDIM inversion. Returns [z_0, z_1, ..., z_S]: z_k is the latent at the
    k-th timestep of the schedule counted from the clean end (z_S is the starting noise)."""
    from diffusers import DDIMInverseScheduler

    pipe = engine.pipeline(scheduler=DDIMInverseScheduler.from_config(engine.pipe.scheduler.config))
    trajectory = [latent.clone()]

    def keep(i, t, latents):
        trajectory.append(latents.clone())
        return None

    size = latent.shape[-1] * engine.pipe.vae_scale_factor, latent.shape[-2] * engine.pipe.vae_scale_factor
    with torch.inference_mode():
        pipe(prompt=[prompt], num_inference_steps=int(steps), guidance_scale=float(guidance),
             width=size[0], height=size[1], latents=latent.clone(), output_type="latent",
             callback_on_step_end=engine.step_callback(ctx, int(steps), "Inverting", keep),
             callback_on_step_end_tensor_inputs=["latents"])
    return trajectory


def cached_inversion(engine, ctx: JobContext, cache, latent: torch.Tensor, prompt: str, steps: int,
                     guidance: float, *, style: dict | None,
                     adapters: dict[int, float] | None = None) -> list[torch.Tensor]:
    """`ddim_invert`, through a style entry's cache (`styles.InversionCache`, or None: no cache):
    the key holds everything the trajectory depends on (model, device, dtype, size, steps,
    guidance, prompt, the style's adapter and its weight, other library adapters on the UNet
    with theirs: a DreamBooth subject changes the trajectory too)."""
    if cache is None:
        return ddim_invert(engine, ctx, latent, prompt, steps, guidance)
    key = cache.key(device=latent.device.type, dtype=str(engine.pipe.unet.dtype), shape=list(latent.shape),
                    steps=int(steps), guidance=float(guidance), prompt=prompt, style=style,
                    adapters=sorted((int(k), float(v)) for k, v in (adapters or {}).items()))
    found = cache.get(key)
    if found is not None and len(found) == int(steps) + 1:
        ctx.progress(0, steps, "The reference's inversion, from the style's cache")
        return [z.to(latent.device, latent.dtype) for z in found]
    trajectory = ddim_invert(engine, ctx, latent, prompt, steps, guidance)
    cache.put(key, trajectory)
    return trajectory


def build_prompts(prompts: Sequence[str], style: str) -> list[str]:
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise UserError("Write at least one prompt (one per line).")
    if len(prompts) > MAX_SET:
        raise UserError(f"{len(prompts)} prompts: a set holds at most {MAX_SET} images.")
    style = (style or "").strip()
    return [f"{p}, {style}" if style else p for p in prompts]


def style_aligned_set(engine, prompts: Sequence[str], style: str = "", *, stop_key: str = "local", **settings):
    """Generate a style-aligned set as a job (settings: those of `set_work`); a generator of
    progress events ending in a Result; `stop_key` is what a Stop reaches it by."""
    return engine.run(set_work(engine, prompts, style, **settings), stop_key=stop_key, kind="style_aligned")


def set_work(engine, prompts: Sequence[str], style: str = "", *,
             options: SharingOptions | None = None, seed: int = 0, steps: int = 50,
             guidance: float = 5.0, width: int | None = None, height: int | None = None,
             negative_prompt: str = "", reference_image=None, reference_prompt: str = "",
             inversion_guidance: float = 2.0, metrics=None, library_style: LibraryStyle | None = None,
             style_weight: float = 1.0, owner: Any = None, candidates: int = 1,
             preference: float = 0.5, adapters: dict[int, float] | None = None,
             style_on: bool = True) -> Callable[[JobContext], Result]:
    """A style-aligned set as the work of a job (the inputs are checked now): `work(ctx)`
    returns the set's Result; run it alone (style_aligned_set) or as part of a larger job.

    Without `reference_image` the first prompt's image is the reference. With one, the
    reference is that image (described by `reference_prompt`) and every prompt is a target.
    `metrics` (core.metrics.Metrics) adds CLIP text scores and the set's DINO consistency.
    `library_style` (core.styles, as `owner` sees it): a StyleDrop adapter or a B-LoRA's style
    half active with `style_weight` during the whole job (inversion included), its phrase
    appended to every prompt; shared attention then aligns the set within that style. `adapters`
    ({library adapter id: weight}, a DreamBooth subject) are active beside it. `style_on=False`: the
    caller has already put the style (and any adapters) on the UNet, for a larger job.

    Best of N (`candidates` > 1, needs `metrics`): N sets in one batch, set i with the seed
    `candidate_seeds` gives it (the ordinary run with that seed makes the same set; each set has
    its own reference, the sharing groups are per set), ranked by `ranking.rank_sets` (mean CLIP
    text score vs DINO consistency, `preference` 0 = prompts .. 1 = consistency) and returned best
    first: images set by set, info["sets"] one record per set; the other keys describe the best set.

    A library style that is a style entry with an image (`styles.reference_of`) is also the set's
    reference when no `reference_image` is given, described by the entry's prompt unless
    `reference_prompt` says otherwise; its DDIM inversion is cached with the entry, so the next
    set from it (same size, steps, model and adapter) skips the inversion."""
    options = options or SharingOptions()
    cache = None
    from_style = styles.reference_of(library_style) if reference_image is None else None
    if from_style is not None:
        reference_image = load_image(from_style[0], what="the style's reference image", max_side=2048)
        reference_prompt = (reference_prompt or "").strip() or from_style[1]
        cache = styles.InversionCache(engine, library_style, owner)
    n_sets = ranking.check_candidates(candidates)
    preference = ranking.check_preference(preference, "Preference: prompts ↔ consistency")
    full = styles.styled_prompts(build_prompts(prompts, style), library_style)
    style_weight = styles.check_weight(style_weight)
    if reference_image is not None:
        ref_text = (reference_prompt or "").strip()
        if not ref_text:
            raise UserError("Describe the reference image (its content and style) for inversion.")
        full = [ref_text] + full
        if len(full) > MAX_SET:
            raise UserError(f"With a reference image, at most {MAX_SET - 1} prompts.")
    if n_sets > 1 and metrics is None:
        raise UserError("Best of N needs the scoring models (CLIP, DINO); this instance has none.")
    if n_sets * len(full) > MAX_BATCH:
        raise UserError(f"Candidates (best of N sets): {n_sets} sets of {len(full)} images make "
                        f"{n_sets * len(full)}; at most {MAX_BATCH} at a time (fewer sets or prompts).")
    seeds = candidate_seeds(seed, n_sets, len(full))

    def work(ctx: JobContext) -> Result:
        if not style_on:
            return styled_work(ctx)
        with styles.style_active(engine, library_style, style_weight, owner=owner, adapters=adapters):
            return styled_work(ctx)

    def styled_work(ctx: JobContext) -> Result:
        w, h = engine.check_size(width or engine.resolution, height or engine.resolution)
        k = len(full)
        latents = torch.cat([engine.initial_latents(k, s, w, h) for s in seeds])   # set by set
        refs = [i * k for i in range(n_sets)]                                       # each set's reference
        on_step = None
        if reference_image is not None:
            z0 = engine.encode_image(reference_image, w, h)
            trajectory = cached_inversion(engine, ctx, cache, z0, full[0], steps, inversion_guidance,
                                          style=None if library_style is None else library_style.as_info(style_weight),
                                          adapters=adapters)
            latents[refs] = trajectory[-1][0]
            last = len(trajectory) - 1

            def on_step(i, t, lat):
                lat = lat.clone()
                lat[refs] = trajectory[max(0, last - 1 - i)][0]
                return lat

        pipe = engine.pipe
        groups = (2 if uses_guidance(pipe, guidance) else 1) * n_sets   # a sharing group per set (and branch)
        with style_aligned(pipe.unet, options, groups=groups):
            images = engine.text_to_image(ctx, full * n_sets, negative_prompt=negative_prompt, steps=steps,
                                          guidance=guidance, width=w, height=h, latents=latents,
                                          on_step=on_step, message="Style-aligned set" if n_sets == 1 else
                                          f"Style-aligned sets ({n_sets} candidates)")
        sets = [images[i * k:(i + 1) * k] for i in range(n_sets)]
        records: list[dict] = []
        if n_sets > 1:
            ctx.progress(steps, steps, f"Scoring {n_sets} candidate sets")
            text = [metrics.clip_text_scores(s_, full) for s_ in sets]
            ranked = ranking.rank_sets([sum(t) / len(t) for t in text], [metrics.dino_consistency(s_) for s_ in sets],
                                       seeds, preference)
            records = [{**r.as_info(), "caption": r.caption(), "clip_text_scores": text[r.index]} for r in ranked]
            sets = [sets[r.index] for r in ranked]
            images = [im for s_ in sets for im in s_]
        best = sets[0]
        info = {"prompts": full, "options": asdict(options), "seed": records[0]["seed"] if records else seed,
                "reference": ("the library style's image" if from_style is not None else "image")
                if reference_image is not None else "first prompt",
                "library_style": None if library_style is None else
                library_style.as_info(style_weight)}
        if records:
            info.update(sets=records, candidates=n_sets, preference=preference,
                        clip_text_scores=records[0]["clip_text_scores"], style_consistency=records[0]["consistency"])
        elif metrics is not None:
            ctx.progress(steps, steps, "Scoring the set")
            info["clip_text_scores"] = metrics.clip_text_scores(best, full)
            info["style_consistency"] = metrics.dino_consistency(best)
        return Result(images=images, info=info)

    return work


def aligned_generate(engine, prompts: Sequence[str], weights: dict[int, float], *, style: LibraryStyle,
                     style_weight: float = 1.0, owner: Any, stop_key: str | None = None, seed: int = 0,
                     steps: int = 30, guidance: float = 5.0, width: int | None = None, height: int | None = None,
                     negative_prompt: str = "", candidates: int = 1, **_ignored):
    """A Personalize subject in a saved style that has only images: one image per prompt, a
    Style-Aligned set whose reference is the style's image (inverted; cached with the style), the
    library adapters `weights` (the subject) on for the whole job. The reference is not returned."""
    if int(candidates) != 1:
        raise UserError("Best of N with a style that has only images (its image is the set's reference): "
                        "use 1 candidate, or a style with an adapter.")
    weights = {int(k): float(v) for k, v in weights.items()}
    store = library.get_store(engine)
    for i in weights:
        store.get_adapter(i, owner)             # not found / not yours: before the job starts
    make = set_work(engine, list(prompts), "", seed=seed, steps=steps, guidance=guidance, width=width,
                    height=height, negative_prompt=negative_prompt, library_style=style, style_weight=style_weight,
                    owner=owner, adapters=weights)

    def work(ctx):
        made = make(ctx)
        return Result(images=made.images[1:], info={"prompts": made.info["prompts"][1:], "adapters": weights,
                                                     "library_style": style.as_info(style_weight),
                                                     "reference": made.info["reference"]})
    return engine.run(work, stop_key=stop_key or owner, kind="generate")
