"""Model families and loading: Hub ids, local folders, or the in-process families."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError

log = logging.getLogger(__name__)

HUB_IDS = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}
BUILT_IN = ("tiny", "tiny-sd", "sdxl-arch")
FAMILIES = tuple(HUB_IDS) + BUILT_IN


@dataclass(frozen=True)
class ModelSpec:
    """What `--model NAME` means: a family name, a Hub id or a local folder."""

    name: str          # as given
    source: str        # Hub id, folder, or built-in family name
    built_in: bool
    xl: bool           # SDXL architecture (two text encoders, micro-conditioning)

    @property
    def offline(self) -> bool:
        return self.name in ("tiny", "tiny-sd")

    @property
    def resolution(self) -> int:
        if self.offline:
            return 64
        return 1024 if self.xl else 512


def resolve(name: str) -> ModelSpec:
    """Turn a `--model` value into a spec, without loading anything."""
    if name in BUILT_IN:
        return ModelSpec(name, name, True, xl=name != "tiny-sd")
    if name in HUB_IDS:
        return ModelSpec(name, HUB_IDS[name], False, xl=name == "sdxl")
    path = Path(name).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise UserError(f"{path} is not a diffusers model folder (no model_index.json).")
        xl = "XL" in index.read_text(encoding="utf-8")
        return ModelSpec(name, str(path), False, xl=xl)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelSpec(name, name, False, xl="xl" in name.lower())
    raise UserError(f"Unknown model {name!r}: give one of {', '.join(FAMILIES)}, a Hub id "
                    "(owner/name) or a local diffusers folder.")


def _check_available(spec: ModelSpec) -> None:
    """Fail at once, before diffusers is even imported, when a Hub model can be neither read from
    the local cache nor downloaded (HF_HUB_OFFLINE): the banner says so within seconds."""
    if Path(spec.source).is_dir():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(spec.source, "model_index.json"), str):
        raise _load_error(spec, OSError("it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, "
                                        "so it cannot be downloaded"))


def _load_hub_or_folder(spec: ModelSpec, dtype: torch.dtype):
    _check_available(spec)
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if spec.xl else StableDiffusionPipeline
    kwargs = dict(torch_dtype=dtype, use_safetensors=True)
    if not spec.xl:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if dtype == torch.float16 and not Path(spec.source).is_dir():
        kwargs["variant"] = "fp16"
    try:
        try:
            pipe = cls.from_pretrained(spec.source, **kwargs)
        except (OSError, ValueError) as exc:
            if "variant" not in kwargs or "variant" not in str(exc):
                raise
            kwargs.pop("variant")
            pipe = cls.from_pretrained(spec.source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every loading failure gets the same advice
        raise _load_error(spec, exc) from None
    # DDIM: deterministic, what Style-Aligned's reference set-up and DDIM inversion use.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                               set_alpha_to_one=False)
    return pipe


def _load_error(spec: ModelSpec, exc: Exception) -> UserError:
    return UserError(
        f"Could not load the model {spec.source!r}: {type(exc).__name__}: {exc}\n"
        "To fix it: check the network connection; for a gated or private model run "
        "`hf auth login` (or set HF_TOKEN); or pass a local diffusers folder with "
        "--model /path/to/model; or try the app offline with --model tiny.")


def load_pipeline(spec: ModelSpec, device: torch.device, dtype: torch.dtype,
                  report: Callable[[str], None] = log.info):
    """The base text-to-image pipeline of `spec`, on `device` in `dtype`."""
    report(f"Loading {spec.source} on {device} ({str(dtype).replace('torch.', '')})")
    if spec.name in ("tiny", "tiny-sd", "sdxl-arch"):  # built here, no download
        from . import tiny

        if spec.name == "sdxl-arch":
            pipe = tiny.sdxl_architecture(dtype=dtype, device=device)
        else:
            pipe = tiny.tiny_sdxl() if spec.name == "tiny" else tiny.tiny_sd()
    else:
        pipe = _load_hub_or_folder(spec, dtype)
    if pipe.unet.device != device or pipe.unet.dtype != dtype:
        pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder,
                   getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    report(f"Loaded {spec.source}")
    return pipe


# --------------------------------------------------------------------------- fp16-safe VAE decode
# SDXL's VAE overflows in fp16 (activations past 65504 turn into inf, then NaN: black images).
# Two remedies, used by the low-memory mode (core/engine.py): the fp16-fixed VAE, when it is
# already in the local Hugging Face cache (never downloaded), or a decode that upcasts the VAE to
# fp32 for the call and restores it after.
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"


def needs_upcast(vae) -> bool:
    """True when decoding with `vae` as it is could overflow: fp16 weights and a config that
    does not declare them safe (`force_upcast`; the fp16-fixed VAE sets it to False)."""
    return next(vae.parameters()).dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", True))


def decode_upcast(vae, z: torch.Tensor, decode: Callable | None = None, *args, **kwargs):
    """`vae.decode(z)` computed in fp32 (weights and input) with autocast off; the VAE is put back
    in its own dtype afterwards, even on an error. `decode` is the undecorated decode to call
    (default: `vae.decode`)."""
    decode = decode or vae.decode
    param = next(vae.parameters())
    orig = param.dtype
    with torch.autocast(param.device.type, enabled=False):
        if orig != torch.float32:
            vae.to(torch.float32)
        try:
            return decode(z.to(torch.float32), *args, **kwargs)
        finally:
            if orig != torch.float32:
                vae.to(orig)


def make_decode_fp16_safe(vae) -> None:
    """From now on `vae.decode` upcasts whenever `needs_upcast(vae)` (a no-op in fp32/bf16 and for
    the fp16-fixed VAE). SDXL pipelines already upcast before their own decode; this covers the
    SD 1.5 pipelines and every direct decode. Installed once per VAE."""
    if getattr(vae, "_fp16_safe_decode", False):
        return
    plain = vae.decode

    def decode(z, *args, **kwargs):
        if not needs_upcast(vae):
            return plain(z, *args, **kwargs)
        return decode_upcast(vae, z, plain, *args, **kwargs)
    vae.decode = decode
    vae._fp16_safe_decode = True


def local_fp16_fix_vae() -> str | None:
    """The folder of the fp16-fixed SDXL VAE if the local Hugging Face cache holds it (config and
    weights), else None. Looks only; never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(FP16_FIX_VAE, "config.json")
        weights = try_to_load_from_cache(FP16_FIX_VAE, "diffusion_pytorch_model.safetensors")
    except Exception:  # noqa: BLE001 - no cache, unreadable cache: simply not available
        return None
    if isinstance(config, str) and isinstance(weights, str):
        return str(Path(config).parent)
    return None


def fp16_fix_vae(spec: ModelSpec, dtype: torch.dtype, device: torch.device, folder: str | None = None):
    """The fp16-fixed VAE for an SDXL model in fp16, loaded from `folder` (default: the local
    cache), or None when it does not apply or is not there."""
    if not spec.xl or spec.built_in or dtype != torch.float16:
        return None
    folder = folder or local_fp16_fix_vae()
    if folder is None:
        return None
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken cache entry: keep the upcasting decode
        log.warning("the fp16-fixed VAE could not be loaded (%s); decoding upcasts instead", type(exc).__name__)
        return None
    return vae.to(device).requires_grad_(False).eval()
