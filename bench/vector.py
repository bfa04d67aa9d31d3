"""Benchmark for core/vector (not a test): rasterizer speed and vectorization quality.

    python -m bench.vector                 # both parts
    python -m bench.vector --part raster   # forward+backward timings only
    python -m bench.vector --part vectorize --size 128 --steps 150

1. Rasterizer forward+backward time on random scenes of closed 4-segment cubic paths:
   (64 paths, 256 px), (128, 512), (256, 600). Each path is a random blob: a centre uniform
   on the canvas, 12 control points at radius r in [0.05, 0.25] x size with 30 % jitter, a
   random RGB fill with alpha 0.5-1 (the icon-like scenes LIVE/VectorFusion optimise). CPU with
   --threads (default 2), and CUDA when available. Reference (the issue): diffvg's CPU build,
   2x2 samples: 0.83 s, 6.5 s, 16.1 s; goal <= half of that on CPU, <= 20 ms for 256@600 on an H100.
4. (--part sds) VectorFusion's SDS loop per iteration and per run, for 64/128/256 paths, on
   the --model family (tiny on CPU; sdxl-arch on a GPU; --sds-input 512 for the paper's sizes).
5. (--part split) Where one SDS iteration's time goes (core.pacing.PhaseTimer: rasterizer,
   augmentation, VAE encoder forward, UNet, backward, optimizer, previews), and a short run with a
   frame at every step against the same run with frames paced to 10% of its time (the app's
   setting), side by side in one run.
3. (--part parity) PSNR of our rasterizer against cairosvg at 256 px over the committed icons, or
   over a whole Iconify JSON set (--iconify-json, e.g. icons.json of the npm package
   @iconify-json/flat-color-icons fetched with `npm pack`).
2. Vectorization of the committed icons (assets/icons, MIT) rendered by cairosvg: vtracer's
   own output (default settings) against our vtracer-init + refinement at vtracer's path count
   or fewer, and LIVE from scratch; mean PSNR and mean path count side by side.
"""
from __future__ import annotations

import os

# before torch starts OpenMP: idle threads sleep instead of spinning (issue 19: on a loaded CPU
# spinning threads made the rasterizer 4x slower and erratic); reported with the thread count
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import glob
import math
import time

import numpy as np
import torch

from core.vector.rasterizer import render
from core.vector.scene import Scene, Shape

SCENES = [(64, 256, 0.83), (128, 512, 6.5), (256, 600, 16.1)]


def random_scene(n_paths: int, size: int, device, seed: int = 0) -> Scene:
    g = torch.Generator().manual_seed(seed)
    shapes = []
    for _ in range(n_paths):
        c = torch.rand(2, generator=g) * size
        r = (0.05 + 0.2 * torch.rand(1, generator=g)) * size
        ang = torch.arange(12) * (2 * math.pi / 12)
        rad = r * (1 + 0.3 * (torch.rand(12, generator=g) * 2 - 1))
        pts = c + torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], 1)
        fill = torch.cat([torch.rand(3, generator=g), 0.5 + 0.5 * torch.rand(1, generator=g)])
        shapes.append(Shape(pts.to(device), [(4, True)], fill=fill.to(device)))
    return Scene(size, size, shapes)


def time_scene(n, size, device, repeats=3):
    scene = random_scene(n, size, device)
    params = scene.parameters()
    for p in params:
        p.requires_grad_(True)
    target = torch.rand(3, size, size, device=device)

    def once():
        img = render(scene, size, size)
        loss = ((img - target) ** 2).mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    once()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return min(times), peak


def peak_rss_mb() -> float:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # no resource module off Unix
        return float("nan")


def thread_settings() -> str:
    """The CPU threading this run uses: torch's thread count and OpenMP's wait policy."""
    return (f"CPU threads {torch.get_num_threads()} (of {os.cpu_count()} cores), "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (ACTIVE: spinning)')}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def bench_raster(threads: int):
    torch.set_num_threads(threads)
    print(f"== rasterizer forward+backward (torch {torch.__version__}, {thread_settings()})")
    print(f"{'device':6s} {'paths':>5s} {'px':>4s} {'time':>9s} {'diffvg CPU':>10s} {'goal':>7s}  peak")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        for n, size, ref in SCENES:
            t, peak = time_scene(n, size, dev)
            goal = ref / 2 if dev.type == "cpu" else (0.020 if n == 256 else float("nan"))
            mem = f"{peak:.0f} MB (CUDA)" if dev.type == "cuda" else f"{peak_rss_mb():.0f} MB RSS so far"
            print(f"{dev.type:6s} {n:5d} {size:4d} {t * 1000:8.1f}ms {ref * 1000:9.0f}ms "
                  f"{goal * 1000:6.0f}ms  {mem}", flush=True)


def bench_vectorize(size: int, steps: int, live_steps: int, live_paths: int, icons: list[str]):
    import cairosvg
    from core.vector.live import psnr
    from core.vector.svg_io import parse_svg
    from core.vector.vectorize import image_tensor, run, vectorize, vtracer_svg
    print(f"\n== vectorization at {size} px (icons rendered by cairosvg on white; {thread_settings()})")
    print(f"{'icon':14s} | {'vtracer':>14s} | {'vtracer+refine':>19s} | {'LIVE':>19s} | "
          f"{'vtracer fine':>14s}")
    rows = []
    for path in icons:
        png = cairosvg.svg2png(url=path, output_width=size, output_height=size,
                               background_color="white")
        target, _ = image_tensor(png, size)
        vt = parse_svg(vtracer_svg(target))
        vt_psnr = psnr(render(vt, size, size), target)
        fine = parse_svg(vtracer_svg(target, filter_speckle=1, color_precision=8, layer_difference=8))
        fine_psnr = psnr(render(fine, size, size), target)
        t = time.perf_counter()
        ours = run(vectorize(png, num_paths=len(vt.shapes), init="vtracer", steps=steps, size=size))
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        lv = run(vectorize(png, num_paths=live_paths, init="live", steps=live_steps, size=size))
        t_live = time.perf_counter() - t
        rows.append((len(vt.shapes), vt_psnr, ours.info["paths"], ours.info["psnr"],
                     lv.info["paths"], lv.info["psnr"], len(fine.shapes), fine_psnr))
        print(f"{os.path.basename(path)[:-4]:14s} | {len(vt.shapes):3d}p {vt_psnr:6.2f}dB | "
              f"{ours.info['paths']:3d}p {ours.info['psnr']:6.2f}dB {t_ours:4.1f}s | "
              f"{lv.info['paths']:3d}p {lv.info['psnr']:6.2f}dB {t_live:4.1f}s | "
              f"{len(fine.shapes):3d}p {fine_psnr:6.2f}dB", flush=True)
    r = np.array(rows, dtype=float)
    print(f"{'mean':14s} | {r[:, 0].mean():5.1f}p {r[:, 1].mean():6.2f}dB | {r[:, 2].mean():5.1f}p "
          f"{r[:, 3].mean():6.2f}dB       | {r[:, 4].mean():5.1f}p {r[:, 5].mean():6.2f}dB       | "
          f"{r[:, 6].mean():5.1f}p {r[:, 7].mean():6.2f}dB")
    print("(vtracer: its default settings; vtracer fine: filter_speckle 1, color_precision 8, "
          "layer_difference 8)")
    print(f"vtracer+refine minus vtracer: {r[:, 3].mean() - r[:, 1].mean():+.2f} dB at "
          f"{r[:, 2].mean():.1f} vs {r[:, 0].mean():.1f} paths (goal: >= +2 dB, <= paths)")


def bench_parity(size: int, icons: list[str], iconify_json: str | None):
    import io
    import json

    import cairosvg
    from PIL import Image

    from core.vector.svg_io import parse_svg
    if iconify_json:
        data = json.load(open(iconify_json))
        w, h = data.get("width", 16), data.get("height", 16)
        items = [(k, f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                     f'viewBox="0 0 {w} {h}">{v["body"]}</svg>') for k, v in data["icons"].items()]
    else:
        items = [(os.path.basename(p)[:-4], open(p).read()) for p in icons]
    scores = []
    for name, text in items:
        png = cairosvg.svg2png(bytestring=text.encode(), output_width=size, output_height=size,
                               background_color="white")
        ref = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255
        with torch.no_grad():
            ours = render(parse_svg(text), size, size).permute(1, 2, 0).double().numpy()
        mse = float(np.mean((ours - ref) ** 2))
        scores.append((10 * math.log10(1 / max(mse, 1e-12)), name))
    scores.sort()
    v = np.array([s for s, _ in scores])
    print(f"\n== parity with cairosvg at {size} px over {len(v)} icons: min {v.min():.2f} dB, "
          f"median {np.median(v):.2f} dB, mean {v.mean():.2f} dB, below 40 dB: {(v < 40).sum()}")
    for s, name in scores[:8]:
        print(f"   lowest: {name:28s} {s:6.2f} dB")


def sds_setup(model: str, input_size: int | None, threads: int):
    """(loaded engine, a job context outside the engine's queue, render size, input size)."""
    import queue
    import tempfile

    from core import vectorfusion as vf
    from core.engine import Engine
    from core.jobs import Job, JobContext

    torch.set_num_threads(threads)
    engine = Engine(model, data_dir=tempfile.mkdtemp())
    engine.load()
    R, S = vf.sizes(engine, input_size)
    return engine, JobContext(Job("bench", "bench"), queue.Queue()), R, S


def bench_sds(model: str, paths: list[int], steps: int, input_size: int | None, threads: int):
    """VectorFusion's SDS loop (core/vectorfusion.sds_loop, the real one): seconds per iteration
    (render at 600/512 of the input size, CLIPDraw augmentation, fp32 VAE encode with grad, UNet
    in the engine's dtype under CFG, backward to the paths, Adam) and the whole loop."""
    import tempfile

    from core import vectorfusion as vf

    engine, ctx, R, S = sds_setup(model, input_size, threads)
    print(f"\n== SDS iterations: {model} on {engine.device} ({str(engine.dtype).replace('torch.', '')} UNet, "
          f"fp32 encoder), render {R} px, encode {S} px, {steps} iterations per row; {thread_settings()}")
    print(f"{'paths':>5s} {'s/iter':>8s} {'loop':>8s} {'1000 iters (est.)':>18s}  peak")
    for n in paths:
        o = vf.VFOptions(num_paths=n, steps=steps, preview_every=10**9, reinit_every=50, input_size=S, seed=0)
        scene = vf.initial_scene("iconographic", n, R, np.random.default_rng(0))
        files = vf.SvgFiles(tempfile.mkdtemp(), "bench", png_size=R)
        # warm-up (first-call costs), then the timed loop
        vf.sds_loop(engine, ctx, "a lighthouse", scene, vf.VFOptions(**{**o.__dict__, "steps": 2}), files)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        vf.sds_loop(engine, ctx, "a lighthouse", scene, o, files)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        peak = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB (CUDA)" if engine.device.type == "cuda"
                else f"{peak_rss_mb():.0f} MB RSS so far")
        print(f"{n:5d} {dt / steps:7.3f}s {dt:7.1f}s {1000 * dt / steps / 60:15.1f} min  {peak}", flush=True)


def bench_split(model: str, n_paths: int, steps: int, input_size: int | None, threads: int):
    """The SDS iteration's split by phase, with frames at every step and paced (share 0.1)."""
    import tempfile

    from core import vectorfusion as vf
    from core.pacing import PhaseTimer

    engine, ctx, R, S = sds_setup(model, input_size, threads)
    print(f"\n== SDS split: {model} on {engine.device}, {n_paths} paths, render {R} px, encode {S} px, "
          f"{steps} iterations a frame at every step vs paced to 10%; {thread_settings()}")
    rows = {}
    for label, share in (("every step", None), ("paced 10%", 0.1)):
        o = vf.VFOptions(num_paths=n_paths, steps=steps, preview_every=1, preview_share=share, reinit_every=50,
                         input_size=S, seed=0)
        scene = vf.initial_scene("iconographic", n_paths, R, np.random.default_rng(0))
        files = vf.SvgFiles(tempfile.mkdtemp(), "bench", png_size=R)
        vf.sds_loop(engine, ctx, "a lighthouse", scene.clone(),
                    vf.VFOptions(**{**o.__dict__, "steps": 2}), files)          # warm-up
        timer = PhaseTimer(engine.device)
        t = time.perf_counter()
        vf.sds_loop(engine, ctx, "a lighthouse", scene, o, files, phase=timer)
        rows[label] = (time.perf_counter() - t, timer)
    names = sorted({k for _, tm in rows.values() for k in tm.seconds}, key=lambda k: -rows["every step"][1].seconds[k])
    print(f"{'phase':46s} " + " ".join(f"{lb:>20s}" for lb in rows))
    for k in names:
        print(f"{k:46s} " + " ".join(f"{1000 * tm.seconds[k] / steps:9.1f} ms {100 * tm.split().get(k, 0):6.1f}%  "
                                     for _, tm in rows.values()))
    (a, _), (b, _) = rows.values()
    print(f"{'per iteration (wall)':46s} {1000 * a / steps:9.1f} ms {'':10s} {1000 * b / steps:9.1f} ms"
          f"   ratio {a / b:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["all", "raster", "vectorize", "parity", "sds", "split"], default="all")
    ap.add_argument("--model", default="tiny", help="--part sds: tiny, tiny-sd, sdxl-arch (GPU), sd15, sdxl")
    ap.add_argument("--sds-steps", type=int, default=10, help="--part sds: timed iterations per row")
    ap.add_argument("--sds-input", type=int, default=None,
                    help="--part sds: model input size (default the model's resolution; the paper: 512)")
    ap.add_argument("--sds-paths", default="64,128,256")
    ap.add_argument("--iconify-json", default=None, help="parity over a whole Iconify icon set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150, help="refinement steps after vtracer")
    ap.add_argument("--live-steps", type=int, default=400)
    ap.add_argument("--live-paths", type=int, default=16)
    ap.add_argument("--icons", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "..", "assets", "icons", "*.svg"))
    a = ap.parse_args()
    if a.part in ("all", "raster"):
        bench_raster(a.threads)
    if a.part in ("all", "parity"):
        torch.set_num_threads(1)
        bench_parity(256, sorted(glob.glob(a.icons)), a.iconify_json)
    if a.part == "sds":
        bench_sds(a.model, [int(v) for v in a.sds_paths.split(",")], a.sds_steps, a.sds_input, a.threads)
        return
    if a.part == "split":
        bench_split(a.model, int(a.sds_paths.split(",")[0]), a.sds_steps, a.sds_input, a.threads)
        return
    if a.part in ("all", "vectorize"):
        torch.set_num_threads(1)   # small images: one thread avoids OpenMP wake-up overheads
        bench_vectorize(a.size, a.steps, a.live_steps, a.live_paths, sorted(glob.glob(a.icons)))


if __name__ == "__main__":
    main()
