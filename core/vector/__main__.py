"""Command line for the vector tools.

    python -m core.vector render IN.svg -o OUT.png --size 256
    python -m core.vector vectorize IN.png -o OUT.svg --paths 16              # vtracer + refinement
    python -m core.vector vectorize IN.png -o OUT.svg --paths 16 --init live --steps 500

Bad input gives a one-line message on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import UserError
from ..files import atomic_path, atomic_write


def _render(a) -> None:
    import torch
    from .rasterizer import render, render_rgba, to_pil
    from .svg_io import read_svg
    if a.size is not None and not 1 <= a.size <= 8192:
        raise UserError("--size must be between 1 and 8192.")
    scene = read_svg(a.input)
    device = torch.device(a.device)
    scene = scene.to(device)
    W = a.size or max(1, round(scene.width))
    H = max(1, round(scene.height * W / scene.width))
    with torch.no_grad():
        img = render_rgba(scene, W, H) if a.transparent else render(scene, W, H)
    _save(to_pil(img), a.output, "PNG")
    print(f"wrote {a.output} ({W}x{H}, {len(scene.shapes)} shapes)")


def _save(img, path, fmt) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt)


def _vectorize(a) -> None:
    from ..events import Result
    from .vectorize import vectorize
    t0 = time.time()
    result = None
    for ev in vectorize(a.input, num_paths=a.paths, init=a.init, steps=a.steps, size=a.size,
                        device=a.device, seed=a.seed):
        if isinstance(ev, Result):
            result = ev
        elif not a.quiet:
            m = ev.metrics
            print(f"[{ev.step}/{ev.total}] {ev.message}  loss {m.get('loss', 0):.5f}  "
                  f"PSNR {m.get('psnr', 0):.2f} dB", file=sys.stderr)
    atomic_write(a.output, result.info["svg"])
    print(f"wrote {a.output}: {result.info['paths']} paths, PSNR {result.info['psnr']:.2f} dB "
          f"at {result.info['size'][0]}x{result.info['size'][1]}, {time.time() - t0:.1f} s")


def main(argv=None) -> int:
    from .vectorize import DEFAULT_INIT, DEFAULT_STEPS, INITS
    ap = argparse.ArgumentParser(prog="python -m core.vector", description="Vector tools: "
                                 "our differentiable rasterizer and image-to-SVG vectorizer.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render an SVG to PNG with our rasterizer")
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--size", type=int, default=None, help="output width in px (default: SVG size)")
    r.add_argument("--transparent", action="store_true", help="RGBA output, no white background")
    r.add_argument("--device", default="cpu")
    v = sub.add_parser("vectorize", help="turn a raster image into an SVG")
    v.add_argument("input")
    v.add_argument("-o", "--output", required=True)
    v.add_argument("--paths", type=int, default=16)
    v.add_argument("--init", choices=list(INITS), default=DEFAULT_INIT,
                   help="vtracer: vtracer's tracing pruned to the path budget, then refined by "
                        "our rasterizer (default, the best we have); live: LIVE from scratch")
    v.add_argument("--steps", type=int, default=None,
                   help="optimization steps (default " + ", ".join(
                       f"{n} for {k}" for k, n in DEFAULT_STEPS.items()) + ")")
    v.add_argument("--size", type=int, default=128, help="working resolution (longer side)")
    v.add_argument("--device", default="cpu")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise UserError(f"--device {a.device} was asked for but CUDA is not available.")
        out_dir = os.path.dirname(os.path.abspath(a.output))
        if not os.path.isdir(out_dir):
            raise UserError(f"The output folder {out_dir} does not exist.")
        (_render if a.cmd == "render" else _vectorize)(a)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
