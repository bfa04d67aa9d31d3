"""The trainer without gradio: `python -m core.train ...` (or `python -m core.train_cli ...`).

core/train.py is the trainer and knows no recipe; this module sits above it and the recipes
(core/dreambooth.py so far), builds one from the command line and prints the run's events.
`python -m core.train` hands over to `main` here. On several GPUs:
`accelerate launch --multi_gpu --num_processes N -m core.train dreambooth ...` (see core/train.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from . import dreambooth, library
from .engine import Engine
from .errors import Cancelled, UserError
from .events import Checkpointed, Notice, Progress, Result, TrainSamples, TrainStep
from .train import TrainSettings


def cli_config_args(p: argparse.ArgumentParser) -> None:
    d = TrainSettings()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--lr-scheduler", default=d.lr_scheduler)
    p.add_argument("--warmup", type=int, default=d.lr_warmup_steps)
    p.add_argument("--mixed-precision", default=d.mixed_precision, choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-8bit-adam", action="store_true")
    p.add_argument("--snr-gamma", type=float, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sample-every", type=int, default=d.sample_every)
    p.add_argument("--sample-steps", type=int, default=d.sample_steps)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--no-resume", action="store_true")


def config_from_args(a) -> TrainSettings:
    return TrainSettings(steps=a.steps, learning_rate=a.lr, batch_size=a.batch_size, grad_accum=a.grad_accum,
                       lr_scheduler=a.lr_scheduler, lr_warmup_steps=a.warmup, mixed_precision=a.mixed_precision,
                       gradient_checkpointing=a.gradient_checkpointing, use_8bit_adam=not a.no_8bit_adam,
                       snr_gamma=a.snr_gamma, seed=a.seed, sample_every=a.sample_every,
                       sample_steps=a.sample_steps, checkpoint_every=a.checkpoint_every,
                       resume=not a.no_resume)


def _say(line: str, out) -> None:
    """One line in one write: processes of a multi-process launch share the stream, and print()
    writes the text and its newline apart (two system calls when the stream is unbuffered), so their
    lines could run into each other."""
    out.write(line + "\n")
    out.flush()


def consume(events: Iterator[Any], out=None) -> Result | None:
    """Print a headless run's events; returns the final Result."""
    out = out or sys.stdout
    result = None
    for ev in events:
        if isinstance(ev, TrainStep):
            prior = f" prior {ev.prior_loss:.4f}" if ev.prior_loss is not None else ""
            _say(f"step {ev.step}/{ev.total} loss {ev.loss:.4f} (instance {ev.instance_loss:.4f}{prior}) "
                 f"lr {ev.lr:.2e} {ev.seconds:.2f}s", out)
        elif isinstance(ev, Checkpointed):
            _say(f"checkpoint at step {ev.step}: {ev.path}", out)
        elif isinstance(ev, TrainSamples):
            _say(f"samples at step {ev.step}: {len(ev.images)} images", out)
        elif isinstance(ev, Notice):
            _say(f"note: {ev.message}", out)
        elif isinstance(ev, Progress) and not ev.message.startswith("Samples"):
            _say(ev.message, out)
        elif isinstance(ev, Result):
            result = ev
    return result


def main(argv=None) -> int:
    """`python -m core.train dreambooth ...` (the only recipe so far; see core/dreambooth.py)."""
    p = argparse.ArgumentParser(prog="python -m core.train", description=main.__doc__)
    sub = p.add_subparsers(dest="recipe", required=True)
    db = sub.add_parser("dreambooth", help="DreamBooth a subject from 1-20 images")
    dreambooth.add_cli_args(db)
    cli_config_args(db)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    engine = Engine(a.model, device=a.device, dtype=a.dtype, data_dir=a.data_dir)
    try:
        recipe, cfg = dreambooth.from_cli(engine, a, config_from_args(a))
        result = consume(dreambooth.train_dreambooth(engine, recipe, cfg, owner=a.owner))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("stopped; the last checkpoint is kept (run again to resume)", file=sys.stderr)
        return 130
    info = result.info if result else {}
    print(json.dumps({k: info[k] for k in ("adapter_id", "adapter_name", "loss_before", "loss_after",
                                           "trainable_params", "seconds", "processes", "weights_digest")
                      if k in info}))
    if a.export and info.get("adapter_id") is not None:  # the main process (the one that saved)
        path = library.get_store(engine).export(info["adapter_id"], a.owner, fmt="kohya",
                                                dest_dir=Path(a.export).parent)
        target = Path(a.export)
        os.replace(path, target)
        print(f"exported (kohya) to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
