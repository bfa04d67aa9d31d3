"""Cheap previews of latents: a linear latent-to-RGB map fitted to the model's own VAE.

Decoding latents with the VAE every step would cost as much as a denoising step at 1024 px.
A 4x3 linear map (plus bias) from latent channels to RGB gives a recognisable preview for
free. We fit it once per model by least squares: decode a few latents, average-pool the
images down to latent resolution, and solve for the map. This works for SD, SDXL and the
random tiny models alike (each gets the map that fits its own decoder).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@torch.no_grad()
def fit_latent_rgb_map(vae, samples: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """A (C+1, 3) matrix M so that [latent, 1] @ M approximates the decoded RGB in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    c = vae.config.latent_channels
    z = torch.randn(samples, c, size, size, generator=gen)
    param = next(vae.parameters())
    device, orig = param.device, param.dtype  # read before casting: .to() changes params in place
    scaling = vae.config.scaling_factor
    with torch.autocast(device.type, enabled=False):
        if orig != torch.float32:
            vae.to(torch.float32)
        try:
            rgb = vae.decode(z.to(device, torch.float32) / scaling).sample.float().cpu()
        finally:
            if orig != torch.float32:
                vae.to(orig)
    rgb = F.adaptive_avg_pool2d(rgb, size)
    x = torch.cat([z, torch.ones(samples, 1, size, size)], 1)
    x = x.permute(0, 2, 3, 1).reshape(-1, c + 1).double()
    y = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()
    return torch.linalg.lstsq(x, y).solution.float()


def latents_to_previews(latents: torch.Tensor, rgb_map: torch.Tensor,
                        max_side: int = 256) -> list[Image.Image]:
    """One small PIL image per latent in the batch."""
    z = latents.detach().float().cpu()
    z = torch.cat([z, torch.ones_like(z[:, :1])], 1)
    rgb = torch.einsum("bchw,cd->bhwd", z, rgb_map)
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    out = []
    for a in arr:
        img = Image.fromarray(np.ascontiguousarray(a))
        scale = max(1, max_side // max(img.size))
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        out.append(img)
    return out
