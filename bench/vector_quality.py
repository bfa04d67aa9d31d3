"""Image-to-SVG quality on 24 icons drawn here (flat shapes, no third-party images).

    python -m bench.vector_quality                    # all 24 icons, 256 px, budget 16
    python -m bench.vector_quality --icons 6 --paths 8 --live

Per icon and in total: vtracer alone against our default method (vtracer's tracing, the path
budget filled, then refined by our rasterizer) at the same path count: PSNR (dB, at the icon's
own 256 px, the SVG rendered by our rasterizer), paths and seconds. "vtracer at the same path
count" is the better of vtracer's coarser retries and its fine tracing with the smallest paths
dropped, at no more paths than ours. With --live, the LIVE presets ("fast", "paper") too.
Each icon is drawn at 4x and box-filtered down, like an anti-aliased icon export.

Measured here (2 CPU threads, OMP_WAIT_POLICY=PASSIVE, a machine shared with other jobs at load
average 4-6; 2026-12-01): budget 16: vtracer 4.8 paths 32.39 dB, ours 5.5 paths 44.72 dB (+12.3
dB, better on 24 of 24; ours keeps what vtracer's tracing at the working size has, which can be
more than its tracing at 256 px); wall time 5.7 s mean, 4.7 s median, 12 s at most, CPU time
2.75 s mean, 4.25 s at most. --tight (half of vtracer's paths): vtracer 2.9 paths 19.97 dB, ours
3.0 paths 31.92 dB (+12.0 dB, better on 24 of 24), 3.0 s mean, CPU 1.76 s mean. At load 2.9,
icons 0-3 with `--live fast`: ours 48.13 dB in 3.0 s mean (4.0 s at most), LIVE "fast" 39.72 dB
in 9.2 s, vtracer 33.67 dB. LIVE "paper" (500 steps per stage, the UDF weight recomputed every
step) ran past 10 minutes on the first icon at 256 px and was stopped.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256
SS = 4                       # supersampling of the drawing

PALETTE = [(230, 57, 70), (29, 53, 87), (69, 123, 157), (168, 218, 220), (244, 162, 97),
           (42, 157, 143), (233, 196, 106), (38, 70, 83), (131, 56, 236), (255, 190, 11),
           (58, 134, 255), (251, 86, 7), (6, 214, 160), (17, 138, 178), (239, 71, 111)]


def _c(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def _poly(cx, cy, r, n, rot=0.0, inner=None):
    """A regular polygon (or a star when `inner` is a radius ratio), in 256-px units."""
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        rr = r * (inner if inner and i % 2 else 1.0)
        a = rot + 2 * math.pi * i / k - math.pi / 2
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


class _Pen:
    """ImageDraw at SS x, taking 256-px coordinates."""

    def __init__(self, bg=(255, 255, 255)):
        self.im = Image.new("RGB", (SIZE * SS, SIZE * SS), bg)
        self.d = ImageDraw.Draw(self.im)

    def _s(self, pts):
        return [(x * SS, y * SS) for x, y in pts]

    def ellipse(self, box, fill):
        self.d.ellipse([v * SS for v in box], fill=fill)

    def rect(self, box, fill, radius=0):
        self.d.rounded_rectangle([v * SS for v in box], radius=radius * SS, fill=fill)

    def poly(self, pts, fill):
        self.d.polygon(self._s(pts), fill=fill)

    def line(self, pts, fill, width):
        self.d.line(self._s(pts), fill=fill, width=int(width * SS), joint="curve")

    def arc(self, box, start, end, fill, width):
        self.d.arc([v * SS for v in box], start, end, fill=fill, width=int(width * SS))

    def pieslice(self, box, start, end, fill):
        self.d.pieslice([v * SS for v in box], start, end, fill=fill)

    def done(self) -> Image.Image:
        return self.im.resize((SIZE, SIZE), Image.Resampling.BOX)


def _leaf(p, cx, cy, length, width, angle, fill, vein):
    def half(side):
        pts = []
        for k in range(25):
            t = k / 24
            u, w = -length / 2 + length * t, side * width * math.sin(math.pi * t) ** 0.8
            ca, sa = math.cos(angle), math.sin(angle)
            pts.append((cx + u * ca - w * sa, cy + u * sa + w * ca))
        return pts
    p.poly(half(1) + half(-1)[::-1], fill)
    a, b = half(0)[0], half(0)[-1]
    p.line([a, b], vein, 3)


def icon(k: int) -> Image.Image:
    """Procedural icon number `k` (0-23): flat colours, 1-12 shapes, some overlapping."""
    p = _Pen()
    c = lambda i: _c(i + 3 * k)  # noqa: E731  (each icon its own slice of the palette)
    kind = k % 24
    if kind == 0:                                   # leaf in a circle
        p.ellipse((24, 24, 232, 232), (250, 220, 120))
        _leaf(p, 128, 128, 150, 45, -math.pi / 4, (60, 150, 70), (30, 90, 40))
    elif kind == 1:                                 # house
        p.rect((60, 120, 196, 220), c(0))
        p.poly([(40, 128), (128, 40), (216, 128)], c(1))
        p.rect((110, 160, 146, 220), c(2))
        p.rect((70, 140, 98, 166), c(3))
        p.rect((158, 140, 186, 166), c(3))
    elif kind == 2:                                 # five-pointed star on a disc
        p.ellipse((20, 20, 236, 236), c(0))
        p.poly(_poly(128, 134, 95, 5, inner=0.42), c(1))
    elif kind == 3:                                 # heart
        p.ellipse((40, 50, 134, 144), c(0))
        p.ellipse((122, 50, 216, 144), c(0))
        p.poly([(44, 112), (128, 220), (212, 112), (128, 90)], c(0))
    elif kind == 4:                                 # crescent moon and stars
        p.rect((16, 16, 240, 240), (30, 40, 80), radius=40)
        p.ellipse((50, 50, 190, 190), (250, 220, 120))
        p.ellipse((90, 30, 220, 160), (30, 40, 80))
        for x, y, r in [(190, 190, 14), (60, 200, 10), (200, 60, 9)]:
            p.poly(_poly(x, y, r, 4, inner=0.4), (250, 250, 250))
    elif kind == 5:                                 # target rings
        for i, r in enumerate([110, 85, 60, 35, 12]):
            p.ellipse((128 - r, 128 - r, 128 + r, 128 + r), c(i % 2) if i % 2 else (240, 240, 240) if i == 4 else c(2))
    elif kind == 6:                                 # check mark in a rounded square
        p.rect((28, 28, 228, 228), c(0), radius=36)
        p.line([(70, 132), (112, 176), (190, 86)], (255, 255, 255), 24)
    elif kind == 7:                                 # battery
        p.rect((30, 80, 206, 176), c(1), radius=14)
        p.rect((42, 92, 194, 164), (255, 255, 255), radius=8)
        p.rect((206, 108, 226, 148), c(1))
        for i in range(3):
            p.rect((52 + 46 * i, 100, 88 + 46 * i, 156), c(5))
    elif kind == 8:                                 # clock
        p.ellipse((24, 24, 232, 232), c(0))
        p.ellipse((44, 44, 212, 212), (250, 250, 250))
        p.line([(128, 128), (128, 66)], c(1), 10)
        p.line([(128, 128), (172, 150)], c(1), 8)
        p.ellipse((118, 118, 138, 138), c(2))
    elif kind == 9:                                 # pie chart
        p.pieslice((30, 30, 226, 226), 0, 130, c(0))
        p.pieslice((30, 30, 226, 226), 130, 250, c(1))
        p.pieslice((30, 30, 226, 226), 250, 360, c(2))
        p.pieslice((40, 40, 236, 236), 300, 340, c(3))
    elif kind == 10:                                # bar chart
        p.rect((30, 214, 226, 224), c(1))
        for i, h in enumerate([60, 110, 150, 90, 180]):
            p.rect((40 + 38 * i, 210 - h, 68 + 38 * i, 210), c(i + 2))
    elif kind == 11:                                # cloud with sun
        p.ellipse((120, 30, 220, 130), (255, 190, 11))
        for box in [(40, 110, 130, 200), (90, 80, 190, 180), (150, 110, 230, 190), (60, 140, 210, 200)]:
            p.ellipse(box, (200, 215, 230))
    elif kind == 12:                                # envelope
        p.rect((30, 60, 226, 196), c(0), radius=10)
        p.poly([(30, 66), (128, 140), (226, 66)], c(1))
        p.line([(34, 192), (104, 124)], c(1), 6)
        p.line([(222, 192), (152, 124)], c(1), 6)
    elif kind == 13:                                # magnifier
        p.ellipse((40, 40, 160, 160), c(0))
        p.ellipse((60, 60, 140, 140), (230, 245, 255))
        p.line([(145, 145), (215, 215)], c(1), 26)
    elif kind == 14:                                # traffic light
        p.rect((84, 20, 172, 236), (50, 50, 60), radius=24)
        for i, col in enumerate([(230, 57, 70), (255, 190, 11), (6, 214, 160)]):
            p.ellipse((104, 34 + 66 * i, 152, 82 + 66 * i), col)
    elif kind == 15:                                # gear-ish: 8-point star, hole
        p.poly(_poly(128, 128, 110, 8, inner=0.78), c(0))
        p.ellipse((78, 78, 178, 178), c(1))
        p.ellipse((108, 108, 148, 148), (255, 255, 255))
    elif kind == 16:                                # three overlapping translucent-looking discs
        p.ellipse((40, 40, 160, 160), (239, 71, 111))
        p.ellipse((96, 40, 216, 160), (58, 134, 255))
        p.ellipse((68, 96, 188, 216), (6, 214, 160))
        p.ellipse((96, 96, 160, 160), (40, 40, 40))
    elif kind == 17:                                # tree
        p.rect((116, 170, 140, 232), (120, 80, 40))
        p.poly([(128, 24), (60, 110), (196, 110)], (42, 157, 143))
        p.poly([(128, 64), (44, 170), (212, 170)], (38, 120, 100))
        p.ellipse((100, 80, 114, 94), (230, 57, 70))
        p.ellipse((150, 130, 164, 144), (255, 190, 11))
    elif kind == 18:                                # flag on a pole
        p.rect((50, 30, 62, 230), (60, 60, 60))
        p.rect((62, 40, 210, 130), c(0))
        p.rect((62, 70, 210, 100), c(1))
        p.poly(_poly(100, 85, 12, 5, inner=0.45), (255, 255, 255))
    elif kind == 19:                                # music note
        p.ellipse((50, 160, 110, 210), c(1))
        p.ellipse((146, 140, 206, 190), c(1))
        p.rect((96, 50, 110, 186), c(1))
        p.rect((192, 30, 206, 166), c(1))
        p.poly([(96, 50), (206, 30), (206, 62), (96, 82)], c(1))
    elif kind == 20:                                # puzzle of four squares
        for i in range(4):
            x, y = 30 + 100 * (i % 2), 30 + 100 * (i // 2)
            p.rect((x, y, x + 94, y + 94), c(i), radius=12)
        p.ellipse((108, 108, 148, 148), (255, 255, 255))
    elif kind == 21:                                # rocket
        p.poly([(128, 20), (168, 90), (168, 180), (88, 180), (88, 90)], (220, 220, 230))
        p.poly([(88, 140), (50, 200), (88, 180)], c(0))
        p.poly([(168, 140), (206, 200), (168, 180)], c(0))
        p.ellipse((108, 80, 148, 120), c(2))
        p.poly([(100, 180), (128, 236), (156, 180)], (251, 86, 7))
    elif kind == 22:                                # chat bubbles
        p.rect((24, 40, 160, 130), c(0), radius=24)
        p.poly([(50, 126), (40, 160), (90, 126)], c(0))
        p.rect((96, 120, 232, 210), c(1), radius=24)
        p.poly([(200, 206), (214, 236), (170, 206)], c(1))
        for i in range(3):
            p.ellipse((52 + 30 * i, 76, 68 + 30 * i, 92), (255, 255, 255))
    else:                                           # umbrella
        p.pieslice((24, 40, 232, 232), 180, 360, c(0))
        for i in range(3):
            p.pieslice((58 + 48 * i - 24, 120, 58 + 48 * i + 26, 152), 180, 360, (255, 255, 255))
        p.line([(128, 136), (128, 210)], (60, 60, 60), 8)
        p.arc((128, 190, 160, 226), 0, 180, (60, 60, 60), 8)
    return p.done()


ICONS = 24
FINER = dict(filter_speckle=2, color_precision=8, layer_difference=8)   # more paths than vtracer's default


def psnr_np(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def png_bytes(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def vtracer_at(target, paths: int):
    """vtracer alone at no more than `paths` paths, the best it can do: each of its settings
    (a finer one, the default, two coarser) with the smallest paths (control-polygon area)
    dropped to fit;
    returns (scene, PSNR, seconds of the best setting's tracing)."""
    from core.vector.live import psnr
    from core.vector.rasterizer import render
    from core.vector.scene import shape_area
    from core.vector.svg_io import parse_svg
    from core.vector.vectorize import COARSER, vtracer_svg
    H, W = target.shape[1:]
    best = None
    for opts in [FINER, *COARSER]:
        t = time.perf_counter()
        scene = parse_svg(vtracer_svg(target, **opts))
        if len(scene.shapes) > paths:
            keep = set(np.argsort([-shape_area(s) for s in scene.shapes])[:paths].tolist())
            scene.shapes = [s for i, s in enumerate(scene.shapes) if i in keep]
        dt = time.perf_counter() - t
        p = psnr(render(scene, W, H), target)
        if best is None or p > best[1]:
            best = (scene, p, dt)
    return best


def measure(img: Image.Image, budget: int, size: int, steps: int | None):
    """(ours, vtracer) rows for one icon at one budget: (paths, PSNR at 256 px, seconds), ours
    with the CPU seconds too (all threads: on a loaded machine, what the run itself cost)."""
    import torch

    from core.vector.live import psnr
    from core.vector.rasterizer import render
    from core.vector.svg_io import parse_svg
    from core.vector.vectorize import resized, run, vectorize
    target = resized(img, SIZE)
    t, cpu = time.perf_counter(), time.process_time()
    res = run(vectorize(png_bytes(img), num_paths=budget, steps=steps, size=size))
    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    with torch.no_grad():
        ours = psnr(render(parse_svg(res.info["svg"]), SIZE, SIZE), target)
        vt, vt_psnr, vt_dt = vtracer_at(target, res.info["paths"])
    return (res.info["paths"], ours, dt, cpu), (len(vt.shapes), vt_psnr, vt_dt)


def measure_live(img: Image.Image, paths: int, preset: str):
    """LIVE from scratch with `paths` paths, the `preset` settings of core.vector.live
    (the working size capped at the icon's 256 px): (paths, PSNR at 256 px, seconds)."""
    import torch

    from core.vector.live import LiveSettings, psnr
    from core.vector.rasterizer import render
    from core.vector.svg_io import parse_svg
    from core.vector.vectorize import resized, run, vectorize
    st = getattr(LiveSettings, preset)()
    size = min(st.size or SIZE, SIZE)
    t = time.perf_counter()
    res = run(vectorize(png_bytes(img), num_paths=paths, init="live", steps=st.total_steps(paths), size=size,
                        schedule=st.path_schedule(paths), uniform_weight=st.uniform_weight,
                        xing_weight=st.xing_weight, steps_per_stage=st.steps_per_stage,
                        point_schedule=st.point_schedule, udf_every=st.udf_every, **st.geometry(size)))
    dt = time.perf_counter() - t
    with torch.no_grad():
        p = psnr(render(parse_svg(res.info["svg"]), SIZE, SIZE), resized(img, SIZE))
    return res.info["paths"], p, dt


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--icons", type=int, default=ICONS, help="how many of the 24 icons (from the first)")
    ap.add_argument("--paths", type=int, default=16, help="the path budget (default: the CLI's 16)")
    ap.add_argument("--tight", action="store_true",
                    help="budget per icon: half the paths of vtracer's tracing (exercises the pruning)")
    ap.add_argument("--size", type=int, default=128, help="our working size (default: the CLI's 128)")
    ap.add_argument("--steps", type=int, default=None, help="refinement steps (default: the CLI's)")
    ap.add_argument("--live", default="", help="LIVE presets to add, e.g. fast,paper (slow: minutes an icon)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from bench.vector import thread_settings
    from core.vector.svg_io import parse_svg
    from core.vector.vectorize import DEFAULT_INIT, resized, vtracer_svg
    torch.set_num_threads(a.threads)
    presets = [p for p in a.live.split(",") if p]
    print(f"== image to SVG on {a.icons} procedural {SIZE} px icons: vtracer alone vs ours (default method "
          f"'{DEFAULT_INIT}', working size {a.size}), PSNR at {SIZE} px; {thread_settings()}")
    head = f"{'icon':>4s} {'budget':>6s} | {'vtracer':>20s} | {'ours':>20s} | {'gain':>6s}"
    for p in presets:
        head += f" | {'LIVE ' + p:>20s}"
    print(head)
    rows, live_rows = [], {p: [] for p in presets}
    for k in range(a.icons):
        img = icon(k)
        budget = a.paths
        if a.tight:
            budget = max(1, math.ceil(len(parse_svg(vtracer_svg(resized(img, a.size))).shapes) / 2))
        o, v = measure(img, budget, a.size, a.steps)
        rows.append((v, o))
        line = (f"{k:4d} {budget:6d} | {v[0]:3d}p {v[1]:6.2f}dB {v[2]:5.2f}s | {o[0]:3d}p {o[1]:6.2f}dB {o[2]:5.2f}s"
                f" | {o[1] - v[1]:+6.2f}")
        for p in presets:
            lv = measure_live(img, o[0], p)
            live_rows[p].append(lv)
            line += f" | {lv[0]:3d}p {lv[1]:6.2f}dB {lv[2]:5.1f}s"
        print(line, flush=True)
    v = np.array([r[0] for r in rows], dtype=float)
    o = np.array([r[1] for r in rows], dtype=float)
    wins = int((o[:, 1] > v[:, 1]).sum())
    line = (f"{'mean':>11s} | {v[:, 0].mean():4.1f}p {v[:, 1].mean():5.2f}dB {v[:, 2].mean():5.2f}s | "
            f"{o[:, 0].mean():4.1f}p {o[:, 1].mean():5.2f}dB {o[:, 2].mean():5.2f}s | "
            f"{(o[:, 1] - v[:, 1]).mean():+6.2f}")
    for p in presets:
        lv = np.array(live_rows[p], dtype=float)
        line += f" | {lv[:, 0].mean():4.1f}p {lv[:, 1].mean():5.2f}dB {lv[:, 2].mean():5.1f}s"
    print(line)
    print(f"ours beats vtracer at the same path count on {wins} of {len(rows)} icons; ours took "
          f"{o[:, 2].max():.2f} s at most, {np.median(o[:, 2]):.2f} s median (goal <= 5 s on 2 cores); "
          f"CPU time {o[:, 3].mean():.2f} s mean, {o[:, 3].max():.2f} s at most; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    for p in presets:
        lv = np.array(live_rows[p], dtype=float)
        print(f"LIVE {p}: beats vtracer on {int((lv[:, 1] > v[:, 1]).sum())} of {len(rows)} icons")


if __name__ == "__main__":
    main()
