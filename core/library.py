"""The adapter library as the app uses it: one store per engine, and the named peft adapters
that live on the engine's resident UNet.

`get_store(engine)` is the one `Store` every tab shares (rooted at `<data_dir>/library`).
`adapters(engine)` is the engine's `ResidentAdapters`: which library adapters are loaded into
the shared UNet (as peft adapters named `lib-<id>`), loading them on demand and activating a
set of them with a weight each for the length of one request:

    with adapters(engine).active({7: 1.0, 9: 0.6}):
        engine.text_to_image(ctx, ...)

Outside such a block every adapter is disabled, so other tabs see the base model exactly
(peft's disabled path calls the base layer alone: bit-identical outputs). `unload_all`
removes the peft wrappers altogether and leaves the UNet's modules as they were loaded.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import torch

from .errors import UserError
from .store import Store

_LOCK = threading.Lock()
MAX_RESIDENT = 8  # library adapters kept loaded on the UNet (least recently used go first)


def get_store(engine) -> Store:
    """The engine's shared adapter library (created on first use)."""
    with _LOCK:
        store = getattr(engine, "_studio_store", None)
        if store is None:
            store = Store(engine.data_dir / "library")
            engine._studio_store = store
        return store


def adapters(engine) -> "ResidentAdapters":
    with _LOCK:
        res = getattr(engine, "_studio_adapters", None)
        if res is None:
            res = ResidentAdapters(engine)
            engine._studio_adapters = res
        return res


def base_model_id(engine) -> str:
    """What adapters trained on this engine record as their base model."""
    return engine.spec.source


def arch_of(engine) -> str:
    return ("sdxl" if engine.xl else "sd15") + ("-tiny" if engine.offline else "")


def peft_names(unet) -> list[str]:
    return list(getattr(unet, "peft_config", {}) or {})


def disable_all(unet) -> None:
    """Leave every peft adapter on `unet` disabled (base outputs), if there are any."""
    if peft_names(unet):
        unet.disable_adapters()


class ResidentAdapters:
    """Library adapters loaded into the engine's UNet, by library id. Call from inside a job
    (which holds the engine's GPU slot), never concurrently with a generation."""

    def __init__(self, engine):
        self.engine = engine
        self._loaded: "OrderedDict[int, str]" = OrderedDict()  # library id -> peft adapter name

    @property
    def unet(self):
        return self.engine.pipe.unet

    def name_of(self, adapter_id: int) -> str:
        return f"lib-{int(adapter_id)}"

    def loaded(self) -> dict[int, str]:
        return dict(self._loaded)

    def adopt(self, adapter_id: int, peft_name: str) -> None:
        """Register an adapter already on the UNet (a freshly trained one) under a library id,
        so it is used as is: no reload, no second copy."""
        self._loaded[int(adapter_id)] = peft_name
        self._loaded.move_to_end(int(adapter_id))
        self._evict(keep={int(adapter_id)})
        disable_all(self.unet)

    def ensure(self, adapter_id: int, viewer: Any) -> str:
        """Load library adapter `adapter_id` into the UNet if it is not there yet."""
        adapter_id = int(adapter_id)
        store = get_store(self.engine)
        a = store.get_adapter(adapter_id, viewer)  # visibility check every time
        if adapter_id in self._loaded and self._loaded[adapter_id] in peft_names(self.unet):
            self._loaded.move_to_end(adapter_id)
            return self._loaded[adapter_id]
        name = self.name_of(adapter_id)
        if name in peft_names(self.unet):
            self.unet.delete_adapters(name)
        self._inject(store, a, viewer, name)
        self._loaded[adapter_id] = name
        self._evict(keep={adapter_id})
        disable_all(self.unet)
        return name

    def _inject(self, store, a, viewer, name: str) -> None:
        """The UNet part of a library adapter as peft adapter `name` (diffusers' own loader).
        Text-encoder parts of imported files are left out: a text-encoder adapter would be
        active for every tab, and this app applies adapters per request on the UNet only."""
        from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin as Mixin

        from . import lora_format as lf

        sd, configs = store.load_adapter(a.id, viewer)
        unet_sd = {k: v for k, v in sd.items() if k.startswith("unet.")}
        if not unet_sd:
            raise UserError(f"The adapter {a.name!r} has no UNet weights (text encoders only); it cannot be "
                            "applied here.")
        meta = lf.pack_metadata({k: v for k, v in configs.items() if k == "unet"}) or None
        Mixin.load_lora_into_unet(unet_sd, None, self.unet, adapter_name=name, metadata=meta)
        self.skipped_text_encoder = len(unet_sd) < len(sd)

    def _evict(self, keep: set[int]) -> None:
        while len(self._loaded) > MAX_RESIDENT:
            victim = next((i for i in self._loaded if i not in keep), None)
            if victim is None:
                break
            self.remove(victim)

    def remove(self, adapter_id: int) -> None:
        """Take one adapter off the UNet; with none left, the peft wrappers go too."""
        name = self._loaded.pop(int(adapter_id), None)
        if name is not None and name in peft_names(self.unet):
            self.unet.delete_adapters(name)
        if not peft_names(self.unet):
            unload_peft(self.unet)
        else:
            disable_all(self.unet)

    def unload_all(self) -> None:
        for i in list(self._loaded):
            self.remove(i)
        unload_peft(self.unet)

    @contextlib.contextmanager
    def active(self, weights: Mapping[int, float], viewer: Any = None) -> Iterator[list[str]]:
        """Activate these library adapters with a weight each for the block; all off after."""
        weights = {int(k): float(v) for k, v in weights.items() if v is not None}
        if not weights:
            disable_all(self.unet)
            yield []
            return
        names = [self.ensure(i, viewer) for i in weights]
        try:
            self.unet.set_adapters(names, weights=[weights[i] for i in weights])
            self.unet.enable_adapters()
            yield names
        finally:
            disable_all(self.unet)


def peft_wrapped(unet) -> list[str]:
    """Names of the modules that are peft wrappers (`BaseTunerLayer`), with or without adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]


def unload_peft(unet) -> None:
    """Remove peft wrappers (if any) so the UNet's modules are the plain original ones.

    Looks at the modules themselves, not at `peft_config`: diffusers' `delete_adapters` drops
    `peft_config` with the last adapter but leaves the (now empty) wrappers in place."""
    if not (peft_wrapped(unet) or hasattr(unet, "peft_config")
            or getattr(unet, "_hf_peft_config_loaded", None)):
        return
    unet.unload_lora()  # every wrapper back to its base layer, peft bookkeeping dropped
    for name in sorted(peft_wrapped(unet), key=len, reverse=True):  # whatever it did not reach
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent) if parent else unet, child, unet.get_submodule(name).get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config


def _keys_of(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def count_params(params) -> int:
    return sum(p.numel() for p in params)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter and buffer (for exact restores and tests)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def generate(engine, prompts, weights: Mapping[int, float], *, viewer: Any, owner: str = "local", **kwargs):
    """A batch with library adapters active (a weight each), streamed; adapters off afterwards."""
    from .engine import _check_prompts
    from .events import Result

    prompts = _check_prompts(prompts)
    weights = {int(k): float(v) for k, v in weights.items()}
    store = get_store(engine)
    for i in weights:
        store.get_adapter(i, viewer)  # not found / not yours: before the job starts

    def work(ctx):
        with adapters(engine).active(weights, viewer):
            images = engine.text_to_image(ctx, prompts, **kwargs)
        return Result(images=images, info={"prompts": list(prompts), "adapters": weights})
    return engine.run(work, owner=owner, kind="generate")
