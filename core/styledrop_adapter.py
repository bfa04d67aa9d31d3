"""StyleDrop's adapter as the paper defines it, on the resident UNet through forward hooks.

The module (Sohn et al. 2023, App. B.1.1, Fig. S1) after the feed-forward of every transformer
block:

    out' = out + U GELU(D out),    D: r x d (truncated normal, std 0.02),   U: d x r (zeros)

so it starts as the identity. No bias (Fig. S1's `apply_adapter` has none). GELU is the tanh
approximation: Fig. S1 calls `jax.nn.gelu`, whose default is `approximate=True`.

It is not a peft LoRA (the GELU sits between D and U), so it never enters the UNet's modules:
`Applied` registers one forward hook on each block's `ff` that adds the adapter's term to the
FF's output, and `remove()` takes the hooks off again. The UNet's parameters, buffers and modules
are never touched, so once the hooks are gone it computes exactly what it computed before.
Several adapters on at once add their terms (each with a weight): out + sum_i w_i U_i GELU(D_i out).

Library format: a safetensors file whose keys pass the store's LoRA checks (pairs of
`lora_A.weight` / `lora_B.weight`) on a pseudo-module `<block>.ff.styledrop_gelu` that no UNet
has, so no LoRA loader can attach it by mistake (it fails loudly); lora_A = D, lora_B = U. The
library entry's `extra["adapter_form"] = FORM` tells core/library.py to apply it with
`applied` instead of peft.
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

FORM = "styledrop-gelu"       # extra["adapter_form"] of a library entry in this form
FORM_KEY = "adapter_form"
BLOCKS = r"(.*\.)?transformer_blocks\.\d+"
SUFFIX = ".ff.styledrop_gelu"  # the pseudo-module the file's keys sit on
GELU_APPROXIMATE = "tanh"      # jax.nn.gelu's default (the paper's Fig. S1)


def feed_forwards(unet) -> dict[str, torch.nn.Module]:
    """The feed-forward (`ff`) of every transformer block, by the block's module name."""
    return {name: mod.ff for name, mod in unet.named_modules()
            if re.fullmatch(BLOCKS, name) and isinstance(getattr(mod, "ff", None), torch.nn.Module)}


def ff_out_linear(ff: torch.nn.Module) -> torch.nn.Linear:
    """A feed-forward's output Linear (diffusers' `ff.net.2`; its base layer under a peft wrapper)."""
    for m in reversed(list(getattr(ff, "net", ()))):
        base = m.get_base_layer() if hasattr(m, "get_base_layer") else m
        if isinstance(base, torch.nn.Linear):
            return base
    raise ValueError("a feed-forward without an output Linear")


def ff_width(ff: torch.nn.Module) -> int:
    """d: the width of a feed-forward's output."""
    return int(ff_out_linear(ff).out_features)


class GeluAdapter(torch.nn.Module):
    """One block's adapter: x -> x + w U GELU(D x)."""

    def __init__(self, d: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = torch.nn.Parameter(torch.empty(int(rank), int(d)))   # D: r x d
        self.up = torch.nn.Parameter(torch.zeros(int(d), int(rank)))     # U: d x r, zeros: the identity at step 0
        with torch.no_grad():
            torch.nn.init.trunc_normal_(self.down, std=0.02, a=-0.04, b=0.04, generator=generator)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """U GELU(D x), in the adapter's dtype."""
        h = F.gelu(F.linear(x.to(self.down.dtype), self.down), approximate=GELU_APPROXIMATE)
        return F.linear(h, self.up)

    def forward(self, x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        return x + (float(weight) * self.delta(x)).to(x.dtype)


class StyleDropAdapter(torch.nn.Module):
    """The adapters of all blocks of one UNet (a GeluAdapter per transformer block's FF)."""

    def __init__(self, widths: Mapping[str, int], rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.rank = int(rank)
        self.block_names = list(widths)
        self.blocks = torch.nn.ModuleDict({_key(n): GeluAdapter(d, rank, generator) for n, d in widths.items()})

    @classmethod
    def for_unet(cls, unet, rank: int, generator: torch.Generator | None = None) -> "StyleDropAdapter":
        ffs = feed_forwards(unet)
        if not ffs:
            raise ValueError("this UNet has no transformer block with a feed-forward")
        return cls({n: ff_width(ff) for n, ff in ffs.items()}, rank, generator)

    def block(self, name: str) -> GeluAdapter:
        return self.blocks[_key(name)]

    def state_dict_canonical(self) -> dict[str, torch.Tensor]:
        """The library file's tensors: lora_A = D, lora_B = U on `<block>.ff.styledrop_gelu`."""
        out = {}
        for n in self.block_names:
            a = self.block(n)
            out[f"unet.{n}{SUFFIX}.lora_A.weight"] = a.down.detach().to("cpu", torch.float32).clone()
            out[f"unet.{n}{SUFFIX}.lora_B.weight"] = a.up.detach().to("cpu", torch.float32).clone()
        return out

    def configs(self) -> dict:
        return {"unet": {"r": self.rank, "lora_alpha": self.rank,
                         "target_modules": [f"{n}{SUFFIX}" for n in self.block_names]}}

    @classmethod
    def from_canonical(cls, sd: Mapping[str, torch.Tensor]) -> "StyleDropAdapter":
        names = sorted({k[len("unet."):-len(SUFFIX + ".lora_A.weight")] for k in sd
                        if k.startswith("unet.") and k.endswith(SUFFIX + ".lora_A.weight")})
        if not names:
            raise ValueError("not a StyleDrop GELU adapter file")
        rank = int(sd[f"unet.{names[0]}{SUFFIX}.lora_A.weight"].shape[0])
        widths = {n: int(sd[f"unet.{n}{SUFFIX}.lora_A.weight"].shape[1]) for n in names}
        out = cls(widths, rank)
        with torch.no_grad():
            for n in names:
                out.block(n).down.copy_(sd[f"unet.{n}{SUFFIX}.lora_A.weight"])
                out.block(n).up.copy_(sd[f"unet.{n}{SUFFIX}.lora_B.weight"])
        return out.requires_grad_(False)


def _key(name: str) -> str:
    return name.replace(".", "__")


class Applied:
    """Adapters hooked onto a UNet's feed-forwards (with a weight each) until `remove()`."""

    def __init__(self, unet, adapters: Sequence[tuple[StyleDropAdapter, float]]):
        ffs = feed_forwards(unet)
        self.handles = []
        try:
            for adapter, _ in adapters:
                missing = [n for n in adapter.block_names if n not in ffs]
                if missing:
                    raise ValueError(f"the adapter does not fit this UNet (no block {missing[0]})")
            for name, ff in ffs.items():
                here = [(a.block(name), float(w)) for a, w in adapters if name in a.block_names]
                if here:
                    self.handles.append(ff.register_forward_hook(_hook(here)))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _hook(pairs: list[tuple[GeluAdapter, float]]):
    def hook(module, args, out):
        for a, _ in pairs:
            if a.down.device != out.device:  # a UNet offloaded block by block (low-VRAM mode): follow it
                a.to(out.device)
        delta = sum(float(w) * a.delta(out) for a, w in pairs)
        return out + delta.to(out.dtype)
    return hook


@contextlib.contextmanager
def applied(unet, adapters: Sequence[tuple[StyleDropAdapter, float]]) -> Iterator[Applied]:
    """The adapters on for the block, hooks off after (even on error)."""
    handle = Applied(unet, adapters)
    try:
        yield handle
    finally:
        handle.remove()


def hooks_on(unet) -> int:
    """How many forward hooks the UNet's modules carry (0 on a clean UNet)."""
    return sum(len(m._forward_hooks) for m in unet.modules())


# --------------------------------------------------------------------------- the library's side

@functools.lru_cache(maxsize=16)
def _cached(path: str, sha: str) -> StyleDropAdapter:
    from .lora_format import read_safetensors

    sd, _ = read_safetensors(path, max_bytes=1 << 40)
    return StyleDropAdapter.from_canonical(sd)


def from_library(entry, unet) -> StyleDropAdapter:
    """A library entry in this form, on the UNet's device and dtype (cached by file hash)."""
    p = next(unet.parameters())
    return _cached(str(entry.path), str(entry.sha256)).to(p.device, p.dtype)


@contextlib.contextmanager
def applied_entries(unet, entries: Sequence[tuple[object, float]]) -> Iterator[None]:
    """Library entries (Adapter rows in this form) with a weight each, on for the block."""
    with applied(unet, [(from_library(a, unet), w) for a, w in entries]):
        yield


def is_gelu(entry) -> bool:
    return (getattr(entry, "extra", None) or {}).get(FORM_KEY) == FORM


# --------------------------------------------------------------------------- training (core/train.py's hook point)

class Training:
    """A fresh adapter hooked onto the resident UNet for one training run (AdapterSpec.module_adapter):
    `parameters()` train, `state_dict()`/`configs()` are saved, `remove()` restores the UNet."""

    def __init__(self, unet, rank: int, generator: torch.Generator | None = None):
        p = next(unet.parameters())
        self.adapter = StyleDropAdapter.for_unet(unet, rank, generator).to(p.device, torch.float32)
        self.handle = Applied(unet, [(self.adapter, 1.0)])

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.adapter.parameters())

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.adapter.named_parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.adapter.state_dict_canonical()

    def configs(self) -> dict:
        return self.adapter.configs()

    def remove(self) -> None:
        self.handle.remove()


def factory(rank: int):
    """AdapterSpec.module_adapter for this form at rank r: (unet, generator) -> Training."""
    return functools.partial(Training, rank=int(rank))


# --------------------------------------------------------------------------- export (linearised)

def linearised_lora(adapter: StyleDropAdapter, unet) -> dict[str, torch.Tensor]:
    """An approximation for LoRA loaders (A1111, ComfyUI): GELU replaced by its tangent at 0,
    GELU(z) ~ z / 2, so U GELU(D out) ~ (1/2) U D (W2 h + b): a LoRA on each block's `ff.net.2`
    with lora_A = (1/2) D W2, lora_B = U; the constant (1/2) U D b is dropped (a LoRA has no
    bias). Exact only where D out is near 0; what the GELU's curvature learned is lost."""
    ffs = feed_forwards(unet)
    out = {}
    for n in adapter.block_names:
        w2 = ff_out_linear(ffs[n]).weight.detach().float().cpu()
        a = adapter.block(n)
        out[f"unet.{n}.ff.net.2.lora_A.weight"] = (0.5 * a.down.detach().float().cpu() @ w2).contiguous()
        out[f"unet.{n}.ff.net.2.lora_B.weight"] = a.up.detach().float().cpu().clone()
    return out
