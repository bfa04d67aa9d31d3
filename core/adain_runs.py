"""AdaIN decoder runs per owner, the weights a model uses, and the AdaIN jobs (the method itself,
Huang & Belongie 2017, is core/adain.py).

Runs: a run is a folder holding a decoder trained by its owner (`decoder.safetensors`), its
checkpoint and the images it trained on, staged as PNG files. The private instance's owner
("local") keeps its runs in `<data_dir>/adain/runs/<run name>`; any other owner (a visitor of a
shared instance, a logged-in user) in `<data_dir>/adain/runs/<owner folder>/<run name>`, so
owners neither see nor use nor overwrite each other's decoders. The owner folder is
core.files.owner_dirname (a keyed digest, never the owner key itself: the files under it may be
served as downloads) and starts with "_", which no run name does.

Weights: in the tiny family (offline, tests) a tiny random network of the paper's architecture;
otherwise the app's `--adain-weights`, else $STUDIO_ADAIN_WEIGHTS (a folder with
vgg_normalised.pth and decoder.pth, or a Hub repo id), else core.adain.DEFAULT_HUB_REPO; in
other offline families (random-weight benchmarks) the paper's full-size network with random
weights.

Jobs: `transfer` and `train` run through `engine.run` (the accelerator slot in arrival order,
Stop by `stop_key`, the time limit of a shared instance); neither needs the diffusion model.
A training run stopped before its first checkpoint keeps nothing, unless the time limit (not
the user) stopped it: then the state so far is checkpointed, to be resumed by the next job.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from . import adain
from .errors import UserError
from .events import Progress, Result
from .files import atomic_path, owner_dirname
from .images import load_image
from .jobs import Job
from .validate import shown

LOCAL = "local"            # the owner on a private instance (tabs.common.owner_key)
BUILT_IN = "built-in"      # the decoder that comes with the weights
WEIGHTS_ENV = adain.WEIGHTS_ENV
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TRAIN_IMAGE_SIDE = 1024    # staged uploads are re-encoded at most this large (training resizes to <= 1024)


# ------------------------------------------------------------------ the engine's device and family

def is_tiny(engine: Any) -> bool:
    """The tiny offline family (tests, demos): the tiny random AdaIN network."""
    return str(getattr(engine, "family", "")).startswith("tiny")


def device_of(engine: Any) -> torch.device:
    return torch.device(getattr(engine, "device", "cpu"))


def max_side(engine: Any) -> int:
    """The largest output side on the engine's device."""
    return adain.MAX_SIDE_CPU if device_of(engine).type == "cpu" else adain.MAX_SIDE


# ------------------------------------------------------------------ runs per owner

def runs_root(data_dir: str | os.PathLike) -> Path:
    """The root of all runs; the private instance's own ("local") runs sit right in it."""
    return Path(data_dir) / "adain" / "runs"


def runs_for(data_dir: str | os.PathLike, *, owner: str = LOCAL) -> Path:
    """The folder holding `owner`'s runs."""
    if owner == LOCAL:
        return runs_root(data_dir)
    return runs_root(data_dir) / owner_dirname(data_dir, owner)


def decoder_choices(data_dir: str | os.PathLike, *, owner: str = LOCAL) -> list[str]:
    """The built-in decoder and the decoders `owner` trained (nobody else's), by run name."""
    folder = runs_for(data_dir, owner=owner)
    runs = sorted(p.parent.name for p in folder.glob(f"*/{adain.DECODER_NAME}") if RUN_NAME.match(p.parent.name))
    return [BUILT_IN] + runs


def check_decoder(decoder: Any) -> str:
    """The Decoder field: the built-in one (also for an empty field) or a run name."""
    if decoder in (None, "", BUILT_IN):
        return BUILT_IN
    if not isinstance(decoder, str) or not RUN_NAME.match(decoder):
        raise UserError(f"Decoder: {shown(decoder)} is not a decoder name; pick one from the list.")
    return decoder


def check_run_name(name: str) -> str:
    """A run name as typed (empty: one made from the time), or a `UserError`."""
    name = name.strip() or time.strftime("decoder-%Y%m%d-%H%M%S")
    if not RUN_NAME.match(name):
        raise UserError("The run name may hold letters, digits, '-', '_' and '.' (max 64), "
                        "starting with a letter or digit.")
    return name


def decoder_file(data_dir: str | os.PathLike, decoder: Any, *, owner: str = LOCAL) -> Path | None:
    """The file of `owner`'s decoder `decoder` (None for the built-in one), or a `UserError`
    when `owner` has no decoder of that name."""
    decoder = check_decoder(decoder)
    if decoder == BUILT_IN:
        return None
    path = runs_for(data_dir, owner=owner) / decoder / adain.DECODER_NAME
    if not path.is_file():
        raise UserError(f"Decoder: {shown(decoder)} was not found among your decoders; pick "
                        "another from the list.")
    return path


# ------------------------------------------------------------------ weights and models

def weights_spec(*, flag: str | None = None, offline: bool = False) -> str:
    """The weights to load: `flag` (the app's --adain-weights), else $STUDIO_ADAIN_WEIGHTS, else
    the default Hub repo; offline (a non-tiny family without network) the full network, random."""
    spec = flag or os.environ.get(WEIGHTS_ENV)
    if spec:
        return spec
    if offline:
        return adain.RANDOM_WEIGHTS
    return adain.DEFAULT_HUB_REPO


def model_for(engine: Any, *, data_dir: str | os.PathLike, decoder: Any = BUILT_IN, owner: str = LOCAL,
              weights: str | None = None) -> adain.AdaINNet:
    """The resident network for `owner`'s `decoder` on the engine's device (`weights`: the
    app's --adain-weights, if any)."""
    path = decoder_file(data_dir, decoder, owner=owner)
    tiny = is_tiny(engine)
    spec = None if tiny else weights_spec(flag=weights, offline=bool(getattr(engine, "offline", False)))
    return adain.get_model(spec, device_of(engine), getattr(engine, "dtype", torch.float32), tiny=tiny,
                           decoder=path)


# ------------------------------------------------------------------ transfer

def transfer(engine: Any, model: adain.AdaINNet, request: adain.TransferRequest, *,
             stop_key: str = LOCAL) -> Iterator[Progress | Result]:
    """Style every content image of `request` as a job: a Progress per image (its result as the
    preview), then the Result (info: seconds, size, weights, alpha, preserve_color)."""
    def work(ctx) -> Result | None:
        result = None
        for ev in adain.run_transfer(model, request):
            if isinstance(ev, Result):
                result = ev
            else:
                ctx.progress(ev.step, ev.total, ev.message, ev.preview)
        return result

    return engine.run(work, stop_key=stop_key, kind="adain", needs_model=False)


class WebcamStylizer:
    """Styles single webcam frames: a frame never queues behind a long job (when the accelerator
    is busy it is given back as it is), and each set of styles is encoded once."""

    MAX_CACHED = 16

    def __init__(self):
        self._features: dict[tuple, list] = {}
        self._lock = threading.Lock()

    def style_features(self, model: adain.AdaINNet, styles: Sequence, size: int, *, side: int) -> list:
        key = (id(model), tuple(str(s) for s in styles), size)
        with self._lock:
            if key not in self._features:
                tensors = [adain.to_tensor(adain.prepare(s, size, what=f"style image {i + 1}", max_side=side))
                           for i, s in enumerate(styles)]
                if len(self._features) > self.MAX_CACHED:
                    self._features.clear()
                self._features[key] = adain.encode_styles(model, tensors)
            return self._features[key]

    def stylize(self, engine: Any, model: adain.AdaINNet, frame: Image.Image, *, styles: Sequence,
                weights: list[float] | None, alpha: float, size: int, stop_key: str = LOCAL
                ) -> tuple[Image.Image, float] | None:
        """(the styled frame, the model's seconds for it), or None while another job holds the
        accelerator."""
        slot, job = engine.gpu_lock, Job(stop_key, "adain-webcam")
        if not slot.try_acquire(job):
            return None
        try:
            feats = self.style_features(model, styles, size, side=max_side(engine))
            t0 = time.perf_counter()
            out = adain.stylize_frame(model, adain.to_tensor(frame), feats, weights, alpha)
            if out.device.type == "cuda":
                torch.cuda.synchronize(out.device)
            return adain.to_image(out), time.perf_counter() - t0
        finally:
            slot.release(job)


# ------------------------------------------------------------------ training

@dataclass(frozen=True)
class DecoderSettings:
    """The recipe fields a user sets for a decoder training run."""

    steps: int
    batch_size: int
    resize: int          # shorter side of every training image
    crop: int            # random square crop of the resized image
    sample_every: int    # sample transfers every N steps
    save_every: int      # checkpoint every N steps
    resume: bool = True


# The paper's recipe (160k steps, batch 8, random 256 crops of images resized to 512).
PAPER_PRESET = DecoderSettings(steps=160_000, batch_size=8, resize=512, crop=256, sample_every=500,
                             save_every=1000)
# Tiny offline mode: the same recipe at sizes that finish in under a minute on 2 CPU cores (batch 8
# at 256 px took 15-25 minutes). Measured through the tab with 6 uploads of 640x480 on 2 cores
# shared with other work (load average 8-10): 200 steps took 47 s with OMP_NUM_THREADS=1, and 715 s
# with torch's 2 threads spinning against the other load; hence 100 steps: 26 s with
# OMP_NUM_THREADS=1, and 26 s with 2 threads under OMP_WAIT_POLICY=PASSIVE (what app.py sets).
TINY_PRESET = DecoderSettings(steps=100, batch_size=4, resize=128, crop=64, sample_every=10, save_every=25)


def preset(*, tiny: bool) -> DecoderSettings:
    return TINY_PRESET if tiny else PAPER_PRESET


def stage_images(paths: Sequence[str], folder: Path, *, what: str) -> Path:
    """Each upload decoded, checked and written again as a PNG under our own name (never the
    uploaded bytes or extension) into `folder`, which is returned; what was there goes first
    (a resumed run trains on this upload, not on the last one's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file():
            old.unlink()
    for i, p in enumerate(paths):
        img = load_image(p, what=f"{what} image {i + 1} ({Path(p).name[:60]})", max_side=TRAIN_IMAGE_SIDE)
        with atomic_path(folder / f"{i:05d}.png") as tmp:
            img.save(tmp, format="PNG")
    return folder


def training_images(run_dir: Path, *, uploads: Sequence[str], server_dir: str, what: str) -> Path:
    """The folder a run trains on for `what` ("content"/"style"): the uploads staged in the run,
    else a server folder (the caller checked that reading one is allowed)."""
    if uploads:
        return stage_images(uploads, run_dir / what, what=what)
    if server_dir.strip():
        return Path(server_dir.strip()).expanduser()
    raise UserError(f"Upload {what} images or give a {what} folder on the server.")


def train_config(engine: Any, *, run_dir: Path, content_dir: Path, style_dir: Path, settings: DecoderSettings,
                 weights: str | None = None) -> adain.DecoderTrainConfig:
    """The trainer's settings for a run on the engine's device (`weights`: the app's
    --adain-weights, if any)."""
    tiny = is_tiny(engine)
    return adain.DecoderTrainConfig(
        content_dir=str(content_dir), style_dir=str(style_dir), out_dir=str(run_dir), steps=settings.steps,
        batch_size=settings.batch_size, resize=settings.resize, crop=settings.crop,
        sample_every=settings.sample_every, save_every=settings.save_every,
        log_every=max(1, min(10, settings.sample_every)), resume=settings.resume, tiny=tiny,
        weights=None if tiny else weights_spec(flag=weights, offline=bool(getattr(engine, "offline", False))),
        device=str(device_of(engine)))


@dataclass(frozen=True)
class DecoderSamples:
    """A training progress line with sample transfers (content, style, transfer): an event of
    its own kind, so that the job stream never coalesces it away as it does plain progress."""

    progress: Progress


@dataclass(frozen=True)
class DecoderTraining:
    """How a decoder training run ended."""

    run: str                       # the run name
    step: int                      # the step training reached
    saved_step: int                # the step of the checkpoint on disk (0: nothing was kept)
    decoder: Path | None           # the decoder file kept, None when nothing was
    cancelled: bool                # stopped (by a Stop or the time limit) before its last step
    stop_reason: str | None        # why, when not by a Stop (the time limit)
    history: tuple[dict, ...]      # one row per step: step, loss, loss_c, loss_s, lr
    samples: tuple[Image.Image, ...]  # content, style, transfer with the decoder as it ended

    @classmethod
    def from_result(cls, result: Result, *, run: str, stop_reason: str | None = None) -> DecoderTraining:
        info = result.info
        saved = int(info.get("saved_step", 0))
        return cls(run=run, step=int(info["step"]), saved_step=saved,
                   decoder=Path(info["decoder"]) if saved else None, cancelled=bool(info["cancelled"]),
                   stop_reason=stop_reason, history=tuple(info["history"]), samples=tuple(result.images))


def train(engine: Any, cfg: adain.DecoderTrainConfig, *, run: str, stop_key: str = LOCAL
          ) -> Iterator[Progress | DecoderSamples | DecoderTraining]:
    """Train a decoder as a job: Progress lines (metrics: loss, loss_c, loss_s, lr),
    DecoderSamples now and then, and a DecoderTraining at the end. A Stop (or the time limit)
    ends the run within a step with a DecoderTraining that says what was kept."""
    # offline full-size family: the paper's network with random weights
    start = adain.tiny_model(seed=0, width=1.0) if not cfg.tiny and cfg.weights == adain.RANDOM_WEIGHTS else None

    def work(ctx) -> DecoderTraining | None:
        outcome = None
        for ev in adain.train_decoder(cfg, model=start, should_stop=ctx.job.cancelled.is_set,
                                      keep_unsaved=lambda: ctx.job.reason is not None):
            if isinstance(ev, Result):
                outcome = DecoderTraining.from_result(ev, run=run, stop_reason=ctx.job.reason)
            else:
                ctx.emit(DecoderSamples(ev) if ev.preview else ev)
        return outcome

    return engine.run(work, stop_key=stop_key, kind="adain-train", needs_model=False)
