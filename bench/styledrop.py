"""StyleDrop figures (issue 7), not a test. (The issue asks for a StyleDrop row in bench/train.py;
that file does not exist yet, so the row lives here until it does.)

    python -m bench.styledrop params        # adapter parameters on sdxl-arch (meta device: no memory)
    python -m bench.styledrop round [--model tiny --steps 20 --prompts 8]
                                            # one full round (training + candidate grid): time per step,
                                            # round time, peak memory (CUDA) — tiny on a CPU, sdxl-arch on a GPU

Prints one JSON line per configuration.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def cmd_params(a) -> None:
    from core import styledrop as sd
    from core.tiny import sdxl_architecture

    unet = sdxl_architecture(device="meta", dtype=torch.float16).unet
    for r in a.ranks:
        print(json.dumps({"model": "sdxl-arch", "rank": r, "blocks": len(sd.ff_out_layers(unet)),
                          "trained_params": sd.param_count(unet, r), "lora_file_numbers": sd.lora_numbers(unet, r),
                          "plain_lora_on_ff_net_2_params": sd.lora_numbers(unet, r)}))


def cmd_round(a) -> None:
    from PIL import Image

    from core import styledrop as sd
    from core.engine import Engine
    from core.metrics import Metrics
    from core.events import TrainStep
    from core.train import TrainSettings
    from core.events import Result

    engine = Engine(a.model, device=a.device, dtype=a.dtype, data_dir=tempfile.mkdtemp(prefix="bench-styledrop-"))
    engine.load()
    res = engine.resolution
    rng = np.random.default_rng(0)
    style = Image.fromarray(rng.integers(0, 255, (res, res, 3), dtype=np.uint8))
    loop = sd.create_loop(engine, [style], owner="bench", content_description="a pattern",
                          style_descriptor="noise")
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, t0 = [], time.monotonic()
    info = {}
    for ev in sd.train_round(engine, loop.id, TrainSettings(steps=a.steps, learning_rate=1e-4,
                                                          gradient_checkpointing=a.gc),
                             owner="bench", contents=sd.DEFAULT_CONTENT_PROMPTS[:a.prompts], samples_per_prompt=1,
                             sample_steps=a.sample_steps, metrics=Metrics(tiny=engine.offline, device=engine.device)):
        if isinstance(ev, TrainStep):
            steps.append(ev.seconds)
        elif isinstance(ev, Result):
            info = ev.info
    total = time.monotonic() - t0
    warm = steps[2:] or steps
    out = {"model": a.model, "device": str(engine.device), "resolution": res, "rank": 4, "steps": a.steps,
           "grad_checkpointing": a.gc, "trained_params": info.get("trainable_params"),
           "s_per_step": round(float(np.median(warm)), 4), "round_s": round(total, 2),
           "training_s": info.get("seconds"), "candidates": a.prompts, "sample_steps": a.sample_steps}
    if engine.device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    else:
        import resource

        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    print(json.dumps(out))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("params")
    pp.add_argument("--ranks", type=int, nargs="+", default=[4, 32])
    pr = sub.add_parser("round")
    pr.add_argument("--model", default="tiny")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--dtype", default="auto")
    pr.add_argument("--steps", type=int, default=20)
    pr.add_argument("--prompts", type=int, default=8)
    pr.add_argument("--sample-steps", type=int, default=4)
    pr.add_argument("--gc", action="store_true")
    a = p.parse_args(argv)
    {"params": cmd_params, "round": cmd_round}[a.cmd](a)


if __name__ == "__main__":
    main()
