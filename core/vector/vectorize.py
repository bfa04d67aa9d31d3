"""Image -> SVG: LIVE from scratch, or vtracer's tracing refined by our rasterizer.

`vectorize(...)` is a generator: it yields `VectorProgress` events (step, loss, PSNR, the
current SVG text and a rendered frame) and finally one `Result` whose `info` has 'svg' (the
SVG text in the input image's pixel size), 'psnr' (dB, at the working size), 'paths' and
'init'; `images` holds the final render. Stopping the generator early (Cancel) leaves nothing
written: files are the caller's business (see `svg_io.write_svg`, atomic).
"""
from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..events import Result
from ..images import load_image
from .live import Fitter, live, progress_event, psnr, xing_loss
from .rasterizer import render, to_pil
from .scene import Scene, shape_area
from .svg_io import parse_svg, scene_to_svg

log = logging.getLogger(__name__)

INITS = ("live", "vtracer")
MAX_PATHS = 512
MAX_STEPS = 100_000


def image_tensor(image, size: int, device=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Load (safely) and resize so the longer side is `size`; returns [3, h, w] and the original size."""
    img = load_image(image, what="image to vectorize")
    orig = img.size
    scale = size / max(orig)
    w, h = max(1, round(orig[0] * scale)), max(1, round(orig[1] * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    arr = torch.as_tensor(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return arr.contiguous().to(device or "cpu"), orig


def vtracer_svg(target: torch.Tensor, **options) -> str:
    """vtracer's SVG of a [3, H, W] image (color, stacked, spline mode)."""
    import vtracer
    arr = (target.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    opts = dict(colormode="color", hierarchical="stacked", mode="spline", filter_speckle=4,
                color_precision=6, layer_difference=16, corner_threshold=60,
                length_threshold=4.0, max_iterations=10, splice_threshold=45, path_precision=3)
    opts.update(options)
    return vtracer.convert_raw_image_to_svg(buf.getvalue(), img_format="png", **opts)


def vtracer_scene(target: torch.Tensor, num_paths: int | None = None) -> Scene:
    """vtracer's tracing as a Scene with at most `num_paths` paths.

    Coarser settings are tried first (higher speckle filter, fewer color levels); if there are
    still too many paths, the smallest (by control-polygon area) are dropped; in stacked mode
    the larger shapes beneath fill the gap.
    """
    H, W = target.shape[1:]
    attempts = [{}, dict(filter_speckle=8, layer_difference=32), dict(filter_speckle=16,
                color_precision=4, layer_difference=48)]
    scene = None
    for opts in attempts:
        scene = parse_svg(vtracer_svg(target, **opts))
        if num_paths is None or len(scene.shapes) <= num_paths:
            break
    if num_paths is not None and len(scene.shapes) > num_paths:
        keep = sorted(np.argsort([-shape_area(s) for s in scene.shapes])[:num_paths].tolist())
        scene.shapes = [scene.shapes[i] for i in keep]
    return scaled(scene, W, H).to(target.device)


def refine(scene: Scene, target: torch.Tensor, steps: int, point_lr: float | None = None,
           color_lr: float = 0.01, xing_weight: float = 0.0, preview_every: int = 25,
           first_step: int = 0, total: int | None = None):
    """Differentiable refinement of all paths with the plain L2 loss; yields VectorProgress."""
    _, H, W = target.shape
    fitter = Fitter(point_lr if point_lr is not None else 0.5 * max(H, W) / 240, color_lr)
    fitter.add(scene.shapes)
    total = total or steps
    for i in range(steps):
        fitter.set_point_scale(1.0 if i < 0.2 * steps else 1.0 - 0.6 * (i - 0.2 * steps) / (0.8 * steps))
        img = render(scene, W, H)
        loss = ((img - target) ** 2).sum(0).mean()
        if xing_weight:
            loss = loss + xing_weight * xing_loss(scene.shapes)
        fitter.step(loss, scene.shapes)
        if (i + 1) % preview_every == 0 or i == steps - 1:
            with torch.no_grad():
                img = render(scene, W, H)
            yield progress_event(first_step + i + 1, total, scene, img, loss.item(), target,
                         f"refining {len(scene.shapes)} paths")
    for s in scene.shapes:
        for p in s.parameters():
            p.requires_grad_(False)


def scaled(scene: Scene, width: float, height: float) -> Scene:
    """A copy of `scene` in a `width` x `height` user space (stroke widths scaled too)."""
    sx, sy = width / scene.width, height / scene.height
    out = scene.clone()
    for s in out.shapes:
        s.points = s.points * torch.tensor([sx, sy], dtype=s.points.dtype, device=s.points.device)
        if s.stroke_width is not None:
            s.stroke_width = s.stroke_width * (sx * sy) ** 0.5
    out.width, out.height = width, height
    return out


def vectorize(image, num_paths: int = 16, init: str = "live", steps: int | None = None,
              size: int = 128, device=None, seed: int = 0, preview_every: int = 25, **live_options):
    """Vectorize an image (path, bytes, PIL or array); a generator of VectorProgress, then a Result.

    init='live': LIVE from scratch with `num_paths` paths (default `steps` 500).
    init='vtracer': vtracer's tracing (at most `num_paths` paths) refined for `steps` (default 150).
    `size` is the working resolution (longer side, px); the SVG is written in the image's size.
    """
    if init not in INITS:
        raise UserError(f"Unknown init {init!r}: use one of {', '.join(INITS)}.")
    if not 1 <= int(num_paths) <= MAX_PATHS:
        raise UserError(f"The number of paths must be between 1 and {MAX_PATHS}.")
    if steps is not None and not 0 <= int(steps) <= MAX_STEPS:
        raise UserError(f"The number of steps must be between 0 and {MAX_STEPS}.")
    if not 16 <= int(size) <= 1024:
        raise UserError("The working size must be between 16 and 1024 px.")
    target, (ow, oh) = image_tensor(image, int(size), device)
    if init == "live":
        steps = 500 if steps is None else int(steps)
        scene = yield from live(target, num_paths=int(num_paths), steps=max(steps, 1), seed=seed,
                                preview_every=preview_every, **live_options)
    else:
        steps = 150 if steps is None else int(steps)
        scene = vtracer_scene(target, int(num_paths))
        with torch.no_grad():
            img = render(scene, target.shape[2], target.shape[1])
        yield progress_event(0, steps, scene, img, float(((img - target) ** 2).sum(0).mean()), target,
                     f"vtracer: {len(scene.shapes)} paths")
        yield from refine(scene, target, steps, preview_every=preview_every)
    with torch.no_grad():
        img = render(scene, target.shape[2], target.shape[1])
    out = scaled(scene, ow, oh)
    svg = scene_to_svg(out)
    yield Result(images=[to_pil(img)],
                 info={"svg": svg, "psnr": psnr(img, target), "paths": len(scene.shapes),
                       "init": init, "size": (target.shape[2], target.shape[1])})


def run(gen):
    """Drain a vectorize() generator; returns the final Result (for scripts and tests)."""
    result = None
    for ev in gen:
        if isinstance(ev, Result):
            result = ev
    return result
