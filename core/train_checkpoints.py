"""The trainer's checkpoints (a part of `Trainer`, core/train.py).

A run is filed under `<run_root>/<method>-<key>`, where the key (`fingerprint`) hashes what it
trains on and how (not the step count or the sampling settings), and the owner on a shared
instance, so a run resumes only its owner's checkpoint with the same inputs and settings. A
checkpoint (adapter weights, optimizer, scheduler and generator state, loss history) is written
into a temporary folder, fsynced and renamed into place, then named in `latest`; a killed
process leaves at most a `.tmp-*` folder, which the next run of the key sweeps away.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_write
from .train_data import tensor_digest


class Checkpoints:
    """Mixin of `Trainer`: the run's key, its folder, and saving/finding/loading checkpoints."""

    def fingerprint(self) -> str:
        """The key a run's checkpoints are filed under: what was trained on, how, by whom."""
        spec = asdict(self.recipe.adapter)
        if not spec["text_encoder_rank"]:  # UNet-only runs keep the keys they had before the option
            spec.pop("text_encoder_rank")
            spec.pop("text_encoder_targets")
        if spec.get("module_adapter") is None:  # runs without one keep the keys they had before it
            spec.pop("module_adapter", None)
        cfg = {k: v for k, v in asdict(self.cfg).items()
               if k not in ("steps", "sample_every", "sample_steps", "sample_guidance", "sample_seed",
                            "checkpoint_every", "resume", "keep_checkpoints", "eval_draws")}
        owner = [] if self.owner == "local" else [self.owner]  # private runs keep their earlier keys
        parts = [self.recipe.method, *owner, json.dumps(spec, sort_keys=True, default=str),
                 json.dumps(cfg, sort_keys=True, default=str), self.engine.spec.source,
                 str(self.engine.dtype), json.dumps(self.prompts), json.dumps(self.prior_prompts),
                 str(float(self.recipe.prior_weight) if self.prior_latents is not None else 0.0),
                 tensor_digest(self.latents, *([self.prior_latents] if self.prior_latents is not None else []))]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]

    def _run_dir(self) -> Path:
        return self.run_root / f"{self.recipe.method}-{self._key}"

    def _save_checkpoint(self, step, params_named, optimizer, lr_sched, gen, history) -> Path:
        from safetensors.torch import save_file

        run = self._run_dir()
        run.mkdir(parents=True, exist_ok=True)
        final = run / f"ckpt-{step:06d}"
        tmp = run / f".tmp-ckpt-{step:06d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({self._portable(n): p.detach().to("cpu").contiguous() for n, p in params_named},
                  str(tmp / "weights.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict(),
                    "generator": gen.get_state()}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "history": history, "key": self._key,
                                                   "method": self.recipe.method, "time": time.time()}))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write(run / "latest", final.name, fsync=True)
        for old in run.glob("ckpt-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _sweep_partial_checkpoints(self) -> None:
        """Remove checkpoints a killed process was half-way through writing (`.tmp-*`): only
        complete ones are ever renamed into place, and one run of a key trains at a time."""
        run = self._run_dir()
        if run.is_dir():
            for partial in run.glob(".tmp-*"):
                shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)

    def _portable(self, name: str) -> str:
        """A parameter name without this run's random adapter name (checkpoints outlive it)."""
        return name.replace(f".{self.adapter_name}.", ".adapter.")

    def latest_checkpoint(self) -> Path | None:
        run = self._run_dir()
        try:
            name = (run / "latest").read_text().strip()
        except OSError:
            return None
        path = run / name
        return path if (path / "meta.json").is_file() else None

    def _load_checkpoint(self, path: Path, params_named, optimizer, lr_sched, gen):
        from safetensors.torch import load_file

        weights = load_file(str(path / "weights.safetensors"))
        names = {self._portable(n) for n, _ in params_named}
        if set(weights) != names:
            raise UserError(f"The checkpoint {path.name} does not match this run's adapter; start afresh "
                            "(Resume off).")
        with torch.no_grad():
            for n, p in params_named:
                p.copy_(weights[self._portable(n)].to(p.device, p.dtype))
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        gen.set_state(state["generator"])
        meta = json.loads((path / "meta.json").read_text())
        return int(meta["step"]), list(meta.get("history", []))
