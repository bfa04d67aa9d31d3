"""B-LoRA figures (issue 6), not a test.

    python -m bench.blora params            # trainable parameters on sdxl-arch (meta device, no memory)
    python -m bench.blora converge [--steps N --lr X --rank R]   # tiny family, CPU: loss curve of one image
    python -m bench.blora speed              # sdxl-arch at 1024 px on CUDA: s/step and peak memory

Prints one JSON line per configuration.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch


def trainable_params(unet, rank: int) -> int:
    """LoRA parameters B-LoRA adds: rank * (in + out) for every targeted projection."""
    import re

    from core.blora import TARGET_MODULES

    total = 0
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and re.fullmatch(TARGET_MODULES, name):
            total += rank * (m.in_features + m.out_features)
    return total


def cmd_params(a) -> None:
    from core.tiny import sdxl_architecture

    unet = sdxl_architecture(device="meta", dtype=torch.float16).unet  # SDXL's shapes, no memory
    for rank in (4, 8, 16, 64):
        n = trainable_params(unet, rank)
        print(json.dumps({"model": "sdxl-arch", "rank": rank, "trainable_params": n,
                          "fp32_MB": round(n * 4 / 1e6, 1),
                          "unet_params": sum(p.numel() for p in unet.parameters())}))


def test_image(seed: int = 0, size: int = 64):
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    a = np.stack([200 * xx + 30, 60 + 120 * yy, 180 - 150 * xx * yy], -1)
    a[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (240, 220, 40)  # a "subject"
    return Image.fromarray(np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8))


def cmd_converge(a) -> None:
    from core import blora
    from core.engine import Engine
    from core.events import Result
    from core.events import TrainStep
    from core.train import TrainSettings

    torch.set_num_threads(a.threads)
    engine = Engine("tiny", data_dir=tempfile.mkdtemp(prefix="blora-bench-"))
    engine.load()
    for lr in a.lr:
        for rank in a.rank:
            cfg = TrainSettings(steps=a.steps, learning_rate=lr, seed=0, sample_steps=3)
            losses, res = [], None
            t0 = time.monotonic()
            for ev in blora.train_blora(engine, [test_image()], cfg, rank=rank, sample_prompts=[]):
                if isinstance(ev, TrainStep):
                    losses.append(ev.loss)
                elif isinstance(ev, Result):
                    res = ev
            info = res.info["adapters"][0]
            k = max(1, len(losses) // 5)
            windows = [round(float(np.mean(losses[i:i + k])), 4) for i in range(0, len(losses), k)]
            print(json.dumps({"model": "tiny", "steps": a.steps, "lr": lr, "rank": rank,
                              "eval_loss_before": round(info["loss_before"], 4),
                              "eval_loss_after": round(info["loss_after"], 4),
                              "train_loss_windows": windows, "trainable_params": info["trainable_params"],
                              "s_per_step": round((time.monotonic() - t0) / a.steps, 4)}), flush=True)


def cmd_speed(a) -> None:
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    from core import blora
    from core.engine import Engine
    from core.events import TrainStep
    from core.train import TrainSettings

    engine = Engine("sdxl-arch", data_dir=tempfile.mkdtemp(prefix="blora-bench-"))
    engine.load()
    for gc in (True, False):
        torch.cuda.reset_peak_memory_stats()
        cfg = TrainSettings(steps=a.steps, learning_rate=5e-5, gradient_checkpointing=gc, sample_steps=2)
        secs = []
        for ev in blora.train_blora(engine, [test_image(size=1024)], cfg, rank=64, sample_prompts=[]):
            if isinstance(ev, TrainStep):
                secs.append(ev.seconds)
        print(json.dumps({"model": "sdxl-arch", "px": 1024, "rank": 64, "gradient_checkpointing": gc,
                          "s_per_step": round(float(np.median(secs[2:] or secs)), 3),
                          "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)}), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.blora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["params", "converge", "speed"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, nargs="+", default=[5e-5, 1e-3])
    p.add_argument("--rank", type=int, nargs="+", default=[64])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    {"params": cmd_params, "converge": cmd_converge, "speed": cmd_speed}[a.what](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
