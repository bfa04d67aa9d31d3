"""AdaIN: arbitrary style transfer in real time (Huang & Belongie, ICCV 2017).

The paper's pieces, by their names:

- the encoder f: the normalised VGG-19 up to relu4_1 (fixed; the published `vgg_normalised.pth`
  loads into it key by key, the extra layers past relu4_1 in that file are ignored);
- AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y), per channel over space;
- the decoder g: the encoder's mirror, nearest-neighbour upsampling instead of pooling,
  reflection padding, no normalisation layers (the published `decoder.pth` loads by key);
- T(c, s, alpha) = g((1 - alpha) f(c) + alpha AdaIN(f(c), f(s)));
- style interpolation: t = sum_k w_k AdaIN(f(c), f(s_k)), weights normalised to sum to 1;
- colour preservation: the style image's colours are first matched to the content's
  (mean and covariance of the RGB values), then the colour-aligned style is transferred;
- spatial control: each style is applied to its own region of the content features, with
  the content statistics of that region only;
- training the decoder: L = L_c + lambda L_s, L_c = ||f(g(t)) - t||, L_s = sum over
  relu1_1..relu4_1 of ||mu(phi_i(g(t))) - mu(phi_i(s))|| + ||sigma(...) - sigma(...)||,
  lambda = 10, Adam lr 1e-4 decayed as lr / (1 + 5e-5 * iteration), batch 8, random 256
  crops of images whose shorter side was resized to 512.

Weights: a local folder or file pair, or a Hugging Face Hub repo id. `.pth` files are read with
`torch.load(weights_only=True)` (plain tensors only) and can be converted once to safetensors.
Offline and in tests `tiny_model()` gives random weights of the same architecture at 1/8
width (same layers, same state-dict keys, channels 8/16/32/64 instead of 64/128/256/512).

Command line:  python -m core.adain train --content DIR --style DIR [--out DIR ...]
               python -m core.adain convert FILE.pth [FILE.safetensors]
               python -m core.adain transfer CONTENT STYLE [STYLE ...] --out FILE
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import re
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import UserError
from .events import Progress, Result
from .images import ImageLike, load_image

# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------

EPS = 1e-5
FULL_CHANNELS = (64, 128, 256, 512)
TINY_WIDTH = 1 / 8
# Encoder: the normalised VGG-19 (blocks of 3x3 convs) up to relu4_1, as (channels, convs).
VGG_BLOCKS = ((0, 2), (1, 2), (2, 4), (3, 1))  # (channel index, number of 3x3 convs)
# Decoder: the mirror of the encoder: (in index, out index) per conv, "up" for upsampling.
DECODER_PLAN = ((3, 2), "up", (2, 2), (2, 2), (2, 2), (2, 1), "up", (1, 1), (1, 0), "up",
                (0, 0), (0, None))
# The encoder's four slices end at relu1_1, relu2_1, relu3_1, relu4_1 (Sequential indices).
SLICE_ENDS = (4, 11, 18, 31)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
WEIGHT_FILES = ("vgg_normalised", "decoder")
WEIGHT_EXTS = (".safetensors", ".pth", ".pt")
# No Hugging Face Hub repository is known to host the published pair under these names, so
# the default is the project's own mirror; another one: the app's --adain-weights DIR|REPO,
# `python -m core.adain`'s --weights, or $STUDIO_ADAIN_WEIGHTS for both.
DEFAULT_HUB_REPO = "style-studio/adain-vgg19"
# Weights spec for the full-width network with random weights (offline speed benchmarks).
RANDOM_WEIGHTS = "random"
WEIGHTS_ENV = "STUDIO_ADAIN_WEIGHTS"
WEIGHTS_HINT = (f"the app's --adain-weights, the --weights of `python -m core.adain`, or ${WEIGHTS_ENV} "
                "for either")
MAX_SIDE = 2048          # the largest output side we ever produce
MAX_SIDE_CPU = 1024      # on CPU a larger image takes tens of seconds
MIN_SIDE = 32


def channels_for(width: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(c * width))) for c in FULL_CHANNELS)


def build_encoder(width: float = 1.0) -> nn.Sequential:
    """The normalised VGG-19 up to relu4_1: a 1x1 colour conv, then reflection-padded 3x3
    convs and ReLUs, max-pooling between blocks (ceil mode, as in the Torch original)."""
    ch = channels_for(width)
    layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    c_in = 3
    for b, (ci, n) in enumerate(VGG_BLOCKS):
        if b > 0:
            layers.append(nn.MaxPool2d(2, 2, 0, ceil_mode=True))
        for _ in range(n):
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(c_in, ch[ci], 3), nn.ReLU()]
            c_in = ch[ci]
    assert len(layers) == SLICE_ENDS[-1]
    return nn.Sequential(*layers)


def build_decoder(width: float = 1.0) -> nn.Sequential:
    """The encoder's mirror: nearest-neighbour upsampling, reflection padding, no norms."""
    ch = channels_for(width)
    layers: list[nn.Module] = []
    for step in DECODER_PLAN:
        if step == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            continue
        ci, co = step
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(ch[ci], 3 if co is None else ch[co], 3)]
        if co is not None:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def calc_mean_std(feat: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and standard deviation over space, shape (N, C, 1, 1).
    Computed in fp32 whatever the input dtype; sigma = sqrt(var + eps), var over H*W."""
    n, c = feat.shape[:2]
    x = feat.reshape(n, c, -1).float()
    var = x.var(dim=2, unbiased=False) + eps
    return x.mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def adain(content_feat: torch.Tensor, style_feat: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """AdaIN(x, y) = sigma(y) (x - mu(x)) / sigma(x) + mu(y), per channel over space."""
    c_mean, c_std = calc_mean_std(content_feat, eps)
    s_mean, s_std = calc_mean_std(style_feat, eps)
    out = (content_feat.float() - c_mean) / c_std * s_std + s_mean
    return out.to(content_feat.dtype)


def masked_mean_std(feat: torch.Tensor, mask: torch.Tensor, eps: float = EPS):
    """Mean and std per channel over the positions where `mask` (N,1,H,W, 0/1) is set."""
    x = feat.float()
    m = mask.float()
    count = m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=(2, 3), keepdim=True) / count
    var = (((x - mean) ** 2) * m).sum(dim=(2, 3), keepdim=True) / count
    return mean, (var + eps).sqrt()


class AdaINNet(nn.Module):
    """Encoder f (fixed) + decoder g. `width` 1.0 is the paper's network."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = float(width)
        self.encoder = build_encoder(width)
        self.decoder = build_decoder(width)
        self.encoder.requires_grad_(False)

    # f(x) at relu1_1..relu4_1
    def encode_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, start = [], 0
        for end in SLICE_ENDS:
            for layer in self.encoder[start:end]:
                x = layer(x)
            feats.append(x)
            start = end
        return feats

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, t: torch.Tensor) -> torch.Tensor:
        return self.decoder(t)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def _init_random(model: AdaINNet, seed: int) -> AdaINNet:
    """Deterministic He-normal weights, small positive biases (keeps ReLUs alive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=gen) * 0.1)
    return model


def tiny_model(seed: int = 0, width: float = TINY_WIDTH) -> AdaINNet:
    """Random weights of the paper's architecture at reduced width, the same for every call
    with the same seed; nothing is downloaded."""
    return _init_random(AdaINNet(width), seed).eval()


# --------------------------------------------------------------------------------------------
# Weights: safe loading, local paths, the Hub, conversion, torchvision init
# --------------------------------------------------------------------------------------------

def _expected(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def read_state_dict(path: str | os.PathLike, *, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A dict of tensors from `.safetensors` or `.pth`/`.pt`; never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The {what} {path} does not exist. Expected a .safetensors or .pth file "
                        "holding a plain state dict of tensors.")
    if path.stat().st_size == 0:
        raise UserError(f"The {what} {path} is empty (0 bytes).")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"The {what} {path} is not a valid safetensors file: {exc}") from None
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "allowed global" not in str(exc) and "Unsupported global" not in str(exc):
                raise UserError(f"The {what} {path} could not be read as a plain state dict of "
                                "tensors (not a PyTorch weights file, or one that holds Python "
                                "objects).") from None
            raise UserError(
                f"Refusing to load {path}: it holds pickled Python objects, not plain tensors "
                f"(only a state dict of tensors is accepted; loading it would run code). "
                f"Detail: {str(exc).splitlines()[0][:200]}") from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
            raise UserError(f"The {what} {path} could not be read as a PyTorch state dict "
                            f"(truncated, or not a .pth file): {str(exc)[:200]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in sd.items()):
        raise UserError(f"The {what} {path} does not hold a plain dict of named tensors.")
    return sd


def _match(module: nn.Module, sd: dict[str, torch.Tensor], *, what: str, path, allow_extra: bool):
    """Load `sd` into `module` after checking every expected key and shape is present."""
    expected = _expected(module)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    missing = [k for k in expected if k not in sd]
    wrong = [f"{k}: expected {expected[k]}, found {tuple(sd[k].shape)}"
             for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    extra = [k for k in sd if k not in expected]
    if missing or wrong or (extra and not allow_extra):
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:4]}")
        if extra and not allow_extra:
            parts.append(f"unexpected keys {extra[:6]}")
        raise UserError(
            f"{path} is not an AdaIN {what}: {'; '.join(parts)}. Expected the {what} of the "
            f"paper's network ({len(expected)} tensors, e.g. '{next(iter(expected))}' of shape "
            f"{expected[next(iter(expected))]}).")
    module.load_state_dict({k: sd[k].float() for k in expected})


def _stems(stem: str) -> tuple[str, ...]:
    # the PyTorch port's release spells the encoder file "vgg_normalized"; accept both
    return (stem, "vgg_normalized") if stem == WEIGHT_FILES[0] else (stem,)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in _stems(stem):
        for ext in WEIGHT_EXTS:
            p = folder / f"{name}{ext}"
            if p.is_file():
                return p
    return None


_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_weights(spec: str | os.PathLike | None = None, *, decoder: str | os.PathLike | None = None,
                    revision: str | None = None) -> tuple[Path, Path]:
    """(encoder file, decoder file) for `spec`: a folder holding vgg_normalised.* and decoder.*,
    a single encoder file (with `decoder`), or a Hub repo id (downloaded with hf_hub_download).
    `decoder`, when given, overrides the decoder file (e.g. a decoder you trained)."""
    spec = DEFAULT_HUB_REPO if spec in (None, "") else spec
    p = Path(spec).expanduser()
    if p.is_dir():
        enc = _find_file(p, WEIGHT_FILES[0])
        dec = Path(decoder) if decoder else _find_file(p, WEIGHT_FILES[1])
        if enc is None or dec is None:
            raise UserError(
                f"The AdaIN weights folder {p} must hold vgg_normalised.pth (or .safetensors) and "
                f"decoder.pth (or .safetensors); found {sorted(x.name for x in p.iterdir())[:10]}.")
        return enc, dec
    if p.is_file():
        if decoder is None:
            dec = _find_file(p.parent, WEIGHT_FILES[1])
            if dec is None:
                raise UserError(f"No decoder file next to {p}: put decoder.pth beside it.")
            return p, dec
        return p, Path(decoder)
    if isinstance(spec, str) and _REPO_RE.match(spec) and not spec.startswith((".", "/")):
        enc = _hub_file(spec, WEIGHT_FILES[0], revision)
        dec = Path(decoder) if decoder else _hub_file(spec, WEIGHT_FILES[1], revision)
        return enc, dec
    raise UserError(f"AdaIN weights {spec!r} not found: give a folder with vgg_normalised.pth "
                    "and decoder.pth, or a Hugging Face Hub repo id such as owner/name.")


def _hub_file(repo_id: str, stem: str, revision: str | None) -> Path:
    """Download `stem`.safetensors (preferred) or `stem`.pth / .pt from the Hub repo."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    last: Exception | None = None
    for name in _stems(stem):
        for ext in WEIGHT_EXTS:
            try:
                return Path(hf_hub_download(repo_id=repo_id, filename=f"{name}{ext}",
                                            revision=revision))
            except LocalEntryNotFoundError as exc:  # offline, and not in the cache
                raise UserError(
                    f"Could not download the AdaIN {stem} weights from {repo_id}: offline and "
                    "not in the cache. Give a local folder with vgg_normalised.pth and "
                    f"decoder.pth: {WEIGHTS_HINT}.") from exc
            except EntryNotFoundError as exc:  # the repo exists but lacks this file name
                last = exc
            except Exception as exc:  # no repo, gated, network down ...
                raise UserError(f"Could not download AdaIN weights from the Hub repo {repo_id}: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    raise UserError(f"The Hub repo {repo_id} has no {stem}.safetensors or {stem}.pth "
                    f"(needed for AdaIN).") from last


def load_model(spec: str | os.PathLike | None = None, *, decoder: str | os.PathLike | None = None,
               encoder_init: str | None = None, revision: str | None = None) -> AdaINNet:
    """The paper's network with published (or your own) weights, on CPU in fp32, eval mode.
    `encoder_init="torchvision"` takes the encoder from torchvision's ImageNet VGG-19 instead of
    `vgg_normalised` (then `decoder` must be given, or come from `spec`)."""
    model = AdaINNet(1.0)
    if encoder_init == "torchvision":
        if decoder is None:
            decoder = _decoder_only(spec, revision)
        init_encoder_from_torchvision(model)
        _match(model.decoder, read_state_dict(decoder, what="decoder"), what="decoder",
               path=decoder, allow_extra=False)
        return model.eval()
    enc, dec = resolve_weights(spec, decoder=decoder, revision=revision)
    _load_encoder_file(model, enc)
    _match(model.decoder, read_state_dict(dec, what="decoder weights"), what="decoder",
           path=dec, allow_extra=False)
    return model.eval()


def _decoder_only(spec, revision: str | None = None) -> Path:
    """The decoder file named by `spec`: the file itself, decoder.* in a folder, or a Hub repo's."""
    p = Path(spec).expanduser() if spec else None
    if p is not None and p.is_file():
        return p
    if p is not None and p.is_dir():
        found = _find_file(p, WEIGHT_FILES[1])
        if found is None:
            raise UserError(f"The folder {p} holds no decoder.pth or decoder.safetensors.")
        return found
    repo = str(spec) if spec else DEFAULT_HUB_REPO
    if not _REPO_RE.match(repo):
        raise UserError(f"Decoder weights {spec!r} not found (a file, folder or Hub repo id).")
    return _hub_file(repo, WEIGHT_FILES[1], revision)


def _load_encoder_file(model: AdaINNet, enc: Path) -> None:
    sd = read_state_dict(enc, what="encoder weights")
    # vgg_normalised.pth holds the whole VGG-19 (to relu5_4); keep the layers up to relu4_1.
    sd = {k: v for k, v in sd.items()
          if not re.match(r"^\d+\.", k) or int(k.split(".")[0]) < SLICE_ENDS[-1]}
    _match(model.encoder, sd, what="encoder (vgg_normalised)", path=enc, allow_extra=True)


def load_encoder_weights(model: AdaINNet, spec: str | os.PathLike | None = None,
                         revision: str | None = None) -> AdaINNet:
    """Only the encoder (vgg_normalised) from a folder, a file or a Hub repo (for training)."""
    p = Path(spec).expanduser() if spec else None
    if p is not None and p.is_file():
        enc = p
    elif p is not None and p.is_dir():
        enc = _find_file(p, WEIGHT_FILES[0])
        if enc is None:
            raise UserError(f"The folder {p} holds no vgg_normalised.pth or .safetensors.")
    else:
        repo = str(spec) if spec else DEFAULT_HUB_REPO
        if not _REPO_RE.match(repo):
            raise UserError(f"Encoder weights {spec!r} not found (a file, folder or Hub repo id).")
        enc = _hub_file(repo, WEIGHT_FILES[0], revision)
    _load_encoder_file(model, enc)
    return model


def load_decoder(model: AdaINNet, path: str | os.PathLike) -> AdaINNet:
    """Put a decoder (a trained checkpoint or decoder.pth) into `model`, in place."""
    sd = read_state_dict(path, what="decoder weights")
    if any(k.startswith("decoder.") for k in sd):
        sd = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    dev, dt = model.device, model.dtype
    _match(model.decoder, sd, what="decoder", path=path, allow_extra=False)
    model.decoder.to(dev, dt)
    return model


def init_encoder_from_torchvision(model: AdaINNet, weights: str = "IMAGENET1K_V1",
                                  features: nn.Module | None = None) -> AdaINNet:
    """Copy torchvision's VGG-19 convs (up to relu4_1) into the encoder. torchvision's VGG
    takes ImageNet-normalised RGB; the 1x1 colour conv absorbs that normalisation, so the
    encoder still takes RGB in [0, 1]. (torchvision pads with zeros, we reflect: the features
    differ a little at the borders.) `features` lets a caller pass the module directly."""
    if features is None:
        from torchvision.models import VGG19_Weights, vgg19
        features = vgg19(weights=VGG19_Weights[weights]).features
    if model.width != 1.0:
        raise UserError("torchvision's VGG-19 only fits the full-width network.")
    tv_convs = [m for m in features if isinstance(m, nn.Conv2d)]
    ours = [m for m in model.encoder if isinstance(m, nn.Conv2d)][1:]
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        first = model.encoder[0]
        first.weight.copy_(torch.diag(1.0 / std).view(3, 3, 1, 1))
        first.bias.copy_(-mean / std)
        for dst, src in zip(ours, tv_convs):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return model


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None):
    """Write safetensors to a temp file in the same folder, then rename over `path`."""
    from safetensors.torch import save_file

    from .files import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Convert a `.pth` state dict once to `.safetensors` (next to it unless `dst` is given)."""
    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    _atomic_save(read_state_dict(src), dst, metadata={"source": src.name})
    return dst


# --------------------------------------------------------------------------------------------
# Transfer
# --------------------------------------------------------------------------------------------

def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) tensor in [0, 1] -> RGB PIL image."""
    if t.dim() == 4:
        t = t[0]
    arr = (t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def fit_size(w: int, h: int, size: int | None, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) with the longer side = `size` (or the image's own, capped at
    `max_side`), aspect ratio kept, both multiples of 8 (the encoder downsamples by 8)."""
    if size is not None:
        if size < MIN_SIDE:
            raise UserError(f"The output size must be at least {MIN_SIDE} px (got {size}).")
        if size > max_side:
            raise UserError(f"The output size {size} px is above the safe maximum of {max_side} px "
                            "here; choose a smaller size.")
    target = size or min(max(w, h), max_side)
    scale = target / max(w, h)
    # at least 16 px: relu4_1 is 1/8 of the input and reflection padding needs 2 px there
    return (max(16, int(round(w * scale / 8)) * 8), max(16, int(round(h * scale / 8)) * 8))


def prepare(img: ImageLike, size: int | None, *, what: str, max_side: int = MAX_SIDE) -> Image.Image:
    """Load (clear errors for bad files) and resize to the working size."""
    im = load_image(img, what=what)
    w, h = fit_size(im.width, im.height, size, max_side)
    return im if (w, h) == im.size else im.resize((w, h), Image.Resampling.BICUBIC)


def coral(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Colour transfer: `source` (3,H,W) re-coloured so its RGB mean and covariance equal
    `target`'s (3,H',W'): x -> C_t^{1/2} C_s^{-1/2} (x - mu_s) + mu_t. This is how the paper
    preserves colour: the style image's colours are matched to the content's first."""
    def stats(x):
        flat = x.reshape(3, -1).double()
        mu = flat.mean(dim=1, keepdim=True)
        cov = (flat - mu) @ (flat - mu).T / flat.shape[1]
        return flat, mu, cov

    def msqrt(m, inv=False):
        vals, vecs = torch.linalg.eigh(m)
        vals = vals.clamp_min(eps)  # a flat (single-colour) style has no spread to invert
        p = -0.5 if inv else 0.5
        return vecs @ torch.diag(vals ** p) @ vecs.T

    s_flat, s_mu, s_cov = stats(source)
    _, t_mu, t_cov = stats(target)
    out = msqrt(t_cov) @ msqrt(s_cov, inv=True) @ (s_flat - s_mu) + t_mu
    return out.reshape(source.shape).to(source.dtype)


def _normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise UserError(f"Give one weight per style: {n} styles but {len(w)} weights.")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise UserError("Style weights must be non-negative numbers with a positive sum.")
    s = sum(w)
    return [x / s for x in w]


def _resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    m = mask.float()
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return (F.interpolate(m, size=hw, mode="nearest") > 0.5).float()


def transfer_features(content_feat: torch.Tensor, style_feats: Sequence[torch.Tensor],
                      weights: Sequence[float] | None = None, alpha: float = 1.0,
                      masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The target t fed to the decoder.

    - one style: t = AdaIN(f(c), f(s));
    - several styles without masks: t = sum_k w_k AdaIN(f(c), f(s_k)) (weights normalised);
    - with masks (one per style, any resolution, 1 = the style's region): each region is
      AdaIN-ed with the content statistics of that region only and its own style; positions
      that no mask covers keep the content features;
    - finally t = alpha t + (1 - alpha) f(c).
    """
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be between 0 and 1 (got {alpha}).")
    if not style_feats:
        raise UserError("Give at least one style image.")
    n = len(style_feats)
    if masks is not None:
        if len(masks) != n:
            raise UserError(f"Give one mask per style: {n} styles but {len(masks)} masks.")
        hw = content_feat.shape[-2:]
        ms = [_resize_mask(m, hw).to(content_feat.device) for m in masks]
        cover = torch.stack(ms).sum(0)
        t = content_feat.float() * (cover == 0).float()
        for m, sf in zip(ms, style_feats):
            if m.sum() == 0:
                continue
            c_mean, c_std = masked_mean_std(content_feat, m)
            s_mean, s_std = calc_mean_std(sf)
            region = (content_feat.float() - c_mean) / c_std * s_std + s_mean
            t = t + region * m / cover.clamp_min(1.0)
    else:
        w = _normalise_weights(weights, n)
        t = sum(wk * adain(content_feat, sf).float() for wk, sf in zip(w, style_feats))
    t = alpha * t + (1.0 - alpha) * content_feat.float()
    return t.to(content_feat.dtype)


def _like_model(model: AdaINNet, x: torch.Tensor) -> torch.Tensor:
    """`x` on the model's device and dtype, in its memory format."""
    x = x.to(model.device, model.dtype)
    if model.encoder[2].weight.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.inference_mode()
def stylize_tensor(model: AdaINNet, content: torch.Tensor, styles: Sequence[torch.Tensor],
                   weights: Sequence[float] | None = None, alpha: float = 1.0,
                   masks: Sequence[torch.Tensor] | None = None,
                   preserve_color: bool = False) -> torch.Tensor:
    """T(c, s) = g(t) for a batch of contents (N,3,H,W) in [0,1] and styles (1,3,h,w) each;
    returns (N,3,H,W) clamped to [0,1]."""
    content = _like_model(model, content)
    out = []
    for i in range(content.shape[0]):
        c = content[i:i + 1]
        # colour matching in float64 on the CPU (3x3 matrices; MPS has no float64)
        sty = [coral(s[0].cpu().float(), c[0].cpu().float()).unsqueeze(0).clamp(0, 1)
               if preserve_color else s for s in styles]
        style_feats = [model.encode(_like_model(model, s)) for s in sty]
        t = transfer_features(model.encode(c), style_feats, weights, alpha, masks)
        out.append(model.decode(t))
    return torch.cat(out).float().clamp(0, 1)


@torch.inference_mode()
def encode_styles(model: AdaINNet, styles: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """f(s) for each style; reuse these for many frames (webcam mode)."""
    return [model.encode(_like_model(model, s)) for s in styles]


@torch.inference_mode()
def stylize_frame(model: AdaINNet, frame: torch.Tensor, style_feats: Sequence[torch.Tensor],
                  weights: Sequence[float] | None = None, alpha: float = 1.0) -> torch.Tensor:
    """One frame with precomputed style features: encoder + AdaIN + decoder only."""
    x = _like_model(model, frame)
    t = transfer_features(model.encode(x), style_feats, weights, alpha)
    return model.decode(t).float().clamp(0, 1)


@dataclass
class TransferRequest:
    contents: list            # images (paths, PIL, arrays)
    styles: list
    weights: list[float] | None = None
    alpha: float = 1.0
    preserve_color: bool = False
    masks: list | None = None  # one HxW array per style (any size; resized to the content)
    size: int | None = 512
    max_side: int = MAX_SIDE


def _mask_tensor(mask, what: str) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        m = mask.float()
    else:
        if isinstance(mask, Image.Image):
            mask = np.asarray(mask.convert("L"))
        arr = np.asarray(mask)
        if arr.ndim == 3:
            arr = arr[..., -1] if arr.shape[-1] == 4 else arr.mean(-1)
        if arr.ndim != 2 or arr.size == 0:
            raise UserError(f"The {what} must be a 2-D image (got shape {arr.shape}).")
        m = torch.from_numpy(arr.astype(np.float32))
        if arr.dtype == np.uint8 or m.max() > 1:
            m = m / 255.0
    return (m > 0.5).float()


def run_transfer(model: AdaINNet, req: TransferRequest) -> Iterator[Progress | Result]:
    """Style every content image; yields a Progress per image, then the Result."""
    if not req.contents:
        raise UserError("Upload at least one content image.")
    if not req.styles:
        raise UserError("Upload at least one style image.")
    if req.masks is not None and len(req.masks) != len(req.styles):
        raise UserError(f"Give one mask per style: {len(req.styles)} styles, {len(req.masks)} masks.")
    weights = _normalise_weights(req.weights, len(req.styles)) if req.weights is not None else None
    contents = [prepare(c, req.size, what=f"content image {i + 1}", max_side=req.max_side)
                for i, c in enumerate(req.contents)]
    style_size = req.size or max(max(c.size) for c in contents)
    styles = [to_tensor(prepare(s, min(style_size, req.max_side), what=f"style image {i + 1}",
                                max_side=req.max_side))
              for i, s in enumerate(req.styles)]
    masks = None
    if req.masks is not None:
        masks = [_mask_tensor(m, f"mask {i + 1}") for i, m in enumerate(req.masks)]
    images, t0 = [], time.perf_counter()
    for i, c in enumerate(contents):
        out = stylize_tensor(model, to_tensor(c), styles, weights, req.alpha, masks,
                             req.preserve_color)
        images.append(to_image(out))
        yield Progress(i + 1, len(contents), f"styled {i + 1}/{len(contents)}", preview=[images[-1]])
    dt = time.perf_counter() - t0
    yield Result(images=images, info={"seconds": dt, "size": [list(im.size) for im in images],
                                      "weights": weights, "alpha": req.alpha,
                                      "preserve_color": req.preserve_color})


_MODELS: dict[tuple, AdaINNet] = {}
_MODELS_LOCK = threading.Lock()
MAX_RESIDENT = 4


def get_model(spec: str | None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, *, tiny: bool = False,
              decoder: str | os.PathLike | None = None) -> AdaINNet:
    """A resident model per (weights, decoder, device, dtype): loaded once, then reused.
    `tiny` gives the tiny random network; `spec="random"` the full-width one, random."""
    device = torch.device(device)
    if device.type == "cpu":
        dtype = torch.float32  # half precision convs are slow or missing on CPU
    stamp = None
    if decoder and Path(decoder).is_file():
        st = Path(decoder).stat()
        stamp = (str(decoder), st.st_mtime_ns, st.st_size)  # a retrained decoder reloads
    key = ("tiny" if tiny else str(spec), stamp, str(device), dtype)
    with _MODELS_LOCK:
        if key not in _MODELS:
            if tiny:
                model = tiny_model()
            elif spec == RANDOM_WEIGHTS:
                model = tiny_model(seed=0, width=1.0)  # the paper's network, random weights
            else:
                model = load_model(spec)
            if decoder:
                load_decoder(model, decoder)
            # channels_last: faster convolutions on CUDA and on CPU (oneDNN), ~20% at 256 px
            model = model.to(device, dtype).to(memory_format=torch.channels_last).eval()
            while len(_MODELS) >= MAX_RESIDENT:  # e.g. many versions of a retrained decoder
                _MODELS.pop(next(iter(_MODELS)))
            _MODELS[key] = model
        return _MODELS[key]


# --------------------------------------------------------------------------------------------
# Training the decoder
# --------------------------------------------------------------------------------------------

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def list_images(folder: str | os.PathLike, *, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"The {what} folder {folder} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise UserError(f"The {what} folder {folder} holds no images "
                        f"({', '.join(sorted(IMAGE_EXTS))}).")
    return files


class CropSampler:
    """Random `crop` x `crop` crops of images whose shorter side is resized to `resize`.
    Decoded images are cached (up to `cache` of them); unreadable files are skipped."""

    def __init__(self, files: Sequence[Path], resize: int, crop: int, rng: random.Random,
                 cache: int = 256, what: str = "image"):
        self.files, self.resize, self.crop, self.rng = list(files), resize, crop, rng
        self.cache_size, self.what = cache, what
        self._cache: dict[Path, torch.Tensor] = {}
        self._bad: set[Path] = set()

    def _load(self, path: Path) -> torch.Tensor | None:
        if path in self._cache:
            return self._cache[path]
        try:
            im = load_image(path, what=self.what)
        except UserError:
            self._bad.add(path)
            return None
        scale = self.resize / min(im.size)
        w, h = max(self.crop, round(im.width * scale)), max(self.crop, round(im.height * scale))
        t = to_tensor(im.resize((w, h), Image.Resampling.BICUBIC))[0]
        if len(self._cache) < self.cache_size:
            self._cache[path] = t
        return t

    def batch(self, n: int) -> torch.Tensor:
        out = []
        tries = 0
        while len(out) < n:
            tries += 1
            if len(self._bad) == len(self.files) or tries > 50 * n:
                raise UserError(f"None of the {self.what} files could be read as images.")
            path = self.rng.choice(self.files)
            if path in self._bad:
                continue
            t = self._load(path)
            if t is None:
                continue
            _, h, w = t.shape
            y, x = self.rng.randint(0, h - self.crop), self.rng.randint(0, w - self.crop)
            out.append(t[:, y:y + self.crop, x:x + self.crop])
        return torch.stack(out)


@dataclass
class DecoderTrainConfig:
    content_dir: str
    style_dir: str
    out_dir: str = "data/adain/decoder"
    steps: int = 160_000
    batch_size: int = 8
    lr: float = 1e-4
    lr_decay: float = 5e-5
    style_weight: float = 10.0
    content_weight: float = 1.0
    resize: int = 512
    crop: int = 256
    save_every: int = 1000
    sample_every: int = 500
    log_every: int = 10
    seed: int = 0
    resume: bool = True
    weights: str | None = None          # encoder source: folder / repo (vgg_normalised)
    encoder_init: str | None = None     # "torchvision" to start from ImageNet VGG-19
    tiny: bool = False                  # tiny random network (tests, offline demos)
    device: str = "cpu"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def learning_rate(cfg: DecoderTrainConfig, iteration: int) -> float:
    """The paper's decay: lr / (1 + 5e-5 * iteration)."""
    return cfg.lr / (1.0 + cfg.lr_decay * iteration)


def decoder_loss(model: AdaINNet, content: torch.Tensor, style: torch.Tensor,
                 style_weight: float = 10.0, content_weight: float = 1.0):
    """(total, content loss, style loss, g(t)) for one batch, as in the paper."""
    with torch.no_grad():
        style_feats = model.encode_all(style)
        t = adain(model.encode(content), style_feats[-1])
    g_t = model.decode(t)
    g_feats = model.encode_all(g_t)
    loss_c = F.mse_loss(g_feats[-1], t)
    loss_s = g_t.new_zeros(())
    for gf, sf in zip(g_feats, style_feats):
        gm, gs = calc_mean_std(gf)
        sm, ss = calc_mean_std(sf)
        loss_s = loss_s + F.mse_loss(gm, sm) + F.mse_loss(gs, ss)
    return content_weight * loss_c + style_weight * loss_s, loss_c, loss_s, g_t


CKPT_NAME = "checkpoint.safetensors"
DECODER_NAME = "decoder.safetensors"


def save_checkpoint(out_dir: Path, model: AdaINNet, opt: torch.optim.Adam, step: int,
                    cfg: DecoderTrainConfig, history: list[dict]) -> Path:
    """checkpoint.safetensors (decoder + Adam state + step, for resume) and
    decoder.safetensors (the decoder alone, for transfer); both written atomically."""
    tensors = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    names = {p: n for n, p in model.decoder.named_parameters()}
    for p, st in opt.state.items():
        n = names[p]
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"adam.{n}.{key}"] = st[key]
        tensors[f"adam.{n}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    meta = {"step": str(step), "config": cfg.to_json(), "width": str(model.width),
            "history": json.dumps(history[-2000:])}
    _atomic_save(tensors, out_dir / CKPT_NAME, meta)
    _atomic_save(model.decoder.state_dict(), out_dir / DECODER_NAME,
                 {"step": str(step), "width": str(model.width)})
    return out_dir / CKPT_NAME


def load_checkpoint(out_dir: Path, model: AdaINNet, opt: torch.optim.Adam) -> tuple[int, list[dict]]:
    """Restore decoder and Adam state; returns (step, loss history)."""
    from safetensors import safe_open
    path = out_dir / CKPT_NAME
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise UserError(f"The checkpoint {path} could not be read: {exc}") from None
    if float(meta.get("width", model.width)) != model.width:
        raise UserError(f"The checkpoint {path} is for a network of width {meta.get('width')}, "
                        f"not {model.width}; use another output folder or start afresh.")
    _match(model.decoder, {k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")},
           what="decoder", path=path, allow_extra=False)
    for n, p in model.decoder.named_parameters():
        if f"adam.{n}.exp_avg" in tensors:
            opt.state[p] = {"step": tensors[f"adam.{n}.step"].reshape(()).clone(),
                            "exp_avg": tensors[f"adam.{n}.exp_avg"].to(p.device, p.dtype),
                            "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].to(p.device, p.dtype)}
    return int(meta.get("step", 0)), json.loads(meta.get("history", "[]"))


def _model_to_train(cfg: DecoderTrainConfig, model: AdaINNet | None, device: torch.device) -> AdaINNet:
    """`model`, else the network `cfg` asks for, on `device` in fp32: the encoder fixed, the
    decoder in training mode."""
    if model is None:
        if cfg.tiny:
            model = tiny_model(cfg.seed)
        else:
            model = AdaINNet(1.0)
            if cfg.encoder_init == "torchvision":
                init_encoder_from_torchvision(model)
            else:
                load_encoder_weights(model, cfg.weights)
    model = model.to(device).float()
    model.encoder.eval().requires_grad_(False)
    model.decoder.train()
    return model


def train_decoder(cfg: DecoderTrainConfig, *, model: AdaINNet | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  sample_pair: tuple[Image.Image, Image.Image] | None = None,
                  keep_unsaved: Callable[[], bool] | None = None,
                  ) -> Iterator[Progress | Result]:
    """Train g with the encoder fixed. Yields Progress every `log_every` steps (metrics: loss,
    loss_c, loss_s, lr; `preview` holds sample transfers every `sample_every` steps), writes a
    checkpoint every `save_every` steps, and ends with a Result. When `should_stop()` turns
    true, the current state is checkpointed and the Result says cancelled; a stop before the
    run's first checkpoint (none written yet, none resumed from) checkpoints only if
    `keep_unsaved()` says so (when given). A generator closed from outside (GeneratorExit)
    writes nothing, leaving the last checkpoint as it was. The Result's info: step, cancelled,
    history, decoder (its file) and saved_step (the step of the checkpoint on disk, 0: none)."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = torch.device(cfg.device)
    if cfg.batch_size < 1 or cfg.steps < 1:
        raise UserError("steps and batch size must be at least 1.")
    if cfg.crop > cfg.resize:
        raise UserError(f"The crop size ({cfg.crop}) cannot exceed the resize size ({cfg.resize}).")
    contents = CropSampler(list_images(cfg.content_dir, what="content"), cfg.resize, cfg.crop, rng,
                           what="content image")
    styles = CropSampler(list_images(cfg.style_dir, what="style"), cfg.resize, cfg.crop, rng,
                         what="style image")
    model = _model_to_train(cfg, model, device)
    opt = torch.optim.Adam(model.decoder.parameters(), lr=cfg.lr)
    out_dir = Path(cfg.out_dir)
    start, history = 0, []
    if cfg.resume and (out_dir / CKPT_NAME).is_file():
        start, history = load_checkpoint(out_dir, model, opt)
    if sample_pair is None:
        sample_pair = (to_image(contents.batch(1)[0]), to_image(styles.batch(1)[0]))
    sample_c, sample_s = (to_tensor(im) for im in sample_pair)

    def samples() -> list[Image.Image]:
        model.decoder.eval()
        out = stylize_tensor(model, sample_c, [sample_s])
        model.decoder.train()
        return [sample_pair[0], sample_pair[1], to_image(out)]

    step, saved = start, start
    t0 = time.perf_counter()
    yield Progress(step, cfg.steps, f"resumed at step {start}" if start else "starting",
                   preview=samples(), metrics={})
    cancelled = False
    while step < cfg.steps:
        if should_stop is not None and should_stop():
            cancelled = True
            break
        lr = learning_rate(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        c = contents.batch(cfg.batch_size).to(device)
        s = styles.batch(cfg.batch_size).to(device)
        loss, loss_c, loss_s, _ = decoder_loss(model, c, s, cfg.style_weight, cfg.content_weight)
        if not torch.isfinite(loss):
            raise UserError(f"The loss became {loss.item()} at step {step}; lower the learning rate.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        rec = {"step": step, "loss": loss.item(), "loss_c": loss_c.item(), "loss_s": loss_s.item(),
               "lr": lr}
        history.append(rec)
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(out_dir, model, opt, step, cfg, history)
            saved = step
        if step % cfg.log_every == 0 or step == cfg.steps:
            preview = samples() if (step % cfg.sample_every == 0 or step == cfg.steps) else None
            rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
            yield Progress(step, cfg.steps, f"step {step}/{cfg.steps} loss {rec['loss']:.4f} "
                           f"({rate:.2f} it/s)", preview=preview,
                           metrics={k: v for k, v in rec.items() if k != "step"})
    if cancelled and step > saved and (saved > 0 or keep_unsaved is None or keep_unsaved()):
        save_checkpoint(out_dir, model, opt, step, cfg, history)
        saved = step
    model.decoder.eval()
    yield Result(images=samples(), files=[str(out_dir / DECODER_NAME), str(out_dir / CKPT_NAME)],
                 info={"step": step, "cancelled": cancelled, "history": history,
                       "decoder": str(out_dir / DECODER_NAME), "saved_step": saved})


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


_TRAIN_HELP = {
    "steps": "training steps (the paper: 160,000)", "batch-size": "images per step (the paper: 8)",
    "lr": "Adam's learning rate (the paper: 1e-4)", "lr-decay": "lr / (1 + decay * step) (the paper: 5e-5)",
    "style-weight": "lambda, the style loss's weight (the paper: 10)", "content-weight": "the content loss's weight",
    "resize": "shorter side of every image, in px (the paper: 512)",
    "crop": "random square crop, in px (the paper: 256)", "save-every": "checkpoint every N steps",
    "sample-every": "a sample transfer (sample_<step>.png in --out) every N steps",
    "log-every": "a progress line every N steps", "seed": "the seed of the crops and the decoder's start",
}


def _weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=os.environ.get(WEIGHTS_ENV) or None,
                        help="a folder with vgg_normalised.pth and decoder.pth (or .safetensors), or a Hub repo "
                             f"id (default: ${WEIGHTS_ENV}, else {DEFAULT_HUB_REPO})")


def _train_options(tr: argparse.ArgumentParser) -> None:
    tr.add_argument("--content", required=True, help="folder of content images (e.g. MS-COCO)")
    tr.add_argument("--style", required=True, help="folder of style images (e.g. WikiArt)")
    tr.add_argument("--out", default="data/adain/decoder", help="checkpoint folder (default: %(default)s)")
    _weights_option(tr)
    tr.add_argument("--encoder-init", choices=["vgg_normalised", "torchvision"], default=None,
                    help="the encoder's weights: vgg_normalised from --weights (default), or torchvision's "
                         "ImageNet VGG-19")
    tr.add_argument("--tiny", action="store_true", help="tiny random network (offline demo)")
    for name, typ in (("steps", int), ("batch-size", int), ("lr", float), ("lr-decay", float),
                      ("style-weight", float), ("content-weight", float), ("resize", int),
                      ("crop", int), ("save-every", int), ("sample-every", int),
                      ("log-every", int), ("seed", int)):
        tr.add_argument(f"--{name}", type=typ, default=getattr(DecoderTrainConfig, name.replace("-", "_")),
                        help=f"{_TRAIN_HELP[name]} (default: %(default)s)")
    tr.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    tr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="torch device (default: %(default)s)")

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core.adain", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    _train_options(sub.add_parser("train", help="train a decoder"))
    cv = sub.add_parser("convert", help="convert a .pth state dict to .safetensors")
    cv.add_argument("src", help="the .pth (or .pt) file: plain tensors only, nothing else is loaded")
    cv.add_argument("dst", nargs="?", help="the .safetensors file to write (default: beside src)")
    tf = sub.add_parser("transfer", help="style one content image")
    tf.add_argument("content", help="the content image")
    tf.add_argument("styles", nargs="+", help="one or more style images (mixed by --style-weights)")
    tf.add_argument("--out", required=True, help="the image file to write (PNG, JPEG, ...)")
    _weights_option(tf)
    tf.add_argument("--decoder", default=None, help="a decoder file of your own (e.g. a trained "
                    f"run's {DECODER_NAME}) instead of the weights' decoder")
    tf.add_argument("--tiny", action="store_true", help="the tiny random network (offline demo: noise-like output)")
    tf.add_argument("--alpha", type=float, default=1.0, help="content (0) to style (1) (default: %(default)s)")
    tf.add_argument("--style-weights", type=float, nargs="*", help="one weight per style (default: equal)")
    tf.add_argument("--preserve-color", action="store_true", help="keep the content's colours")
    tf.add_argument("--size", type=int, default=512, help="output size, longer side in px (default: %(default)s)")
    return ap


def _cli(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "convert":
            print(convert_to_safetensors(args.src, args.dst))
        elif args.cmd == "transfer":
            model = tiny_model() if args.tiny else load_model(args.weights, decoder=args.decoder)
            req = TransferRequest([args.content], args.styles, args.style_weights or None,
                                  args.alpha, args.preserve_color, size=args.size)
            *_, res = run_transfer(model, req)
            res.images[0].save(args.out)
            print(args.out)
        else:
            cfg = DecoderTrainConfig(
                content_dir=args.content, style_dir=args.style, out_dir=args.out, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                style_weight=args.style_weight, content_weight=args.content_weight,
                resize=args.resize, crop=args.crop, save_every=args.save_every,
                sample_every=args.sample_every, log_every=args.log_every, seed=args.seed,
                resume=not args.no_resume, weights=args.weights,
                encoder_init=args.encoder_init if args.encoder_init == "torchvision" else None,
                tiny=args.tiny, device=args.device)
            stop = threading.Event()
            try:
                for ev in train_decoder(cfg, should_stop=stop.is_set):
                    if isinstance(ev, Progress):
                        print(ev.message, flush=True)
                        if ev.preview and Path(cfg.out_dir).is_dir():
                            ev.preview[-1].save(Path(cfg.out_dir) / f"sample_{ev.step:07d}.png")
                    else:
                        print(f"done at step {ev.info['step']}; decoder: {ev.info['decoder']}")
            except KeyboardInterrupt:
                print("interrupted; the last checkpoint is kept", file=sys.stderr)
                return 130
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
