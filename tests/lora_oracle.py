"""An independent oracle for generation with LoRA adapters: a copy of the base UNet whose
weights get w * B A added by hand (alpha = rank, so scale 1), from the stored files' own
tensors, in a pipeline of its own. What the library's peft adapters generate must match it."""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import numpy as np
import torch

from core import library


def merged_pipe(engine, parts: Sequence[tuple[Mapping[str, torch.Tensor], float, str]]):
    """(pipeline, number of merged modules) for `parts` = [(state dict, weight, module prefix)]:
    only the keys under "unet.<prefix>" of each state dict are merged."""
    unet = copy.deepcopy(engine.pipe.unet)
    library.unload_peft(unet)  # the copy's plain modules (peft wrappers keep their base layer)
    merged = 0
    with torch.no_grad():
        for sd, weight, prefix in parts:
            for key, A in sd.items():
                if not key.startswith(f"unet.{prefix}") or ".lora_A." not in key:
                    continue
                B = sd[key.replace(".lora_A.", ".lora_B.")]
                mod = unet.get_submodule(key[len("unet."):].split(".lora_A.")[0])
                assert isinstance(mod, torch.nn.Linear), key
                mod.weight += (float(weight) * (B.double() @ A.double())).to(mod.weight.dtype)
                merged += 1
    pipe = type(engine.pipe).from_pipe(engine.pipe, unet=unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe, merged


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in images])


def unet_inputs(engine, prompt: str, seed: int = 0, t: int = 500) -> tuple:
    """(sample, timestep, kwargs) for one UNet call on `prompt` at the engine's resolution."""
    pipe = engine.pipe
    with torch.no_grad():
        if engine.xl:
            emb, _, pooled, _ = pipe.encode_prompt(prompt=prompt, device=engine.device,
                                                   do_classifier_free_guidance=False)
            r = engine.resolution
            kw = {"encoder_hidden_states": emb, "added_cond_kwargs": {
                "text_embeds": pooled, "time_ids": torch.tensor([[r, r, 0, 0, r, r]], dtype=emb.dtype)}}
        else:
            emb, _ = pipe.encode_prompt(prompt, engine.device, 1, False)
            kw = {"encoder_hidden_states": emb}
    side = engine.resolution // pipe.vae_scale_factor
    x = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(seed))
    return x, torch.tensor([t]), kw


def predict(unet, inputs) -> torch.Tensor:
    x, t, kw = inputs
    with torch.no_grad():
        return unet(x, t, **kw).sample.double()
