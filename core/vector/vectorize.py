"""Image -> SVG: vtracer's tracing refined by our rasterizer (the default), or LIVE from scratch.

The default ('vtracer'): vtracer traces the image at the working size; when that has more paths
than the budget, the least important are dropped a batch at a time, a path's importance being
how much the rendering error grows without it (`prune`); then all paths are refined with the
L2 loss (`refine`), stopping early once the PSNR stops improving.

`vectorize(...)` is a generator: it yields `VectorProgress` events (step, loss, PSNR, the
current SVG text and a rendered frame) and finally one `Result` whose `info` has 'svg' (the
SVG text in the input image's pixel size), 'psnr' (dB, at the working size), 'paths', 'init'
and 'steps' (those run: refinement may stop early); `images` holds the final render. Stopping
the generator early (Cancel) leaves nothing written: files are the caller's business (see
`svg_io.write_svg`, atomic).
"""
from __future__ import annotations

import io
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..events import Result
from ..images import load_image
from .live import Fitter, live, progress_event, psnr, xing_loss
from .rasterizer import render, to_pil
from .scene import Scene, shape_area
from .svg_io import parse_svg, scene_to_svg

log = logging.getLogger(__name__)

INITS = ("vtracer", "live")
DEFAULT_INIT = "vtracer"
DEFAULT_STEPS = {"vtracer": 150, "live": 500}
PLATEAU, PLATEAU_WINDOW = 0.02, 40    # refinement stops once 40 steps gained < 0.02 dB
MAX_PATHS = 512
MAX_STEPS = 100_000


def image_tensor(image, size: int, device=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Load (safely) and resize so the longer side is `size`; returns [3, h, w] and the original size."""
    img = load_image(image, what="image to vectorize")
    return resized(img, size, device), img.size


def resized(img: Image.Image, size: int, device=None) -> torch.Tensor:
    """`img` resized (Lanczos) so its longer side is `size`, as a [3, h, w] tensor in [0, 1]."""
    scale = size / max(img.size)
    w, h = max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    arr = torch.as_tensor(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return arr.contiguous().to(device or "cpu")


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


COARSER = [{}, dict(filter_speckle=8, layer_difference=32),
           dict(filter_speckle=16, color_precision=4, layer_difference=48)]


def vtracer_scene(target: torch.Tensor, num_paths: int | None = None) -> Scene:
    """vtracer alone under a path budget (the baseline; our default used it before `prune`).

    Coarser settings are tried in turn (higher speckle filter, fewer color levels) and the first
    tracing with at most `num_paths` paths is kept; if even the coarsest has too many, the
    smallest (by control-polygon area) are dropped. Returned in `target`'s pixel space.
    """
    H, W = target.shape[1:]
    scene = None
    for opts in COARSER:
        scene = parse_svg(vtracer_svg(target, **opts))
        if num_paths is None or len(scene.shapes) <= num_paths:
            break
    if num_paths is not None and len(scene.shapes) > num_paths:
        keep = sorted(np.argsort([-shape_area(s) for s in scene.shapes])[:num_paths].tolist())
        scene.shapes = [scene.shapes[i] for i in keep]
    return scaled(scene, W, H).to(target.device)


def downsampled(target: torch.Tensor, factor: int) -> torch.Tensor:
    """Box-filtered `target` ([3, H, W]) at 1/factor of its size (rounded)."""
    if factor <= 1:
        return target
    h, w = max(1, round(target.shape[1] / factor)), max(1, round(target.shape[2] / factor))
    return F.interpolate(target[None], size=(h, w), mode="area")[0]


def removal_errors(scene: Scene, target: torch.Tensor) -> np.ndarray:
    """For each path, the squared rendering error (summed) of the scene without it, minus that
    of the whole scene: what the path is worth. `target` sets the size it is measured at."""
    H, W = target.shape[1:]
    with torch.no_grad():
        base = float(((render(scene, W, H) - target) ** 2).sum())
        out = []
        for i in range(len(scene.shapes)):
            rest = Scene(scene.width, scene.height, scene.shapes[:i] + scene.shapes[i + 1:],
                         scene.background)
            out.append(float(((render(rest, W, H) - target) ** 2).sum()) - base)
    return np.array(out)


def prune(scene: Scene, target: torch.Tensor, num_paths: int, measure_at: int = 64) -> Scene:
    """Drop the least important paths until `num_paths` remain (the budget filled exactly).

    Greedy in batches: each round measures every path's `removal_errors` (at `measure_at` px)
    and drops the half of the excess that costs least; in stacked mode the shapes beneath
    fill the gap. Paths beyond 4x the budget are first dropped by area (smallest first).
    """
    shapes = list(scene.shapes)
    if len(shapes) > 4 * num_paths:
        keep = sorted(np.argsort([-shape_area(s) for s in shapes])[:4 * num_paths].tolist())
        shapes = [shapes[i] for i in keep]
    small = downsampled(target, max(1, round(max(target.shape[1:]) / measure_at)))
    while len(shapes) > num_paths:
        excess = len(shapes) - num_paths
        cost = removal_errors(Scene(scene.width, scene.height, shapes, scene.background), small)
        drop = set(np.argsort(cost, kind="stable")[:max(1, (excess + 1) // 2)].tolist())
        shapes = [s for i, s in enumerate(shapes) if i not in drop]
    return Scene(scene.width, scene.height, shapes, scene.background)


def vtracer_init(target: torch.Tensor, num_paths: int) -> Scene:
    """vtracer's tracing of `target` (at the working size: finer than tracing the image at its
    own size, and better refined) `prune`d to at most `num_paths` paths."""
    H, W = target.shape[1:]
    scene = scaled(parse_svg(vtracer_svg(target)), W, H).to(target.device)
    if len(scene.shapes) > num_paths:
        scene = prune(scene, target, num_paths)
    return scene


def refine(scene: Scene, target: torch.Tensor, steps: int, point_lr: float | None = None,
           color_lr: float = 0.01, xing_weight: float = 0.0, preview_every: int = 25,
           first_step: int = 0, total: int | None = None, plateau: float | None = None):
    """Differentiable refinement of all paths with the plain L2 loss; yields VectorProgress and
    returns the number of steps taken.

    `plateau` (dB): the loop ends early once the best loss of the last `PLATEAU_WINDOW` steps
    gained less than that on the best before them (checked every 10 steps; None: never).
    """
    _, H, W = target.shape
    fitter = Fitter(point_lr if point_lr is not None else 0.5 * max(H, W) / 240, color_lr)
    fitter.add(scene.shapes)
    total = total or steps
    losses: list[float] = []
    for i in range(steps):
        fitter.set_point_scale(1.0 if i < 0.2 * steps else 1.0 - 0.6 * (i - 0.2 * steps) / (0.8 * steps))
        img = render(scene, W, H)
        loss = ((img - target) ** 2).sum(0).mean()
        if xing_weight:
            loss = loss + xing_weight * xing_loss(scene.shapes)
        fitter.step(loss, scene.shapes)
        losses.append(loss.item())
        stop = plateau is not None and _plateaued(losses, plateau)
        if (i + 1) % preview_every == 0 or i == steps - 1 or stop:
            with torch.no_grad():
                img = render(scene, W, H)
            yield progress_event(first_step + i + 1, total, scene, img, loss.item(), target,
                                 f"refining {len(scene.shapes)} paths")
        if stop:
            break
    for s in scene.shapes:
        for p in s.parameters():
            p.requires_grad_(False)
    return len(losses)


def _plateaued(losses: list[float], plateau: float, window: int = PLATEAU_WINDOW) -> bool:
    """Whether the best loss so far is less than `plateau` dB better than the best before the
    last `window` steps (Adam's loss oscillates: the best is steadier than the last)."""
    if len(losses) <= window or len(losses) % 10:
        return False
    before, now = min(losses[:-window]), min(losses)
    return 10 * math.log10(max(before, 1e-12) / max(now, 1e-12)) < plateau


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


def vectorize(image, num_paths: int = 16, init: str = DEFAULT_INIT, steps: int | None = None,
              size: int = 128, device=None, seed: int = 0, preview_every: int = 25, **live_options):
    """Vectorize an image (path, bytes, PIL or array); a generator of VectorProgress, then a Result.

    init='vtracer' (default): vtracer's tracing, `prune`d to `num_paths` paths when it has more,
    refined for at most `steps` (default 150), stopping early on a PSNR plateau (`PLATEAU`).
    init='live': LIVE from scratch with `num_paths` paths (default `steps` 500).
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
    img = load_image(image, what="image to vectorize")
    (ow, oh), target = img.size, resized(img, int(size), device)
    steps = DEFAULT_STEPS[init] if steps is None else int(steps)
    if init == "live":
        scene = yield from live(target, num_paths=int(num_paths), steps=max(steps, 1), seed=seed,
                                preview_every=preview_every, **live_options)
    else:
        scene = vtracer_init(target, int(num_paths))
        with torch.no_grad():
            first = render(scene, target.shape[2], target.shape[1])
        yield progress_event(0, steps, scene, first, float(((first - target) ** 2).sum(0).mean()),
                             target, f"vtracer: {len(scene.shapes)} paths")
        steps = yield from refine(scene, target, steps, preview_every=preview_every, plateau=PLATEAU)
    with torch.no_grad():
        img = render(scene, target.shape[2], target.shape[1])
    out = scaled(scene, ow, oh)
    svg = scene_to_svg(out)
    yield Result(images=[to_pil(img)],
                 info={"svg": svg, "psnr": psnr(img, target), "paths": len(scene.shapes),
                       "init": init, "steps": steps, "size": (target.shape[2], target.shape[1])})


def run(gen):
    """Drain a vectorize() generator; returns the final Result (for scripts and tests)."""
    result = None
    for ev in gen:
        if isinstance(ev, Result):
            result = ev
    return result
