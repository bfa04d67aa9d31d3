"""The one adapter trainer: DreamBooth, StyleDrop and B-LoRA are recipes of it.

A `Recipe` says *what* to learn: the training examples (image + prompt), an optional
prior-preservation set with its weight lambda, and an `AdapterSpec` saying which UNet modules get
LoRA (peft target names or a regex over module names, optionally split into named parts) or
that the whole UNet is fine-tuned. `TrainSettings` holds the hyperparameters. The trainer does the
rest the same way for every method:

* the adapter is injected **in place** into the engine's resident UNet as a named peft adapter
  (`unet.add_adapter`) and, when `AdapterSpec.text_encoder_rank` > 0, into the text encoders
  (`text_encoder`, and `text_encoder_2` on SDXL) under the same name (peft's
  `inject_adapter_in_model`); only their LoRA parameters require grad, and after training it stays there:
  the library entry is `adopt`ed by `core.library.adapters(engine)`, so it generates at once,
  with no reload and no second copy; outside a request that activates it, it is disabled, so
  other tabs see the base model bit for bit. On cancel or error it is deleted again.
* full fine-tuning (SD 1.5 only) trains every UNet weight *temporarily*: the original weights
  are copied to the CPU first and restored bit for bit afterwards; what was learned is kept as
  a LoRA extracted from the weight change by SVD (rank `full_extract_rank`; the kept share of
  the change is reported), so the resident model is never left altered.
* accelerate underneath: `Accelerator(mixed_precision, gradient_accumulation_steps)` for
  autocast, loss scaling and accumulation (and DDP under `accelerate launch` from the CLI);
  gradient checkpointing on request (UNet); VAE latents and text embeddings are computed once up
  front, except that with text-encoder LoRA the prompts (tokenized once) go through the text
  encoders at every step, exactly as the pipeline's `encode_prompt` does, so the gradient reaches
  their LoRA;
  AdamW, 8-bit through bitsandbytes when CUDA has it; optional min-SNR-gamma weighting.
* it streams `TrainStep` (step, loss, instance/prior loss, lr) every optimizer step,
  `TrainSamples` every `sample_every` steps and `Progress` while preparing; writes an atomic
  checkpoint every `checkpoint_every` steps (a cancelled run keeps its last one) and resumes a
  run with the same inputs and settings from its latest checkpoint.

Recipes, as small as they are meant to be (DreamBooth is in core/dreambooth.py):

    # B-LoRA (issue 6): LoRA on the attention projections of two SDXL blocks only
    AdapterSpec(target_modules=r"up_blocks\\.0\\.attentions\\.[01]\\..*\\.(to_q|to_k|to_v|to_out\\.0)",
                rank=64, parts={"content": ["unet.up_blocks.0.attentions.0"],
                                "style": ["unet.up_blocks.0.attentions.1"]})
    # StyleDrop (issue 7): the paper's adapter after every transformer block's feed-forward,
    # trained as D, U with lora_A = D W2 and saved as a plain LoRA on `ff.net.2`
    AdapterSpec(target_modules=r".*transformer_blocks\\.\\d+\\.ff\\.net\\.2", rank=4,
                down_parametrization=DownThroughW2)

Headless: `python -m core.train --help` (same code, no gradio). On several GPUs:
`accelerate launch --multi_gpu --num_processes N -m core.train dreambooth ...` (or torchrun): each
process takes its own GPU (LOCAL_RANK) and draws its own batches, DDP averages the gradients, the
main process generates the class images first and alone saves the adapter (text-encoder LoRA is
refused there). Tested on CPU with two gloo processes (tests/test_train.py).

The trainer is one class in three files: the data it caches before the first step is in
core/train_data.py, its checkpoints (the run's key, atomic saves, resuming) in
core/train_checkpoints.py, the conditioning, loss, adapter set-up and step loop here; the
command line in core/train_cli.py.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from . import library
from .errors import UserError
# The training events live in core/events.py; tabs still import them from here too.
from .events import Checkpointed, Progress, Result, TrainSamples, TrainStep
from .files import owner_dirname
from .train_checkpoints import Checkpoints
from .train_data import DataCache, tensor_digest

log = logging.getLogger(__name__)

MAX_STEPS = 20_000


# --------------------------------------------------------------------------- what to train

@dataclass
class Example:
    image: Image.Image
    prompt: str


@dataclass
class AdapterSpec:
    """Which UNet weights learn. `target_modules`: peft's meaning (a list of module-name suffixes
    such as ["to_q", "to_k"], or one regex string matched against full module names).
    `parts`: named key prefixes kept by the store (B-LoRA's content/style halves).
    `full=True`: fine-tune the whole UNet (SD 1.5 only), kept as an SVD-extracted LoRA.
    `text_encoder_rank` > 0: LoRA of that rank (alpha = rank) on `text_encoder_targets` of the
    text encoder(s) too, trained with the UNet's (DreamBooth's `--train_text_encoder`, as LoRA)."""

    target_modules: list[str] | str = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    rank: int = 4
    alpha: float | None = None  # None: = rank (scale 1)
    init: str = "gaussian"
    dropout: float = 0.0
    parts: dict[str, list[str]] | None = None
    full: bool = False
    full_extract_rank: int = 32
    # Optional re-parametrisation of each LoRA down weight during training: a factory
    # (base Linear, seeded generator) -> torch parametrization module. The parametrization's
    # own tensor is what trains; at the end the weight is materialised, so the saved adapter is
    # a plain LoRA (StyleDrop: lora_A = D W2, only D and U train).
    down_parametrization: Callable[[torch.nn.Linear, torch.Generator], torch.nn.Module] | None = None
    # Text-encoder LoRA: 0 = off (the text encoders stay frozen, their embeddings cached).
    text_encoder_rank: int = 0
    text_encoder_targets: list[str] | str = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])  # CLIP attention
    # A non-peft adapter (a hook point; StyleDrop's GELU module): a factory (unet, generator=) ->
    # an object with parameters(), named_parameters(), state_dict(), configs() and remove(). It
    # hooks itself onto the UNet for the run and is removed after it (the UNet is never changed);
    # what it learned is saved from its state_dict() (canonical keys, see core/lora_format.py).
    module_adapter: Callable[..., Any] | None = None

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(r=int(self.rank), lora_alpha=float(self.alpha or self.rank),
                          init_lora_weights=self.init, lora_dropout=float(self.dropout),
                          target_modules=self.target_modules)

    def text_encoder_config(self):
        from peft import LoraConfig

        return LoraConfig(r=int(self.text_encoder_rank), lora_alpha=float(self.text_encoder_rank),
                          init_lora_weights=self.init, lora_dropout=float(self.dropout),
                          target_modules=self.text_encoder_targets)


@dataclass
class Recipe:
    """A method's training set-up. `prepare(engine, ctx, recipe)` (optional) runs inside the job
    before training, e.g. DreamBooth generating its class images into `recipe.prior`."""

    method: str
    name: str
    examples: list[Example]
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    prior: list[Example] = field(default_factory=list)
    prior_weight: float = 1.0
    trigger_words: str = ""
    class_name: str = ""
    sample_prompts: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    prepare: Callable[[Any, Any, "Recipe"], None] | None = None


@dataclass
class TrainSettings:
    steps: int = 400
    learning_rate: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    lr_scheduler: str = "constant"  # diffusers.optimization names: constant, cosine, linear, ...
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"   # auto (from the engine's dtype), no, fp16, bf16
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = True      # only when CUDA and bitsandbytes are there
    snr_gamma: float | None = None  # min-SNR-gamma weighting (5 is the usual value)
    noise_offset: float = 0.0
    seed: int = 0
    sample_every: int = 0           # 0: samples only at the end
    sample_steps: int = 25
    sample_guidance: float = 5.0
    sample_seed: int = 0
    checkpoint_every: int = 0       # 0: no checkpoints
    resume: bool = True
    keep_checkpoints: bool = False  # after a finished run
    eval_draws: int = 8             # fixed (noise, t) draws for the before/after instance loss

    def check(self) -> "TrainSettings":
        if not 1 <= int(self.steps) <= MAX_STEPS:
            raise UserError(f"Steps must be between 1 and {MAX_STEPS} (got {self.steps}).")
        if not (0 < float(self.learning_rate) <= 1e-1) or not math.isfinite(float(self.learning_rate)):
            raise UserError(f"The learning rate must be above 0 and at most 0.1 (got {self.learning_rate}).")
        if not 1 <= int(self.batch_size) <= 64:
            raise UserError("The batch size must be between 1 and 64.")
        if not 1 <= int(self.grad_accum) <= 256:
            raise UserError("Gradient accumulation must be between 1 and 256 steps.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise UserError(f"Mixed precision must be auto, no, fp16 or bf16 (got {self.mixed_precision!r}).")
        if self.snr_gamma is not None and not float(self.snr_gamma) > 0:
            self.snr_gamma = None
        return self


@dataclass
class Outcome:
    """What a finished run leaves: the peft adapter on the UNet (or an extracted state dict)."""

    adapter_name: str | None
    state_dict: dict[str, torch.Tensor] | None
    configs: dict[str, Any] | None
    history: list[dict]
    samples: list[tuple[Image.Image, str]]
    trainable_params: int
    loss_before: float
    loss_after: float
    seconds: float
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def _mixed_precision(engine, wanted: str) -> str:
    if engine.device.type != "cuda":
        return "no"
    if wanted != "auto":
        return wanted
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(engine.dtype, "no")


def _accelerator(engine, cfg: TrainSettings):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    kwargs = dict(mixed_precision=_mixed_precision(engine, cfg.mixed_precision),
                  gradient_accumulation_steps=int(cfg.grad_accum), cpu=engine.device.type == "cpu")
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:  # the process-wide state was set up with other flags earlier
        if "already been initialized" not in str(exc):
            raise
        AcceleratorState._reset_state(True)
        return Accelerator(**kwargs)


def low_vram_settings(cfg: TrainSettings) -> TrainSettings:
    """The low-memory mode's version of `cfg` (a copy; core.engine, issue 19): gradient
    checkpointing and 8-bit Adam on, every other setting as given. The trainer applies it to every
    preset of every method when `engine.low_vram` is on."""
    return replace(cfg, gradient_checkpointing=True, use_8bit_adam=True)


def optimizer_name(cfg: TrainSettings, device: torch.device) -> str:
    """Which AdamW a run of `cfg` on `device` gets, with the reason when 8-bit Adam was asked for
    and cannot be had (bitsandbytes is optional and CUDA-only)."""
    if not cfg.use_8bit_adam:
        return "torch AdamW"
    if device.type != "cuda":
        return f"torch AdamW (8-bit Adam needs CUDA; this is {device.type})"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "torch AdamW (8-bit Adam needs bitsandbytes, which is not installed)"
    return "8-bit AdamW (bitsandbytes)"


def _optimizer(params, cfg: TrainSettings, device: torch.device, notes: list[str]):
    if cfg.use_8bit_adam and device.type == "cuda":
        try:
            import bitsandbytes as bnb  # optional

            return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        except Exception as exc:  # noqa: BLE001 - not installed or no CUDA build
            notes.append(f"8-bit Adam unavailable ({type(exc).__name__}); using torch AdamW.")
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------- the trainer

class Trainer(DataCache, Checkpoints):
    """One training run of `recipe` on `engine`'s resident UNet (and, with text-encoder LoRA, its
    text encoders). `run(ctx)` inside a job."""

    def __init__(self, engine, recipe: Recipe, config: TrainSettings, *, run_root: Path | None = None,
                 step_hook: Callable[[int], None] | None = None, owner: str = "local"):
        self.engine = engine
        self.recipe = recipe
        self.notes: list[str] = []
        if getattr(engine, "low_vram", False):  # the low-memory mode: every preset, every method
            config = low_vram_settings(config)
            self.notes.append(f"Low-VRAM mode: gradient checkpointing on; optimizer: "
                              f"{optimizer_name(config, engine.device)}.")
        self.cfg = config.check()
        self.owner = owner  # whose run: checkpoints are kept per owner, and only the owner resumes them
        root = Path(run_root) if run_root else Path(engine.data_dir) / "training"
        self.run_root = root if owner == "local" else root / owner_dirname(engine.data_dir, owner)
        self.step_hook = step_hook  # tests: called after every optimizer step
        self.adapter_name = f"train-{uuid.uuid4().hex[:8]}"
        self._gc_was: bool | None = None
        self._parametrized: list[torch.nn.Module] = []  # LoRA down layers under a parametrization
        self._te_lora: dict[str, torch.nn.Module] = {}  # text encoders carrying the training adapter
        self._module: Any = None  # AdapterSpec.module_adapter's object while it is hooked on
        self.is_main = True  # False in the secondary processes of `accelerate launch`
        self.tokens: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    # ------------------------------------------------------------- conditioning and loss
    def _cond(self, prompts: Sequence[str]):
        if self._te_lora:  # text-encoder LoRA is training: encode now, with grad
            emb, pooled = self._encode_live(prompts)
        else:
            emb = torch.stack([self.text[p]["emb"] for p in prompts])
            pooled = torch.stack([self.text[p]["pooled"] for p in prompts]) if self.engine.xl else None
        kw = {}
        if self.engine.xl:
            res = self.engine.resolution
            time_ids = torch.tensor([[res, res, 0, 0, res, res]] * len(prompts), device=emb.device,
                                    dtype=emb.dtype)
            kw["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return emb, kw

    def _losses(self, model, latents, prompts, gen, weights_snr: bool) -> torch.Tensor:
        """Per-sample epsilon (or v) MSE at random timesteps."""
        sched = self.noise_scheduler
        dev = latents.device
        noise = torch.randn(latents.shape, generator=gen).to(dev, latents.dtype)
        if self.cfg.noise_offset:
            noise = noise + self.cfg.noise_offset * torch.randn(
                (latents.shape[0], latents.shape[1], 1, 1), generator=gen).to(dev, latents.dtype)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(dev)
        noisy = sched.add_noise(latents, noise, t)
        emb, kw = self._cond(prompts)
        pred = model(noisy, t, encoder_hidden_states=emb, return_dict=False, **kw)[0]
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, t)
        else:
            target = noise
        per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if weights_snr and self.cfg.snr_gamma:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(sched, t)
            w = torch.clamp(snr, max=float(self.cfg.snr_gamma)) / snr
            if sched.config.prediction_type == "v_prediction":
                w = w + 1
            per = per * w.to(per.dtype)
        return per

    @torch.no_grad()
    def eval_loss(self, prior: bool = False, draws: int | None = None) -> float:
        """Mean loss over fixed (noise, timestep) draws: comparable before and after training."""
        lat = self.prior_latents if prior else self.latents
        prompts = self.prior_prompts if prior else self.prompts
        if lat is None:
            return float("nan")
        gen = torch.Generator().manual_seed(1234)
        vals = []
        unet = self.engine.pipe.unet
        was_training = {m: m.training for m in (unet, *self._te_lora.values())}
        self._train_mode(False)
        try:
            for _ in range(int(draws or self.cfg.eval_draws)):
                vals.append(self._losses(unet, lat, prompts, gen, False).mean().item())
        finally:
            for m, mode in was_training.items():
                m.train(mode)
        return sum(vals) / len(vals)

    def _train_mode(self, on: bool) -> None:
        """The UNet and the text encoders being adapted in training (dropout) or eval mode."""
        for m in (self.engine.pipe.unet, *self._te_lora.values()):
            m.train(on)

    # ------------------------------------------------------------- adapter set-up / tear-down
    def _attach(self) -> list[torch.nn.Parameter]:
        unet = self.engine.pipe.unet
        spec = self.recipe.adapter
        if spec.full and spec.text_encoder_rank:
            raise UserError("Text-encoder LoRA goes with LoRA training; full fine-tuning trains the UNet only.")
        if spec.full:
            if self.engine.xl:
                raise UserError("Full fine-tuning is offered for SD 1.5 only (SDXL's 2.6 B weights need "
                                "far more memory); use LoRA on SDXL.")
            library.adapters(self.engine).unload_all()  # library adapters reload on demand
            self._full_backup = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}
            self._full_dtype = unet.dtype
            if unet.dtype != torch.float32:
                unet.to(torch.float32)  # Adam on fp16 weights diverges; the backup restores the original
            params = list(unet.parameters())
        elif spec.module_adapter is not None:
            params = self._attach_module(unet, spec)
        else:
            try:
                with torch.random.fork_rng(devices=[]):  # the LoRA init follows the run's seed
                    torch.manual_seed(int(self.cfg.seed))
                    unet.add_adapter(spec.lora_config(), adapter_name=self.adapter_name)
            except ValueError as exc:
                raise UserError(f"The adapter targets do not fit this model: {exc}") from None
            unet.set_adapter(self.adapter_name)
            unet.enable_adapters()
            if spec.down_parametrization is not None:
                self._parametrize_down(unet, spec.down_parametrization)
            params = [p for n, p in unet.named_parameters() if f".{self.adapter_name}." in n]
            if not params:
                self._detach(failed=True)
                raise UserError("The adapter targets matched no module of this model.")
            if spec.text_encoder_rank:
                params += self._attach_text_encoders()
        unet.requires_grad_(False)
        for te in self._te_lora.values():
            te.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            if p.dtype != torch.float32:
                p.data = p.data.float()  # trainable weights in fp32; frozen ones stay as they are
        return params

    def _attach_module(self, unet, spec: AdapterSpec) -> list[torch.nn.Parameter]:
        """A non-peft adapter (AdapterSpec.module_adapter) hooked onto the UNet, seeded by the run."""
        if spec.text_encoder_rank:
            raise UserError("Text-encoder LoRA goes with LoRA training, not with this adapter.")
        self._module = spec.module_adapter(unet, generator=torch.Generator().manual_seed(int(self.cfg.seed)))
        return list(self._module.parameters())

    def _attach_text_encoders(self) -> list[torch.nn.Parameter]:
        """The training adapter (same name as the UNet's) injected in place into each text
        encoder, seeded like the UNet's, the only adapter active there; its LoRA parameters."""
        from peft import inject_adapter_in_model

        spec = self.recipe.adapter
        tes = library.text_encoders(self.engine)
        if not tes:
            raise UserError("This model has no text encoder for a text-encoder LoRA.")
        with torch.random.fork_rng(devices=[]):  # the LoRA init follows the run's seed
            torch.manual_seed(int(self.cfg.seed))
            for comp, te in tes.items():
                self._te_lora[comp] = te  # before injecting: a failure is cleaned up too
                try:
                    # transformers' own `add_adapter` refuses peft < 0.22: peft directly
                    inject_adapter_in_model(spec.text_encoder_config(), te, adapter_name=self.adapter_name)
                except ValueError as exc:
                    raise UserError(f"The text-encoder LoRA targets do not fit the {comp}: {exc}") from None
        params = []
        for comp, te in self._te_lora.items():
            library.activate(te, [self.adapter_name], [1.0])
            own = [p for n, p in te.named_parameters() if f".{self.adapter_name}." in n]
            if not own:
                raise UserError(f"The text-encoder LoRA targets matched no module of the {comp}.")
            params += own
        return params

    def _parametrize_down(self, unet, factory) -> None:
        from torch.nn.utils import parametrize

        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        for mod in unet.modules():
            lora_a = getattr(mod, "lora_A", None)
            if isinstance(lora_a, torch.nn.ModuleDict) and self.adapter_name in lora_a:
                down = lora_a[self.adapter_name]
                parametrize.register_parametrization(down, "weight", factory(mod.get_base_layer(), gen))
                self._parametrized.append(down)

    def _unparametrize_down(self) -> None:
        """Materialise re-parametrised down weights: the adapter becomes a plain LoRA."""
        from torch.nn.utils import parametrize

        for down in self._parametrized:
            if parametrize.is_parametrized(down, "weight"):
                with torch.no_grad():
                    parametrize.remove_parametrizations(down, "weight", leave_parametrized=True)
        self._parametrized = []

    def _detach(self, failed: bool) -> None:
        """Leave the resident UNet as other tabs expect it: frozen, eval, adapters disabled;
        on failure without the training adapter; after full fine-tuning, the original weights."""
        self._unparametrize_down()
        if self._module is not None:  # its weights are in the Outcome already (or discarded)
            self._module.remove()
            self._module = None
        for te in self._te_lora.values():
            te.requires_grad_(False)
            te.eval()
            if self.adapter_name in library.peft_names(te):
                if failed:
                    library.delete_adapter(te, self.adapter_name)  # the wrappers too, if it was the last
                else:
                    for n, p in te.named_parameters():
                        if f".{self.adapter_name}." in n and p.dtype != self.engine.dtype:
                            p.data = p.data.to(self.engine.dtype)
            elif not library.peft_names(te):
                library.unload_peft(te)
            library.disable_all(te)
        self._te_lora = {}
        unet = self.engine.pipe.unet
        unet.requires_grad_(False)
        unet.eval()
        if self._gc_was is not None and unet.is_gradient_checkpointing != self._gc_was:
            unet.disable_gradient_checkpointing() if not self._gc_was else unet.enable_gradient_checkpointing()
        if self.recipe.adapter.full:
            if getattr(self, "_full_backup", None) is not None:
                unet.to(self._full_dtype)
                unet.load_state_dict(self._full_backup)
                self._full_backup = None
            return
        if self.adapter_name in library.peft_names(unet):
            if failed:
                unet.delete_adapters(self.adapter_name)
                if not library.peft_names(unet):
                    library.unload_peft(unet)
            else:
                for n, p in unet.named_parameters():
                    if f".{self.adapter_name}." in n and p.dtype != self.engine.dtype:
                        p.data = p.data.to(self.engine.dtype)
        library.disable_all(unet)

    def _extract_lora(self) -> tuple[dict[str, torch.Tensor], dict, float]:
        """Full fine-tuning -> LoRA: truncated SVD of each Linear weight's change."""
        unet = self.engine.pipe.unet
        r = int(self.recipe.adapter.full_extract_rank)
        sd, kept, total, targets = {}, 0.0, 0.0, []
        for name, mod in unet.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            delta = mod.weight.detach().float().cpu() - self._full_backup[f"{name}.weight"].float()
            n2 = float((delta ** 2).sum())
            total += n2
            if n2 == 0.0:
                continue
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            k = min(r, S.numel())
            kept += float((S[:k] ** 2).sum())
            sq = S[:k].sqrt()
            sd[f"unet.{name}.lora_B.weight"] = (U[:, :k] * sq).contiguous()
            sd[f"unet.{name}.lora_A.weight"] = (sq[:, None] * Vh[:k]).contiguous()
            targets.append(name)
        configs = {"unet": {"r": r, "lora_alpha": r, "target_modules": sorted(targets)}}
        return sd, configs, (kept / total if total else 1.0)

    def discard(self, out: Outcome) -> None:
        """Drop a finished run's adapter without saving it (a secondary process of a multi-process run)."""
        if out.adapter_name is not None:
            library.delete_everywhere(self.engine, out.adapter_name)

    # ------------------------------------------------------------- sampling
    def _samples(self, ctx, step: int) -> list[tuple[Image.Image, str]]:
        prompts = self.recipe.sample_prompts
        if not prompts:
            return []
        self._train_mode(False)
        try:
            images = self.engine.text_to_image(ctx, prompts, seed=self.cfg.sample_seed,
                                               steps=self.cfg.sample_steps, guidance=self.cfg.sample_guidance,
                                               message=f"Samples at step {step}:")
        finally:
            self._train_mode(True)
        ctx.emit(TrainSamples(step, images, list(prompts)))
        return list(zip(images, prompts))

    # ------------------------------------------------------------- the run
    def run(self, ctx) -> Outcome:
        """Prepare, then the step loop; the adapter stays on the UNet (see `_detach`)."""
        from diffusers import DDPMScheduler

        started = time.monotonic()
        engine, cfg, recipe = self.engine, self.cfg, self.recipe
        unet = engine.pipe.unet
        accelerator = _accelerator(engine, cfg)
        self.is_main = accelerator.is_main_process
        if recipe.prepare is not None:
            # several processes (`accelerate launch`): the main one generates and caches the
            # class images first, the others then reuse them from the store
            with accelerator.main_process_first():
                recipe.prepare(engine, ctx, recipe)
        if not recipe.examples:
            raise UserError("There are no training images.")
        self._cache(ctx)
        self._key = self.fingerprint()
        if self.is_main:
            self._sweep_partial_checkpoints()
        self.noise_scheduler = DDPMScheduler.from_config(engine.pipe.scheduler.config)
        if recipe.adapter.text_encoder_rank and accelerator.num_processes > 1:
            raise UserError("Text-encoder LoRA trains in one process only (its gradients are not "
                            "synchronised across processes); drop it or run without `accelerate launch`.")
        self._gc_was = unet.is_gradient_checkpointing
        finished = False
        try:
            loss_before = self.eval_loss()
            params = self._attach()
            if self._te_lora and getattr(engine, "low_vram", False):
                engine.hold_on_device(self._te_lora.values())  # not offloaded while it trains
            params_named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
            params_named += [(f"{comp}.{n}", p) for comp, te in self._te_lora.items()
                             for n, p in te.named_parameters() if p.requires_grad]
            if self._module is not None:
                if accelerator.num_processes > 1:
                    raise UserError("This adapter trains in one process only (DDP does not see it).")
                params_named += [(f"module_adapter.{n}", p) for n, p in self._module.named_parameters()]
            if cfg.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            optimizer, lr_sched, gen = self._optimization(params, accelerator)
            start, history = self._resume(ctx, params_named, optimizer, lr_sched, gen)
            for note in self.notes:
                ctx.notice(note)
            optimizer = accelerator.prepare_optimizer(optimizer)
            model = accelerator.prepare_model(unet) if accelerator.num_processes > 1 else unet
            self._train_mode(True)
            samples: list[tuple[Image.Image, str]] = []
            for step in range(start + 1, int(cfg.steps) + 1):
                point = self._step(model, accelerator, optimizer, lr_sched, params, gen, step)
                history.append({k: v for k, v in asdict(point).items()})
                ctx.check()
                ctx.emit(point)
                if self.step_hook is not None:
                    self.step_hook(step)
                if cfg.checkpoint_every and step % int(cfg.checkpoint_every) == 0 and step < cfg.steps \
                        and accelerator.is_main_process:
                    path = self._save_checkpoint(step, params_named, optimizer, lr_sched, gen, history)
                    ctx.emit(Checkpointed(step, str(path)))
                if cfg.sample_every and step % int(cfg.sample_every) == 0 and step < cfg.steps:
                    samples = self._samples(ctx, step)
            samples = self._samples(ctx, int(cfg.steps))
            out = self._outcome(accelerator, params, params_named, start, history, samples, loss_before, started)
            finished = True
            return out
        finally:
            if not finished:
                log.info("training stopped; the last checkpoint (if any) is kept in %s", self._run_dir())
            self._detach(failed=not finished)
            accelerator.free_memory()
            if finished and not cfg.keep_checkpoints:
                shutil.rmtree(self._run_dir(), ignore_errors=True)

    def _optimization(self, params, accelerator):
        """(optimizer, learning-rate schedule, generator): each process draws its own examples,
        noise and timesteps (DDP averages the gradients)."""
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        optimizer = _optimizer(params, cfg, self.engine.device, self.notes)
        lr_sched = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=int(cfg.lr_warmup_steps), num_training_steps=int(cfg.steps))
        gen = torch.Generator().manual_seed(int(cfg.seed) + accelerator.process_index)
        return optimizer, lr_sched, gen

    def _resume(self, ctx, params_named, optimizer, lr_sched, gen) -> tuple[int, list[dict]]:
        """(the step to go on from, the loss history so far): from the latest checkpoint of this
        run's key when resuming is on and there is one, else (0, [])."""
        ckpt = self.latest_checkpoint() if self.cfg.resume else None
        if ckpt is None:
            return 0, []
        start, history = self._load_checkpoint(ckpt, params_named, optimizer, lr_sched, gen)
        if start >= self.cfg.steps:
            start = min(start, self.cfg.steps)
        ctx.notice(f"Resumed from the checkpoint at step {start}.")
        return start, history

    def _step(self, model, accelerator, optimizer, lr_sched, params, gen, step: int) -> TrainStep:
        """One optimizer step over `grad_accum` micro-batches: the instance loss plus, with prior
        preservation, lambda times the prior loss on class images with the class prompt."""
        cfg, recipe = self.cfg, self.recipe
        n_inst, bs = self.latents.shape[0], int(cfg.batch_size)
        prior = self.prior_latents is not None and float(recipe.prior_weight) > 0
        t0 = time.monotonic()
        inst_vals, prior_vals = [], []
        for _ in range(int(cfg.grad_accum)):
            with accelerator.accumulate(model):
                idx = torch.randint(0, n_inst, (bs,), generator=gen)
                with accelerator.autocast():
                    inst = self._losses(model, self.latents[idx], [self.prompts[i] for i in idx], gen, True)
                    loss = inst.mean()
                    if prior:
                        pidx = torch.randint(0, self.prior_latents.shape[0], (bs,), generator=gen)
                        pl = self._losses(model, self.prior_latents[pidx],
                                          [self.prior_prompts[i] for i in pidx], gen, False).mean()
                        loss = loss + float(recipe.prior_weight) * pl
                        prior_vals.append(pl.item())
                if not torch.isfinite(loss):
                    raise UserError(f"The loss became {loss.item()} at step {step}: lower the learning "
                                    "rate or use bf16/fp32.")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, float(cfg.max_grad_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                inst_vals.append(inst.mean().item())
        lr = float(lr_sched.get_last_lr()[0])
        lr_sched.step()
        il = sum(inst_vals) / len(inst_vals)
        plv = sum(prior_vals) / len(prior_vals) if prior_vals else None
        total_loss = il + (float(recipe.prior_weight) * plv if plv is not None else 0.0)
        return TrainStep(step, int(cfg.steps), total_loss, lr, il, plv, time.monotonic() - t0)

    def _outcome(self, accelerator, params, params_named, start, history, samples, loss_before,
                 started) -> Outcome:
        """After the last step: the loss on the same draws as before, what the run reports, and
        for full fine-tuning the LoRA extracted from the weight change."""
        self._train_mode(False)
        loss_after = self.eval_loss()
        extra = {"resumed_from": start, "mixed_precision": accelerator.mixed_precision,
                 "processes": accelerator.num_processes,
                 "weights_digest": tensor_digest(*(p for _, p in params_named))[:16]}
        if self._te_lora:
            extra["text_encoder_lora"] = sorted(self._te_lora)
        sd = configs = None
        if self.recipe.adapter.full:
            sd, configs, share = self._extract_lora()
            extra["extracted_energy"] = round(share, 4)
        elif self._module is not None:
            sd, configs = self._module.state_dict(), self._module.configs()
        plain = self.recipe.adapter.full or self._module is not None
        return Outcome(None if plain else self.adapter_name, sd, configs, history, samples,
                       library.count_params(params), loss_before, loss_after, time.monotonic() - started, extra)


# --------------------------------------------------------------------------- save + stream

def save_outcome(engine, recipe: Recipe, cfg: TrainSettings, out: Outcome, *, owner: str):
    """Put the trained adapter in the library and make it resident under its library id."""
    store = library.get_store(engine)
    hyper = {k: v for k, v in asdict(cfg).items()}
    hyper.update(rank=recipe.adapter.rank, alpha=recipe.adapter.alpha or recipe.adapter.rank,
                 targets=recipe.adapter.target_modules,
                 text_encoder_rank=int(recipe.adapter.text_encoder_rank),
                 text_encoder_targets=recipe.adapter.text_encoder_targets if recipe.adapter.text_encoder_rank else None,
                 prior_weight=recipe.prior_weight,
                 prior_images=len(recipe.prior), instance_images=len(recipe.examples),
                 full_finetune=recipe.adapter.full, trainable_params=out.trainable_params)
    extra = {**recipe.extra, **out.extra, "loss_before": out.loss_before, "loss_after": out.loss_after,
             "seconds": round(out.seconds, 2), "history": out.history[-2000:],
             "instance_prompts": sorted(set(e.prompt for e in recipe.examples))}
    common = dict(owner=owner, name=recipe.name, method=recipe.method, base_model=library.base_model_id(engine),
                  arch=library.arch_of(engine), trigger_words=recipe.trigger_words,
                  class_name=recipe.class_name, steps=cfg.steps, hyperparameters=hyper, extra=extra,
                  parts=recipe.adapter.parts, samples=[(img, p) for img, p in out.samples])
    if out.adapter_name is not None:
        # the UNet's adapter, and the text encoders' under the same name when it has them
        models = {"unet": engine.pipe.unet, **library.text_encoders(engine)}
        try:
            a = store.save_adapter(models=models, adapter_name=out.adapter_name, **common)
        except BaseException:
            library.delete_everywhere(engine, out.adapter_name)
            raise
        library.adapters(engine).adopt(a.id, out.adapter_name)
    else:
        a = store.save_adapter(state_dict=out.state_dict, configs=out.configs, **common)
        if recipe.adapter.module_adapter is None:  # a non-peft adapter is applied per request instead
            library.adapters(engine).ensure(a.id, owner)
    return a


def train(engine, recipe: Recipe, config: TrainSettings, *, owner: str = "local", stop_key: str | None = None,
          run_root: Path | None = None, step_hook=None) -> Iterator[Any]:
    """Stream a training job (holding the engine's GPU slot); ends with a `Result` whose info
    has the library entry ("adapter_id", "adapter_name") and the loss figures. `owner` owns the
    adapter; `stop_key` (default: `owner`) is the key that `engine.cancel` stops the job by."""
    trainer = Trainer(engine, recipe, config, run_root=run_root, step_hook=step_hook, owner=owner)

    def work(ctx) -> Result:
        out = trainer.run(ctx)
        if not trainer.is_main:  # several processes: the main one saves; the others' copies are the same
            trainer.discard(out)
            return Result(images=[], info={"adapter_id": None, "loss_after": out.loss_after,
                                           "history": out.history, **out.extra})
        # no cancel check here: the run is finished, a late Stop must not drop it unsaved
        ctx.emit(Progress(config.steps, config.steps, "Saving the adapter to the library"))
        a = save_outcome(engine, recipe, config, out, owner=owner)
        return Result(images=[im for im, _ in out.samples],
                      info={"adapter_id": a.id, "adapter_name": a.name, "loss_before": out.loss_before,
                            "loss_after": out.loss_after, "trainable_params": out.trainable_params,
                            "history": out.history, "seconds": round(out.seconds, 2),
                            "sample_prompts": [p for _, p in out.samples], **out.extra})
    return engine.run(work, stop_key=stop_key or owner, kind=f"train-{recipe.method}")


if __name__ == "__main__":  # `python -m core.train ...`: the CLI lives in core/train_cli.py
    from core.train_cli import main as _main

    sys.exit(_main())
