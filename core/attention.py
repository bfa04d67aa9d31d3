"""The one mechanism for changing attention: swap processors inside a context manager.

Whatever processors a UNet carries when the block is entered (diffusers' defaults, a loaded
LoRA's, another method's) are the ones it carries after it, also when the block is left by
an exception or a cancel.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


def self_attention_names(unet) -> list[str]:
    """Processor names of the UNet's self-attention layers, in module order."""
    return [n for n in unet.attn_processors if n.endswith("attn1.processor")]


@contextlib.contextmanager
def swapped_processors(unet, make: Callable[[str, object], object | None]) -> Iterator[dict]:
    """Replace processor `name` by `make(name, original)` where that returns one (None keeps
    the original); restore the very originals on exit."""
    originals = dict(unet.attn_processors)
    replaced = {}
    for name, proc in originals.items():
        new = make(name, proc)
        replaced[name] = proc if new is None else new
    unet.set_attn_processor(replaced)
    try:
        yield replaced
    finally:
        unet.set_attn_processor(originals)


def project_qkv(attn, hidden_states: torch.Tensor, encoder_hidden_states=None, temb=None):
    """The input half of diffusers' AttnProcessor2_0: returns (q, k, v, restore) with q, k, v
    shaped (batch, heads, tokens, head_dim) and `restore(out)` doing the output half."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    batch = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads

    def heads(x):
        return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    query, key, value = heads(query), heads(key), heads(value)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    def restore(out: torch.Tensor) -> torch.Tensor:
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    return query, key, value, restore


def attention(q, k, v, bias: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention; `bias` (broadcastable to the logits) is added
    before the softmax."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
