"""Benchmark: a plain batch vs a Style-Aligned set of the same size, side by side in one run.

    python -m bench.style_aligned                       # CPU, tiny family
    python -m bench.style_aligned --model sdxl-arch --size 1024 --steps 50 --dtype fp16   # GPU

Prints time and peak memory of each, their ratios, and the same for a shared-score shift
(log 2). Not a test: machines are noisy, so compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from core.engine import Engine
from core.events import Result
from core.style_aligned import SharingOptions, style_aligned_set

PROMPTS = ["A guitar", "A hot air balloon", "A sailboat", "A mountain"]


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak(device) -> str:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    import resource
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS)"


def timed(device, events) -> tuple[float, str]:
    peak_reset(device)
    t0 = time.perf_counter()
    for ev in events:
        last = ev
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert isinstance(last, Result)
    return time.perf_counter() - t0, peak(device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    engine = Engine(args.model, device=args.device, dtype=args.dtype, data_dir="/tmp/bench-data")
    engine.load()
    size = args.size or engine.resolution
    kw = dict(seed=0, steps=args.steps, guidance=5.0, width=size, height=size)
    styled = [f"{p}, in minimal flat design illustration" for p in PROMPTS]
    runs = {
        "plain batch": lambda: engine.generate(styled, **kw),
        "style-aligned set": lambda: style_aligned_set(engine, PROMPTS, "in minimal flat design illustration", **kw),
        "set + shift log 2": lambda: style_aligned_set(engine, PROMPTS, "in minimal flat design illustration",
                                                       options=SharingOptions(shared_score_shift=math.log(2)), **kw),
    }
    timed(engine.device, runs["plain batch"]())  # warm-up
    print(f"model={args.model} device={engine.device} dtype={engine.dtype} size={size} steps={args.steps} "
          f"images={len(PROMPTS)} torch={torch.__version__}")
    results = {}
    for name, make in runs.items():
        best, mem = min(timed(engine.device, make()) for _ in range(args.repeats))
        results[name] = best
        print(f"{name:20s} {best:8.2f} s   peak {mem}")
    base = results["plain batch"]
    for name in list(runs)[1:]:
        print(f"ratio {name} / plain batch: {results[name] / base:.3f}")


if __name__ == "__main__":
    main()
