"""Optional pydiffvg backend behind the same interface as `rasterizer.render`.

pydiffvg is not on any package registry (it is built from source with CMake), so it is only
used when a user has it installed: `render(scene, ..., backend="diffvg")`. Differences from
our rasterizer: diffvg's stroke width is a half width (we pass half of SVG's), and it
anti-aliases by stratified supersampling (`samples` x `samples` per pixel) with a box filter,
so its gradients are stochastic at edges. This adapter is not exercised by our tests (no
pydiffvg in CI); the conversion is small and mirrors the scene layout exactly (closed
subpaths: 3n points, open: 3n + 1, num_control_points 2 per segment).
"""
from __future__ import annotations

import math
import random

import torch

from ..errors import UserError
from .scene import Scene


def _pydiffvg():
    try:
        import pydiffvg
    except ImportError:
        raise UserError("The diffvg backend needs pydiffvg, which is not installed (it is built "
                        "from source: https://github.com/BachiLi/diffvg). Use backend='torch'.") from None
    return pydiffvg


def render_diffvg(scene: Scene, width: int, height: int, background=(1.0, 1.0, 1.0),
                  samples: int = 2, seed: int | None = None) -> torch.Tensor:
    """[3, H, W] (or straight RGBA [4, H, W] when background is None) rendered by pydiffvg."""
    pydiffvg = _pydiffvg()
    sx, sy = width / scene.width, height / scene.height
    shapes, groups = [], []
    for s in scene.shapes:
        dev = s.points.device
        scale = torch.tensor([sx, sy], device=dev, dtype=s.points.dtype)
        half = (s.stroke_width * 0.5 * math.sqrt(sx * sy) if s.stroke_width is not None
                else torch.tensor(0.0, device=dev))
        ids, o = [], 0
        for n, closed in s.subpaths:
            cnt = 3 * n + (0 if closed else 1)
            shapes.append(pydiffvg.Path(num_control_points=torch.full((n,), 2, dtype=torch.int32),
                                        points=s.points[o:o + cnt] * scale, is_closed=closed,
                                        stroke_width=half))
            ids.append(len(shapes) - 1)
            o += cnt
        groups.append(pydiffvg.ShapeGroup(shape_ids=torch.tensor(ids), fill_color=s.fill,
                                          use_even_odd_rule=s.fill_rule == "evenodd",
                                          stroke_color=s.stroke))
    args = pydiffvg.RenderFunction.serialize_scene(width, height, shapes, groups)
    img = pydiffvg.RenderFunction.apply(width, height, samples, samples,
                                        random.randint(0, 10**6) if seed is None else seed,
                                        None, *args)                      # [H, W, 4]
    img = img.permute(2, 0, 1)
    if scene.background is not None:
        background = scene.background
    if background is None:
        return img
    bg = torch.as_tensor(background, dtype=img.dtype, device=img.device)[:, None, None]
    return img[3:] * img[:3] + (1 - img[3:]) * bg
