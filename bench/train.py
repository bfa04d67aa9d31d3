"""Training benchmark for the three recipes of the shared trainer, side by side in one run.

    python -m bench.train                                   # CPU, tiny family
    python -m bench.train --model sdxl-arch --steps 20      # a GPU: real SDXL shapes at 1024 px

Rows: DreamBooth-LoRA (with and without prior preservation, with and without gradient
checkpointing), B-LoRA (rank 64, the two up_blocks.0 attention blocks) and StyleDrop (the
feed-forward adapter, rank 4). For each: trainable parameters, seconds per optimizer step
(median of the steps after the first), and peak memory (CUDA: max allocated; CPU: the
process's max RSS so far, which only grows). Parameter counts on sdxl-arch are computed on
the meta device (no memory). Not a test: compare the rows of one run.
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def lora_params(unet, targets, rank: int) -> int:
    """rank * (in + out) for every Linear a peft target spec (suffix list or regex) selects."""
    total = 0
    for name, m in unet.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        hit = re.fullmatch(targets, name) if isinstance(targets, str) else \
            any(name == t or name.endswith("." + t) for t in targets)
        if hit:
            total += rank * (m.in_features + m.out_features)
    return total


def sdxl_arch_counts() -> dict[str, int]:
    from core import blora, styledrop
    from core.tiny import sdxl_architecture
    from core.train import AdapterSpec

    unet = sdxl_architecture(device="meta", dtype=torch.float16).unet
    return {"dreambooth": lora_params(unet, AdapterSpec().target_modules, 8),
            "b-lora": lora_params(unet, blora.TARGET_MODULES, 64),
            "styledrop": styledrop.param_count(unet, 4)}


def images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def peak(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    import resource
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def run_row(engine, name: str, recipe, cfg, trainer_cls) -> None:
    from core.events import Result
    from core.events import TrainStep

    trainer = trainer_cls(engine, recipe, cfg, run_root=Path(tempfile.mkdtemp()))
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stamps = []

    def work(ctx):
        out = trainer.run(ctx)
        return Result(info={"params": out.trainable_params})

    for ev in engine.run(work, kind="bench-train"):
        if isinstance(ev, TrainStep):
            stamps.append(time.perf_counter())
        last = ev
    from core import library
    library.adapters(engine).unload_all()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    per_step = statistics.median(steps) if steps else float("nan")
    print(f"{name:38s} params {last.info['params']:>11,d}   {per_step * 1000:9.1f} ms/step   "
          f"peak {peak(engine.device)}")
    return per_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()

    from core import blora, dreambooth, styledrop
    from core.engine import Engine
    from core.train import TrainSettings, Trainer

    print("trainable parameters on sdxl-arch (meta device):",
          ", ".join(f"{k} {v:,d}" for k, v in sdxl_arch_counts().items()))
    engine = Engine(args.model, device=args.device, dtype=args.dtype, data_dir=tempfile.mkdtemp())
    engine.load()
    res = engine.resolution
    print(f"model={args.model} device={engine.device} dtype={engine.dtype} size={res} steps={args.steps} "
          f"torch={torch.__version__}")
    subject = images(4, res)

    def cfg(**kw):
        return TrainSettings(steps=args.steps, learning_rate=1e-4, sample_every=0, checkpoint_every=0,
                           resume=False, eval_draws=1, **kw)

    rows = []
    for prior in (False, True):
        for gc in (False, True):
            recipe = dreambooth.make_recipe(engine, subject, identifier="sks", class_noun="dog", prior=prior,
                                            num_class_images=4, sample_prompts=[])
            name = f"DreamBooth-LoRA prior={'on' if prior else 'off'} ckpt={'on' if gc else 'off'}"
            rows.append((name, run_row(engine, name, recipe, cfg(gradient_checkpointing=gc,
                                                                  batch_size=1), Trainer)))
    if engine.xl:
        recipe = blora.make_recipe(engine, subject[0], trigger="v1", rank=64, sample_prompts=[])
        rows.append(("B-LoRA rank 64", run_row(engine, "B-LoRA rank 64", recipe, cfg(), Trainer)))
    recipe = styledrop.make_recipe(engine, [(subject[0], "a dog in watercolor style")], rank=4)
    rows.append(("StyleDrop adapter rank 4", run_row(engine, "StyleDrop adapter rank 4", recipe, cfg(), Trainer)))
    base = rows[0][1]
    for name, t in rows[1:]:
        print(f"ratio {name} / {rows[0][0]}: {t / base:.2f}")


if __name__ == "__main__":
    main()
