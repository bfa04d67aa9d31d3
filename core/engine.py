"""The engine: one resident base model, shared by every method, and streamed jobs.

`Engine` loads the base pipeline once (in the background, so the UI comes up at once), keeps
it on the device, derives other pipelines from the same components with `from_pipe` (no
second copy of any weight), and runs jobs one at a time on the accelerator, each as a
generator of progress events with a latent preview per step.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from . import devices, models, validate
from .errors import UserError
from .events import Notice, Progress, Result
from .jobs import GpuSlot, Job, JobContext, JobLimits, JobRegistry, stream
from .preview import fit_latent_rgb_map, latents_to_previews

if TYPE_CHECKING:
    from .library import ResidentAdapters
    from .store import Store

log = logging.getLogger(__name__)

MAX_TOKENS = 77
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Health:
    """What the app's banner says about the base model: `state` is "loading", "ready" or
    "failed"; `detail` is the latest loading step, or the reason and the fix."""

    state: str
    model: str
    device: str
    dtype: str
    offline: bool
    detail: str = ""
    low_vram: bool = False   # the low-memory mode (see Engine's low-memory block)
    low_vram_reason: str = ""


class Engine:
    def __init__(self, model: str = "sdxl", device: str | None = None,
                 dtype: str | None = None, data_dir: str | Path = "data", low_vram: bool | None = None):
        self.spec = models.resolve(model)
        self.device = devices.pick_device(device)
        self.dtype = devices.pick_dtype(self.device, dtype)
        self._init_low_vram(low_vram)
        self.data_dir = Path(data_dir)
        self.jobs = JobRegistry()
        self.gpu_lock = GpuSlot()            # one accelerator job at a time, in arrival order
        self.limits: JobLimits | None = None  # a shared instance's fair share (set by the app)
        self._load_lock = threading.Lock()
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._load_messages: list[str] = []
        self._pipe = None
        self._derived: dict[Any, Any] = {}
        self._rgb_map: torch.Tensor | None = None
        self._library_lock = threading.Lock()
        self._store: Store | None = None
        self._resident: ResidentAdapters | None = None

    # ------------------------------------------------------------------ loading
    @property
    def family(self) -> str:
        return self.spec.name

    @property
    def offline(self) -> bool:
        return self.spec.offline

    @property
    def xl(self) -> bool:
        return self.spec.xl

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    def load(self) -> Any:
        """Load the base pipeline (once); later calls return the resident one."""
        with self._load_lock:
            if self._pipe is None:
                if self._load_error is not None:
                    raise self._load_error
                try:
                    pipe = models.load_pipeline(self.spec, self.device, self.dtype,
                                                report=self._load_messages.append)
                    if self.low_vram:
                        self._apply_low_vram(pipe)
                    self._pipe = pipe
                    self._rgb_map = fit_latent_rgb_map(self._pipe.vae)
                except BaseException as exc:
                    self._load_error = exc
                    raise
                finally:
                    self._loaded.set()
            return self._pipe

    def load_in_background(self) -> threading.Thread:
        def run():
            try:
                self.load()
            except BaseException as exc:  # noqa: BLE001 - reported to every job that waits
                log.error("%s", exc)
        thread = threading.Thread(target=run, name="engine-load", daemon=True)
        thread.start()
        return thread

    def wait_loaded(self) -> Iterator[Progress]:
        """Progress events while the model loads; raises the load error, if any."""
        if self._pipe is not None:
            return
        if not self._loaded.is_set() and not self._load_lock.locked():
            self.load_in_background()  # nobody is loading yet
        started = time.monotonic()
        while not self._loaded.wait(timeout=0.5):
            msg = self._load_messages[-1] if self._load_messages else f"Loading {self.spec.source}"
            yield Progress(0, 0, f"{msg} ({time.monotonic() - started:.0f} s)")
        self.load()

    def health(self) -> Health:
        """The model's state now, for the banner (never blocks, never loads)."""
        facts = dict(model=self.spec.source, device=str(self.device),
                     dtype=str(self.dtype).replace("torch.", ""), offline=self.offline,
                     low_vram=self.low_vram, low_vram_reason=self.low_vram_reason)
        if self._pipe is not None:
            return Health("ready", **facts)
        if self._load_error is not None:
            err = self._load_error
            detail = str(err) if isinstance(err, UserError) else \
                f"{type(err).__name__} while loading; see the server log."
            return Health("failed", **facts, detail=detail)
        return Health("loading", **facts, detail=self._load_messages[-1] if self._load_messages else "")

    @property
    def pipe(self):
        return self.load()

    def pipeline(self, cls=None, **components):
        """A pipeline of class `cls` on the resident components (diffusers `from_pipe`).
        Extra components (e.g. another scheduler) replace the shared ones in the new pipeline
        only. Cached, so each variant is built once."""
        base = self.pipe
        if cls is None and not components:
            return base
        key = (cls, tuple(sorted((k, type(v).__name__, repr(getattr(v, "config", None)))
                                 for k, v in components.items())))
        if key not in self._derived:
            cls = cls or type(base)
            derived = cls.from_pipe(base, **components)
            derived.set_progress_bar_config(disable=True)
            self._derived[key] = derived
        return self._derived[key]

    # ------------------------------------------------------------------ the adapter library
    @property
    def store(self) -> Store:
        """The adapter library every tab shares (`<data_dir>/library`), opened on first use."""
        with self._library_lock:
            if self._store is None:
                from .store import Store

                self._store = Store(self.data_dir / "library")
            return self._store

    @property
    def resident_adapters(self) -> ResidentAdapters:
        """Which library adapters are loaded on this engine's UNet and text encoders."""
        with self._library_lock:
            if self._resident is None:
                from .library import ResidentAdapters

                self._resident = ResidentAdapters(self)
            return self._resident

    # ------------------------------------------------------------------ jobs
    def run(self, work: Callable[[JobContext], Result], *, stop_key: str = "local",
            kind: str = "job", needs_model: bool = True) -> Iterator[Progress | Notice | Result]:
        """Stream `work` as a job on the accelerator (one at a time, in arrival order). The job
        is registered from the start, so a Stop reaches it while the model is still loading,
        too; on a shared instance it is refused at once (`UserError`) if it would take more
        than its owner's share (`self.limits`), and stopped after the time limit."""
        job = Job(stop_key, kind)
        self.jobs.admit(job, self.limits)
        if self.low_vram:
            work = self._offload_after(work)
        try:
            if needs_model:
                for event in self.wait_loaded():
                    if job.cancelled.is_set():
                        raise job.stopped()
                    yield event
            yield from stream(work, job, self.jobs, lock=self.gpu_lock,
                              time_limit_s=self.limits.time_limit_s if self.limits else None)
        finally:
            self.jobs.remove(job)

    def cancel(self, stop_key: str) -> int:
        """Stop the jobs started with this Stop key (each stops within one step)."""
        return self.jobs.cancel(stop_key)

    # ------------------------------------------------------------------ helpers for methods
    def clean_prompt(self, prompt: str, ctx: JobContext | None = None) -> str:
        """Control characters removed; a notice if the prompt is longer than the text
        encoder's 77 tokens (the rest is ignored by the model)."""
        prompt = _CONTROL.sub(" ", prompt or "").strip()
        ids = self.pipe.tokenizer(prompt, truncation=False).input_ids
        if len(ids) > MAX_TOKENS and ctx is not None:
            kept = self.pipe.tokenizer.decode(ids[1:MAX_TOKENS - 1])
            ctx.notice(f"Prompt longer than {MAX_TOKENS} tokens: only \"{kept}\" is used.")
        return prompt

    def check_size(self, width: int, height: int) -> tuple[int, int]:
        """Snap to the VAE's grid and refuse sizes the model can't do."""
        factor = self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        lo, hi = 8 * factor if not self.offline else factor, 2048 if not self.offline else 256
        for v, name in ((width, "width"), (height, "height")):
            if not lo <= int(v) <= hi:
                raise UserError(f"The {name} must be between {lo} and {hi} pixels (got {v}).")
        return (int(width) // factor * factor, int(height) // factor * factor)

    def initial_latents(self, n: int, seed: int, width: int, height: int) -> torch.Tensor:
        """Starting noise with one seed per image (seed, seed+1, ...), so image i of a batch
        is the image its prompt gives alone with seed+i."""
        pipe = self.pipe
        shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor,
                 width // pipe.vae_scale_factor)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed) + i))
                 for i in range(n)]
        return torch.stack(noise).to(self.device, self.dtype) * pipe.scheduler.init_noise_sigma

    def previews(self, latents: torch.Tensor) -> list[Image.Image]:
        return latents_to_previews(latents, self._rgb_map)

    def step_callback(self, ctx: JobContext, total: int, message: str = "Denoising",
                      on_step: Callable[[int, Any, torch.Tensor], torch.Tensor | None] | None = None):
        """A `callback_on_step_end` that streams a preview, stops on cancel and may edit the
        latents (`on_step(i, t, latents)` returning new latents)."""
        def callback(pipe, i, t, kwargs):
            latents = kwargs["latents"]
            out = {}
            if on_step is not None:
                new = on_step(i, t, latents)
                if new is not None:
                    out["latents"] = latents = new
            ctx.progress(i + 1, total, f"{message} {i + 1}/{total}", self.previews(latents))
            return out
        return callback

    def text_to_image(self, ctx: JobContext, prompts: Sequence[str], *, negative_prompt: str = "",
                      seed: int = 0, steps: int = 30, guidance: float = 5.0, width: int | None = None,
                      height: int | None = None, latents: torch.Tensor | None = None,
                      pipe=None, on_step=None, message: str = "Denoising",
                      **call_kwargs) -> list[Image.Image]:
        """The common pipeline call: per-image seeds, streaming, cancel."""
        pipe = pipe or self.pipe
        width, height = self.check_size(width or self.resolution, height or self.resolution)
        prompts = [self.clean_prompt(p, ctx) for p in prompts]
        if latents is None:
            latents = self.initial_latents(len(prompts), seed, width, height)
        negative = [self.clean_prompt(negative_prompt)] * len(prompts) if negative_prompt else None
        with torch.inference_mode():
            out = pipe(prompt=list(prompts), negative_prompt=negative, num_inference_steps=int(steps),
                       guidance_scale=float(guidance), width=width, height=height, latents=latents,
                       callback_on_step_end=self.step_callback(ctx, int(steps), message, on_step),
                       callback_on_step_end_tensor_inputs=["latents"], output_type="pil",
                       **call_kwargs)
        return out.images

    def generate(self, prompts: Sequence[str], *, stop_key: str = "local", **kwargs) -> Iterator:
        """A plain batch, one image per prompt, streamed."""
        prompts = validate.prompt_list(prompts)

        def work(ctx: JobContext) -> Result:
            images = self.text_to_image(ctx, prompts, **kwargs)
            return Result(images=images, info={"prompts": list(prompts)})
        return self.run(work, stop_key=stop_key, kind="generate")

    @torch.no_grad()
    def encode_image(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        """VAE latent (scaled, mean of the posterior) of an RGB image, encoded in fp32."""
        from .images import center_crop_resize
        import numpy as np

        vae = self.pipe.vae
        img = center_crop_resize(image, width, height)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        orig = vae.dtype
        try:
            if orig != torch.float32:  # the encoder's Jacobian and statistics need fp32
                vae.to(torch.float32)
            z = vae.encode(x.to(self.device)).latent_dist.mean * vae.config.scaling_factor
        finally:
            if orig != torch.float32:
                vae.to(orig)
        return z.to(self.dtype)


    # ------------------------------------------------------------------ the low-memory mode (issue 19)
    # On with --low-vram / STUDIO_LOW_VRAM=1, or by itself on a CUDA GPU under 16 GiB
    # (core.devices.low_vram_mode); off on CPU and MPS unless forced. What it does, exactly:
    # * the text encoders are offloaded to the CPU while idle: accelerate's `cpu_offload_with_hook`
    #   (the hook diffusers' `enable_model_cpu_offload` uses) moves one to the GPU when it is called,
    #   and it goes back to the CPU when the UNet next runs without grad (inference) and at the end
    #   of every job. CUDA only. A text encoder that trains (text-encoder LoRA) is held on the GPU
    #   for the rest of its job (`hold_on_device`, called by the trainer).
    # * the UNet and the VAE stay resident. diffusers' whole-model offload is not used: its chained
    #   hooks move the UNet off the GPU after every pipeline call (5 GB back and forth per SDXL job)
    #   and a text encoder off between its forward and backward, which breaks text-encoder LoRA
    #   training; the trainer and the peft adapters work on the resident UNet in place.
    # * VAE tiling (tiles of at most LOW_VRAM_TILE px) and slicing (one image of a batch at a time).
    # * an fp16-safe decode: the fp16-fixed SDXL VAE when it is in the local cache, else a decode
    #   that upcasts the VAE to fp32 for the call (core.models.make_decode_fp16_safe).
    # * training: core.train.low_vram_settings on every run (gradient checkpointing, 8-bit Adam
    #   through bitsandbytes on CUDA, with a note naming the optimizer actually used).
    LOW_VRAM_TILE = 512

    def _init_low_vram(self, forced: bool | None) -> None:
        self.low_vram = devices.low_vram_mode(self.device, forced)
        if not self.low_vram:
            self.low_vram_reason = ""
        elif forced:
            self.low_vram_reason = "forced on"
        else:
            total = devices.total_memory(self.device)
            self.low_vram_reason = f"automatic: the GPU has {total / 2**30:.1f} GiB"
        self.low_vram_notes: list[str] = []
        self._idle_hooks: dict[str, Any] = {}   # text encoder name -> accelerate offload hook
        self._held: set[str] = set()            # text encoders kept on the GPU for this job
        self._unet_hook = None                  # the UNet's pre-forward hook (a removable handle)
        self._before_low_vram: dict[str, Any] = {}  # what _apply_low_vram changed, for set_low_vram(False)

    def _apply_low_vram(self, pipe) -> None:
        """Set the low-memory mode up on a freshly loaded pipeline (see the block comment)."""
        notes = self.low_vram_notes
        vae = pipe.vae
        self._before_low_vram = {"vae": vae, "tiles": (vae.tile_sample_min_size, vae.tile_latent_min_size)}
        fixed = models.fp16_fix_vae(self.spec, self.dtype, self.device)
        if fixed is not None:
            pipe.register_modules(vae=fixed)
            notes.append("fp16-fixed VAE")
            vae = fixed
        vae.enable_tiling()
        vae.enable_slicing()
        if vae.tile_sample_min_size > self.LOW_VRAM_TILE:
            down = 2 ** (len(vae.config.block_out_channels) - 1)
            vae.tile_sample_min_size = self.LOW_VRAM_TILE
            vae.tile_latent_min_size = self.LOW_VRAM_TILE // down
        notes.append("VAE tiling and slicing")
        models.make_decode_fp16_safe(vae)
        if fixed is None and self.dtype == torch.float16:
            notes.append("VAE decoded in fp32")
        if self.device.type == "cuda":
            self._offload_text_encoders(pipe, self.device)
            notes.append("text encoders on the CPU when idle")
        else:
            notes.append("no offload (not CUDA)")

    def _offload_text_encoders(self, pipe, device: torch.device) -> None:
        for name in ("text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                self._idle_hooks[name] = offload_when_idle(module, device)
        if self._idle_hooks:
            self._unet_hook = pipe.unet.register_forward_pre_hook(self._before_unet)

    def _before_unet(self, module, args) -> None:
        if not torch.is_grad_enabled():  # inference: the prompts are encoded by now
            self.offload_idle()

    def offload_idle(self, *, release_held: bool = False) -> None:
        """Move the idle text encoders to the CPU (those held for a training job too, with
        `release_held`, at the end of the job)."""
        if release_held:
            self._held.clear()
        for name, hook in self._idle_hooks.items():
            module = hook.model
            if name not in self._held and next(module.parameters()).device.type != "cpu":
                hook.offload()

    def hold_on_device(self, modules) -> None:
        """Keep these text encoders on the GPU until the job ends (a text encoder whose LoRA
        trains must not move between its forward and its backward, nor while the optimizer's
        state is created or resumed). A no-op outside the low-memory mode."""
        for name, hook in self._idle_hooks.items():
            if any(hook.model is m for m in modules):
                self._held.add(name)
                hook.model.to(self.device)

    def _offload_after(self, work: Callable[[JobContext], Result]) -> Callable[[JobContext], Result]:
        """`work` that offloads the idle text encoders when it ends (inside the GPU slot)."""
        def wrapped(ctx: JobContext) -> Result:
            try:
                return work(ctx)
            finally:
                self.offload_idle(release_held=True)
        return wrapped

    def set_low_vram(self, on: bool) -> None:
        """Switch the mode of a loaded engine (bench/gpu_check.py measures one engine both ways;
        the app decides once, at start). Off undoes exactly what `_apply_low_vram` did."""
        pipe = self.pipe
        if on == self.low_vram:
            return
        self._derived.clear()  # rebuilt on demand, on the VAE now in use
        if on:
            self.low_vram, self.low_vram_reason, self.low_vram_notes = True, "switched on", []
            self._apply_low_vram(pipe)
            return
        from accelerate.hooks import remove_hook_from_module

        for hook in self._idle_hooks.values():
            remove_hook_from_module(hook.model)
            hook.model.to(self.device)
        self._idle_hooks.clear()
        self._held.clear()
        if self._unet_hook is not None:
            self._unet_hook.remove()
            self._unet_hook = None
        vae = pipe.vae
        vae.disable_tiling()
        vae.disable_slicing()
        vae.__dict__.pop("decode", None)             # the class's own decode again
        vae.__dict__.pop("_fp16_safe_decode", None)
        original = self._before_low_vram.get("vae", vae)
        if original is not vae:
            pipe.register_modules(vae=original)
        original.tile_sample_min_size, original.tile_latent_min_size = self._before_low_vram["tiles"]
        self.low_vram, self.low_vram_reason, self.low_vram_notes = False, "", []

    @property
    def memory_mode(self) -> str:
        """The memory mode in words, for the banner and the start-up line."""
        if not self.low_vram:
            return "standard memory"
        why = f" ({self.low_vram_reason})" if self.low_vram_reason else ""
        return f"low-VRAM mode{why}"


def offload_when_idle(module: torch.nn.Module, device: torch.device):
    """accelerate's offload hook on `module`: on the CPU now, on `device` when called, back on
    the CPU at `hook.offload()`."""
    from accelerate import cpu_offload_with_hook

    return cpu_offload_with_hook(module, device)[1]
