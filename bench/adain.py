"""AdaIN frames per second (not a test).

    python -m bench.adain                 # CPU (NCHW, channels_last), CUDA fp16 channels_last
    python -m bench.adain --sizes 256 512 1024 --iters 50 --devices cuda
    python -m bench.adain --train-tiny    # the tab's tiny decoder-training preset, timed

Batch 1, the paper's full-width network (random weights: speed does not depend on them).
"frame" = content encoder + AdaIN + decoder with the style's features cached (the webcam
case); "+style" also encodes the style image every time. The paper (Huang & Belongie 2017,
Pascal Titan X) reports 56 FPS at 256x256 and 15 FPS at 512x512.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from core import adain

PAPER_FPS = {256: 56.0, 512: 15.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, iters: int, warmup: int, min_seconds: float = 0.0) -> float:
    """Seconds per call: median-free mean over `iters` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < iters or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n


def bench_device(device: torch.device, dtype: torch.dtype, sizes, iters, warmup, width,
                 channels_last: bool) -> list[dict]:
    model = adain.AdaINNet(width).eval().to(device, dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for size in sizes:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        c = torch.rand(1, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=fmt)
        s = torch.rand(1, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=fmt)
        with torch.inference_mode():
            fs = model.encode(s)

            def frame(c=c, fs=fs):
                return model.decode(adain.adain(model.encode(c), fs))

            def with_style(c=c, s=s):
                return model.decode(adain.adain(model.encode(c), model.encode(s)))

            n = iters if device.type == "cuda" else max(2, iters // (1 if size <= 256 else 4))
            t_frame = measure(frame, device, n, warmup, 1.0 if device.type == "cuda" else 0)
            t_full = measure(with_style, device, n, warmup, 1.0 if device.type == "cuda" else 0)
        row = {"device": str(device), "dtype": str(dtype).replace("torch.", ""),
               "channels_last": channels_last, "size": size, "frame_fps": 1 / t_frame,
               "frame_ms": 1000 * t_frame, "with_style_fps": 1 / t_full}
        if size in PAPER_FPS:
            row["x_paper"] = row["frame_fps"] / PAPER_FPS[size]
        rows.append(row)
        print(f"{row['device']:>6} {row['dtype']:>8} {'CL' if channels_last else '  '} "
              f"{size:>5}px  frame {row['frame_fps']:8.2f} FPS ({row['frame_ms']:8.1f} ms)  "
              f"+style {row['with_style_fps']:8.2f} FPS  "
              + (f"paper {PAPER_FPS[size]:.0f} FPS -> {row['x_paper']:.2f}x" if size in PAPER_FPS
                 else ""), flush=True)
    return rows


def train_tiny(steps: int | None = None) -> dict:
    """Decoder training with the tab's tiny-mode preset (core.adain_runs.TINY_PRESET) on our own
    example images, as the tab runs it offline: seconds in all and per step. Issue 16's goal is
    under 60 s on two CPU cores."""
    import dataclasses
    import os
    import tempfile

    from core import adain_runs

    examples = Path(__file__).resolve().parents[1] / "assets" / "examples"
    settings = adain_runs.TINY_PRESET if steps is None else dataclasses.replace(adain_runs.TINY_PRESET, steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        content = adain_runs.stage_images([str(examples / n) for n in ("content-house.png", "content-cat.png",
                                                                        "subject-mug-1.png")], run / "content",
                                          what="content")
        style = adain_runs.stage_images([str(examples / n) for n in ("style-waves.png", "style-mosaic.png",
                                                                      "style-ink.png")], run / "style", what="style")
        cfg = adain.DecoderTrainConfig(content_dir=str(content), style_dir=str(style), out_dir=str(run),
                                       steps=settings.steps, batch_size=settings.batch_size, resize=settings.resize,
                                       crop=settings.crop, sample_every=settings.sample_every,
                                       save_every=settings.save_every, tiny=True, device="cpu")
        t0 = time.perf_counter()
        for _ in adain.train_decoder(cfg):
            pass
        seconds = time.perf_counter() - t0
    return {"steps": settings.steps, "batch": settings.batch_size, "crop": settings.crop, "seconds": seconds,
            "s_per_step": seconds / settings.steps, "threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--width", type=float, default=1.0, help="1.0 = the paper's network")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--train-tiny", action="store_true",
                    help="time the tab's tiny-mode decoder training preset instead (goal: < 60 s on 2 cores)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_tiny:
        r = train_tiny()
        print(f"AdaIN tiny decoder training, the tab's preset ({r['steps']} steps, batch {r['batch']}, crop "
              f"{r['crop']}): {r['seconds']:.1f} s in all, {r['s_per_step'] * 1000:.0f} ms/step; "
              f"{r['threads']} CPU threads, OMP_WAIT_POLICY={r['OMP_WAIT_POLICY']}; goal < 60 s")
        return 0
    print(f"AdaIN benchmark: batch 1, encoder (VGG-19 to relu4_1) + AdaIN + decoder, width "
          f"{args.width}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads")
    print("paper (Pascal Titan X): 56 FPS at 256 px, 15 FPS at 512 px")
    rows = []
    for name in args.devices:
        if name == "cpu":
            for cl in (False, True):
                rows += bench_device(torch.device("cpu"), torch.float32, args.sizes, args.iters,
                                     min(args.warmup, 1), args.width, channels_last=cl)
        elif name == "cuda":
            if not torch.cuda.is_available():
                print("  cuda: not available here, skipped")
                continue
            torch.backends.cudnn.benchmark = True
            print(f"  cuda: {torch.cuda.get_device_name()}")
            rows += bench_device(torch.device("cuda"), torch.float16, args.sizes, args.iters,
                                 args.warmup, args.width, channels_last=True)
            rows += bench_device(torch.device("cuda"), torch.float32, args.sizes, args.iters,
                                 args.warmup, args.width, channels_last=False)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
