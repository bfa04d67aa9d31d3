"""Putting a stored LoRA onto models as a named peft adapter (the store only keeps the files).

`load_into_unet` goes through diffusers' own loader (the path `pipe.load_lora_weights` takes);
`load_into_text_encoder` uses peft directly, as diffusers does for the UNet, because
transformers' own `add_adapter` refuses the installed peft version. `load_into` reads a library
adapter (or one named part of it) from a `Store` and puts it onto the models given.
core/library.py keeps track of which adapters are resident on the engine's models.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from . import lora_format as lf
from .errors import UserError


def load_into_unet(unet, state_dict: Mapping[str, torch.Tensor], adapter_name: str, metadata=None) -> None:
    """A LoRA state dict ("unet."-prefixed keys) as peft adapter `adapter_name`, by diffusers' own
    loader; its new modules take the UNet's mode (they are made in training mode, where an
    adapter saved with dropout would drop out at inference)."""
    from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin as Mixin

    Mixin.load_lora_into_unet(dict(state_dict), None, unet, adapter_name=adapter_name, metadata=metadata)
    unet.train(unet.training)


def load_into_text_encoder(model: torch.nn.Module, comp: str, sd: Mapping[str, torch.Tensor],
                           configs: Mapping[str, Mapping], adapter_name: str) -> None:
    """The `comp` ("text_encoder" / "text_encoder_2") part of a canonical LoRA state dict as peft
    adapter `adapter_name` on a transformers text encoder, with the stored LoraConfig.

    peft directly, as diffusers does for the UNet: transformers' own `add_adapter` refuses the
    installed peft version (transformers 5.x wants peft >= 0.22)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    flat = not hasattr(model, "text_model")
    part_sd = {}
    for k, v in sd.items():
        if k.startswith(comp + "."):
            k = k[len(comp) + 1:]
            part_sd[lf.te_flat(k) if flat else k] = v
    cfg = {k: v for k, v in (configs.get(comp) or {}).items()
           if k in LoraConfig.__dataclass_fields__ and LoraConfig.__dataclass_fields__[k].init}
    if not cfg:
        cfg = lf.config_from_scales(comp, sd, lf.module_scales(sd, {}))
    inject_adapter_in_model(LoraConfig(**cfg), model, adapter_name=adapter_name, state_dict=part_sd)
    incompatible = set_peft_model_state_dict(model, part_sd, adapter_name=adapter_name)
    unexpected = [k for k in getattr(incompatible, "unexpected_keys", []) or [] if "lora_" in k]
    if unexpected:
        raise UserError(f"The adapter does not fit the {comp}: {lf.few(unexpected)}")


def load_into(store, adapter_id: int, owner: Any, *, adapter_name: str, unet: torch.nn.Module | None = None,
              text_encoder: torch.nn.Module | None = None, text_encoder_2: torch.nn.Module | None = None,
              part: str | None = None) -> None:
    """Inject library adapter `adapter_id` (read from `store`, visibility-checked for `owner`)
    as the named peft adapter into the given models, with its stored rank/alpha config."""
    sd, configs = store.load_adapter(adapter_id, owner, part)
    comps = {lf.component_of(k) for k in sd}
    targets = {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    lacking = [c for c in comps if targets[c] is None]
    if lacking:
        raise UserError(f"This adapter also adapts {', '.join(sorted(lacking))}, which was not given.")
    if unet is not None and "unet" in comps:
        load_into_unet(unet, sd, adapter_name, lf.pack_metadata(configs) or None)
    for comp in lf.TEXT_ENCODERS:
        if targets[comp] is not None and comp in comps:
            load_into_text_encoder(targets[comp], comp, sd, configs, adapter_name)
