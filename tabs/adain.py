"""AdaIN Transfer tab: real-time arbitrary style transfer (Huang & Belongie 2017).

Widgets and wiring only; the method lives in core/adain.py. Three panels:

- Transfer (api_name="adain"): content images (a batch), style images with a weight each,
  alpha, colour preservation, optional regions painted in a mask editor (one layer per style),
  output size with a safe maximum, and the decoder to use (published/tiny, or one you trained).
- Webcam: streamed frames styled live, with the measured frames per second.
- Train your own decoder: uploads or server folders, the paper's recipe, a streamed loss
  curve and sample transfers, Stop (the state so far is checkpointed; nothing half-written).

Trained decoders belong to their owner (tabs.common.owner_key): on a private instance
"local", whose runs live in data_dir/adain/runs/<run name> as always; anyone else (a visitor
of a shared instance, a logged-in user) has their own folder data_dir/adain/runs/<owner
folder>/<run name>, so visitors neither see nor use nor overwrite each other's decoders. The
owner folder is core.files.owner_dirname (a keyed digest, never the key itself: the files under
it can be served as downloads), and starts with "_", which no run name does.

Weights: in the tiny family (offline, tests) a tiny random network of the paper's
architecture; otherwise `args.adain_weights` if the app defines that flag, else
$STUDIO_ADAIN_WEIGHTS (a folder with vgg_normalised.pth and decoder.pth, or a Hub repo id),
else core.adain.DEFAULT_HUB_REPO; in other offline families (random-weight benchmarks) the
paper's full-size network with random weights.
"""
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch

from core import adain
from core import validate as v
from core.errors import Cancelled, UserError
from core.files import atomic_path, owner_dirname
from core.events import Progress, Result
from core.images import load_image
from core.jobs import Job
from tabs.common import GPU, AppContext, gpu, session_key, stopped_text, user_errors
from tabs.widgets import Dropdown, Image, ImageEditor, Number, Slider

LOCAL = "local"  # the owner on a private instance (tabs.common.owner_key)

TITLE = "AdaIN Transfer"

DEFAULT_DECODER = "built-in"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Bounds on one request's work (every instance; a shared one also has a time limit per job)
MAX_CONTENTS = 16          # content images styled in one Transfer
MAX_STYLES = 8             # style images mixed at once
MAX_TRAIN_IMAGES = 200     # uploaded images per training set
TRAIN_IMAGE_SIDE = 1024    # uploads are re-encoded at most this large (training resizes to <= 1024)
MAX_TRAIN_STEPS = 200_000  # the paper trains 160,000
GALLERY_EVERY_S = 1.0      # how often a Transfer re-sends its growing gallery


@dataclass
class _Samples:
    """A training progress line with sample transfers (an event of its own kind, so that the
    job stream never coalesces it away as it does plain progress lines)."""

    progress: Progress


def parse_weights(text: str | None, n: int) -> list[float] | None:
    """'1, 2' -> [1.0, 2.0]; empty -> None (equal weights)."""
    if text is None or not str(text).strip():
        return None
    parts = [p for p in re.split(r"[,\s;]+", str(text).strip()) if p]
    try:
        w = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"Style weights must be numbers separated by commas, e.g. '0.7, 0.3' "
                        f"(got {text!r}).") from None
    if len(w) != n:
        raise UserError(f"Give one weight per style: {n} style image(s) but {len(w)} weight(s).")
    return w


def masks_from_editor(value, n_styles: int) -> list | None:
    """Regions painted in the editor -> one mask per style.

    Layer k's painted pixels are the region of style k (an empty layer leaves its style
    unused). If there are fewer layers than styles, the unpainted area takes the next style;
    styles beyond that are unused."""
    if not value:
        return None
    layers = value.get("layers") if isinstance(value, dict) else None
    regions = []
    for layer in layers or []:
        if layer is None:
            regions.append(None)
            continue
        if hasattr(layer, "shape"):
            arr = np.asarray(layer)
            region = arr[..., 3] > 0 if arr.ndim == 3 and arr.shape[-1] == 4 else (
                (arr if arr.ndim == 2 else arr.max(-1)) > 0)
        else:
            region = np.asarray(adain.load_image(layer, what="mask layer").convert("L")) > 0
        regions.append(region if region.any() else None)
    while regions and regions[-1] is None:
        regions.pop()
    if not regions:
        raise UserError("Region mode is on but nothing is painted: paint one layer per style "
                        "over the content image (layer 1 = style 1, ...), or turn regions off.")
    if len(regions) > n_styles:
        raise UserError(f"Layers up to {len(regions)} are painted but there are only {n_styles} "
                        "style image(s): give one style per painted layer.")
    painted = [r for r in regions if r is not None]
    shape = painted[0].shape
    if any(r.shape != shape for r in painted):
        raise UserError("The painted layers have different sizes; clear them and paint again.")
    masks = [np.zeros(shape, np.float32) if r is None else r.astype(np.float32) for r in regions]
    if len(masks) < n_styles:
        masks.append((~np.any(np.stack(painted), axis=0)).astype(np.float32))
    while len(masks) < n_styles:
        masks.append(np.zeros(shape, dtype=np.float32))
    return masks


def loss_frame(history: list[dict], max_points: int = 500) -> pd.DataFrame:
    """Long-format loss curve for gr.LinePlot: step, value, term (at most `max_points`
    steps, evenly thinned, the latest always kept)."""
    if len(history) > max_points:
        stride = -(-len(history) // max_points)
        history = history[::-1][::stride][::-1]
    rows = []
    for r in history:
        rows.append({"step": r["step"], "value": r["loss"], "term": "total"})
        rows.append({"step": r["step"], "value": r["loss_c"], "term": "content"})
        rows.append({"step": r["step"], "value": r["loss_s"], "term": "style"})
    frame = pd.DataFrame(rows, columns=["step", "value", "term"])
    # explicit dtypes: an empty first frame must not make the plot's axes categorical
    return frame.astype({"step": "int64", "value": "float64", "term": "string"})


class AdaINTab:
    """The handlers, bound to one app context (tests call them directly)."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self._style_cache: dict[tuple, list] = {}
        self._lock = threading.Lock()

    # --- model choice ------------------------------------------------------------------
    @property
    def tiny(self) -> bool:
        return str(getattr(self.ctx.engine, "family", "")).startswith("tiny")

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.ctx.engine, "device", "cpu"))

    @property
    def max_side(self) -> int:
        return adain.MAX_SIDE_CPU if self.device.type == "cpu" else adain.MAX_SIDE

    @property
    def runs_dir(self) -> Path:
        """The root of all runs; the private instance's own ("local") runs sit right in it."""
        return Path(self.ctx.data_dir) / "adain" / "runs"

    def owner(self, request: gr.Request | None, visitor: str | None = None) -> str:
        """Who the decoders belong to: "local" on a private instance, the browser's visitor id
        on a shared one, a logged-in user by name."""
        return self.ctx.owner(request, visitor)

    def runs_for(self, owner: str = LOCAL) -> Path:
        """The folder holding `owner`'s runs."""
        if owner == LOCAL:
            return self.runs_dir
        return self.runs_dir / owner_dirname(self.ctx.data_dir, owner)

    def weights_spec(self) -> str:
        """--adain-weights, else $STUDIO_ADAIN_WEIGHTS, else the default Hub repo; in an
        offline non-tiny family (random-weight benchmarks) the full network, random."""
        spec = (getattr(self.ctx.args, "adain_weights", None)
                or os.environ.get("STUDIO_ADAIN_WEIGHTS"))
        if spec:
            return spec
        if getattr(self.ctx.engine, "offline", False):
            return adain.RANDOM_WEIGHTS
        return adain.DEFAULT_HUB_REPO

    def decoder_choices(self, owner: str = LOCAL) -> list[str]:
        """The built-in decoder and the decoders `owner` trained (nobody else's)."""
        runs = sorted(p.parent.name for p in self.runs_for(owner).glob(f"*/{adain.DECODER_NAME}")
                      if _RUN_NAME.match(p.parent.name))
        return [DEFAULT_DECODER] + runs

    @staticmethod
    def check_decoder(decoder) -> str:
        """The Decoder field: the built-in one (also for an empty field) or a run name."""
        if decoder in (None, "", DEFAULT_DECODER):
            return DEFAULT_DECODER
        if not isinstance(decoder, str) or not _RUN_NAME.match(decoder):
            raise UserError(f"Decoder: {v.shown(decoder)} is not a decoder name; pick one from the list.")
        return decoder

    def model(self, decoder: str | None = None, owner: str = LOCAL) -> adain.AdaINNet:
        path = None
        decoder = self.check_decoder(decoder)
        if decoder != DEFAULT_DECODER:
            path = self.runs_for(owner) / decoder / adain.DECODER_NAME
            if not path.is_file():
                raise UserError(f"Decoder: {v.shown(decoder)} was not found among your decoders; pick "
                                "another from the list.")
        return adain.get_model(None if self.tiny else self.weights_spec(), self.device,
                               getattr(self.ctx.engine, "dtype", torch.float32), tiny=self.tiny,
                               decoder=path)

    # --- transfer ------------------------------------------------------------------------
    @user_errors
    def transfer(self, content_files, style_files, weights_text, alpha, preserve_color,
                 use_regions, regions, size, decoder, visitor=None, request: gr.Request = None):
        alpha_f = v.real(alpha, "alpha", 0, 1)
        size_n = v.whole(size, "Output size", 16, self.max_side, default=0) or None  # empty: as large as the content
        preserve_b = v.flag(preserve_color, "Preserve the content's colours")
        regions_b = v.flag(use_regions, "Use painted regions")
        decoder = self.check_decoder(decoder)
        contents = v.files(content_files, "Content image(s)", MAX_CONTENTS)
        styles = v.files(style_files, "Style image(s)", MAX_STYLES)
        weights_text = v.text(weights_text, "Style weights", 500)
        caller = self.ctx.caller(request, visitor)
        if not contents:
            raise UserError("Upload at least one content image.")
        if not styles:
            raise UserError("Upload at least one style image.")
        weights = parse_weights(weights_text, len(styles))
        masks = masks_from_editor(regions, len(styles)) if regions_b else None
        req = adain.TransferRequest(contents, styles, weights, alpha_f, preserve_b, masks, size_n, self.max_side)
        model = self.model(decoder, caller.owner)

        def work(ctx):
            result = None
            for ev in adain.run_transfer(model, req):
                if isinstance(ev, Result):
                    result = ev
                else:
                    ctx.progress(ev.step, ev.total, ev.message, ev.preview)
            return result

        done: list = []
        last = 0.0
        try:
            for ev in self.ctx.engine.run(work, stop_key=caller.stop_key, kind="adain", needs_model=False):
                if isinstance(ev, Progress) and not ev.total:  # waiting for the accelerator
                    yield gr.skip(), ev.message
                elif isinstance(ev, Progress):
                    done.extend(ev.preview or [])
                    now = time.monotonic()
                    if now - last >= GALLERY_EVERY_S:  # not the whole gallery on every image
                        last = now
                        yield list(done), f"Styled {ev.step}/{ev.total}..."
                    else:
                        yield gr.skip(), f"Styled {ev.step}/{ev.total}..."
                elif isinstance(ev, Result):
                    per = ev.info["seconds"] / max(len(ev.images), 1)
                    w, h = ev.images[0].size
                    text = (f"Done: {len(ev.images)} image(s) at {w}x{h}, "
                            f"{per * 1000:.0f} ms each on {self.device.type}.")
                    if masks is not None:
                        text += " Regions: " + ", ".join(
                            f"style {i + 1} {100 * float(m.mean()):.0f}%" for i, m in enumerate(masks))
                    yield ev.images, text
        except Cancelled as exc:
            yield gr.skip(), stopped_text(exc, "Stopped.")

    @user_errors
    def preview(self, files):
        """Thumbnails of the uploads, with a clear error for anything that is not an image."""
        out = []
        for i, p in enumerate(v.files(files, "Images", MAX_TRAIN_IMAGES)):
            out.append(adain.load_image(p, what=f"image {i + 1} ({Path(p).name[:60]})", max_side=256))
        return out

    @user_errors
    def regions_background(self, content_files):
        """Put the first content image under the mask editor."""
        paths = v.files(content_files, "Content image(s)", MAX_CONTENTS)
        if not paths:
            return None
        im = adain.load_image(paths[0], what="content image", max_side=768)
        return {"background": im, "layers": [], "composite": im}

    @user_errors
    def refresh_decoders(self, current, visitor=None, request: gr.Request = None):
        choices = self.decoder_choices(self.owner(request, visitor))
        return gr.update(choices=choices, value=current if current in choices else DEFAULT_DECODER)

    # --- webcam --------------------------------------------------------------------------
    def _style_feats(self, model, styles: list, size: int) -> list:
        key = (id(model), tuple(str(s) for s in styles), size)
        with self._lock:
            if key not in self._style_cache:
                tens = [adain.to_tensor(adain.prepare(s, size, what=f"style image {i + 1}",
                                                      max_side=self.max_side))
                        for i, s in enumerate(styles)]
                if len(self._style_cache) > 16:
                    self._style_cache.clear()
                self._style_cache[key] = adain.encode_styles(model, tens)
            return self._style_cache[key]

    @user_errors
    def webcam(self, frame, style_files, weights_text, alpha, size, decoder, state, visitor=None,
               request: gr.Request = None):
        state = dict(state) if isinstance(state, dict) else {}
        alpha_f = v.real(alpha, "alpha", 0, 1)
        size = v.whole(size, "Frame size", 16, min(self.max_side, 768))
        decoder = self.check_decoder(decoder)
        styles = v.files(style_files, "Style image(s)", MAX_STYLES)
        weights_text = v.text(weights_text, "Style weights", 500)
        caller = self.ctx.caller(request, visitor)
        if frame is None:
            return None, "Waiting for the webcam...", state
        if not styles:
            raise UserError("Upload at least one style image (in the Transfer panel) first.")
        weights = parse_weights(weights_text, len(styles))
        model = self.model(decoder, caller.owner)
        img = adain.prepare(frame, size, what="webcam frame", max_side=self.max_side)
        slot = self.ctx.engine.gpu_lock
        job = Job(caller.stop_key, "adain-webcam")
        if not slot.try_acquire(job):  # a frame never queues behind a long job: it is shown as it is
            return img, "The accelerator is busy with another job; frames are styled again when it is free.", state
        try:
            feats = self._style_feats(model, styles, size)
            x = adain.to_tensor(img)
            t0 = time.perf_counter()
            out = adain.stylize_frame(model, x, feats, weights, alpha_f)
            if out.device.type == "cuda":
                torch.cuda.synchronize(out.device)
            model_s = time.perf_counter() - t0
        finally:
            slot.release(job)
        now = time.time()
        times = [t for t in state.get("times", []) if isinstance(t, float) and now - t < 3.0] + [now]
        state["times"] = times
        stream_fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        ema = state.get("model_ms")
        state["model_ms"] = model_s * 1000 if not isinstance(ema, float) else 0.8 * ema + 0.2 * model_s * 1000
        text = (f"**{stream_fps:.1f} FPS** on screen · model {1000 / state['model_ms']:.1f} FPS "
                f"({state['model_ms']:.0f} ms per {img.width}x{img.height} frame, "
                f"{self.device.type})")
        return adain.to_image(out), text, state

    # --- training ------------------------------------------------------------------------
    def _stage(self, files, folder: Path, what: str) -> Path:
        """Each upload decoded, checked and written again as a PNG under our own name (never
        the uploaded bytes or extension) into the run folder, which is returned."""
        paths = v.files(files, f"{what.capitalize()} images", MAX_TRAIN_IMAGES)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():  # a resumed run trains on this upload, not on the last one's
            if old.is_file():
                old.unlink()
        for i, p in enumerate(paths):
            img = load_image(p, what=f"{what} image {i + 1} ({Path(p).name[:60]})", max_side=TRAIN_IMAGE_SIDE)
            with atomic_path(folder / f"{i:05d}.png") as tmp:
                img.save(tmp, format="PNG")
        return folder

    @user_errors
    def train(self, content_files, style_files, content_dir, style_dir, run_name, steps,
              batch_size, resize, crop, sample_every, save_every, resume, visitor=None,
              request: gr.Request = None):
        steps_n = v.whole(steps, "Steps", 1, MAX_TRAIN_STEPS)
        batch_n = v.whole(batch_size, "Batch", 1, 32)
        resize_n = v.whole(resize, "Resize shorter side to", 16, 1024)
        crop_n = v.whole(crop, "Random crop", 16, 1024)
        sample_n = v.whole(sample_every, "Samples every N steps", 1, MAX_TRAIN_STEPS)
        save_n = v.whole(save_every, "Checkpoint every N steps", 1, MAX_TRAIN_STEPS)
        resume_b = v.flag(resume, "Resume from the run's checkpoint")
        run_name = v.text(run_name, "Run name", 64)
        content_dir, style_dir = v.text(content_dir, "Content folder", 4096), v.text(style_dir, "Style folder", 4096)
        v.files(content_files, "Content images", MAX_TRAIN_IMAGES)
        v.files(style_files, "Style images", MAX_TRAIN_IMAGES)
        caller = self.ctx.caller(request, visitor)
        name = run_name.strip() or time.strftime("decoder-%Y%m%d-%H%M%S")
        if not _RUN_NAME.match(name):
            raise UserError("The run name may hold letters, digits, '-', '_' and '.' (max 64), "
                            "starting with a letter or digit.")
        if crop_n > resize_n:
            raise UserError(f"Random crop ({crop_n}) cannot exceed the resize size ({resize_n}).")
        allow_dirs = bool(getattr(self.ctx.args, "allow_server_paths", False)) and not self.ctx.shared
        if (content_dir.strip() or style_dir.strip()) and not allow_dirs and not (content_files and style_files):
            raise UserError("Reading folders on the server is off: upload the images, or start the "
                            "app with --allow-server-paths (never on a shared instance).")
        run = self.runs_for(caller.owner) / name  # the owner's own run: nobody else resumes it
        if content_files:
            cdir = self._stage(content_files, run / "content", "content")
        elif content_dir.strip():
            cdir = Path(content_dir.strip()).expanduser()
        else:
            raise UserError("Upload content images or give a content folder on the server.")
        if style_files:
            sdir = self._stage(style_files, run / "style", "style")
        elif style_dir.strip():
            sdir = Path(style_dir.strip()).expanduser()
        else:
            raise UserError("Upload style images or give a style folder on the server.")
        cfg = adain.TrainConfig(
            content_dir=str(cdir), style_dir=str(sdir), out_dir=str(run), steps=steps_n,
            batch_size=batch_n, resize=resize_n, crop=crop_n, sample_every=sample_n, save_every=save_n,
            log_every=max(1, min(10, sample_n)), resume=resume_b,
            tiny=self.tiny, weights=None if self.tiny else self.weights_spec(),
            device=str(self.device))
        # offline full-size family: the paper's network with random weights
        start_model = (adain.tiny_model(seed=0, width=1.0)
                       if not self.tiny and cfg.weights == adain.RANDOM_WEIGHTS else None)

        def work(ctx):
            result = None
            # a Stop (or the time limit) makes the trainer checkpoint and return its Result
            for ev in adain.train_decoder(cfg, model=start_model, should_stop=ctx.job.cancelled.is_set):
                if isinstance(ev, Result):
                    result = ev
                    result.info["stop_reason"] = ctx.job.reason
                    continue
                ctx.emit(_Samples(ev) if ev.preview else ev)
            return result

        history: list[dict] = []
        try:
            for item in self.ctx.engine.run(work, stop_key=caller.stop_key, kind="adain-train", needs_model=False):
                ev = item.progress if isinstance(item, _Samples) else item
                if isinstance(ev, Progress):
                    if ev.metrics:
                        history.append({"step": ev.step, **ev.metrics})
                    # no empty frame: the plot would fix an empty colour domain and draw no lines;
                    # samples are only sent when new ones were made
                    yield (loss_frame(history) if history else gr.update(),
                           ev.preview if ev.preview else gr.update(), ev.message or "training...", gr.update())
                    continue
                if not isinstance(ev, Result):
                    continue
                history = [r for r in ev.info["history"]
                           if r["step"] % cfg.log_every == 0 or r["step"] == ev.info["step"]]
                word = "Stopped" if ev.info["cancelled"] else "Finished"
                reason = ev.info.get("stop_reason")
                prefix = f"**{reason}**\n\n" if reason else ""
                if not Path(ev.info["decoder"]).is_file():
                    yield (gr.update(), ev.images,
                           f"{prefix}{word} before the first step; nothing was saved.", gr.update())
                    return
                yield (loss_frame(history) if history else gr.update(), ev.images,
                       f"{prefix}{word} at step {ev.info['step']}; decoder saved as run '{name}'. "
                       "Pick it in the Decoder list to use it.",
                       gr.update(choices=self.decoder_choices(caller.owner), value=name))
        except Cancelled as exc:  # stopped while it waited for the accelerator
            yield gr.update(), gr.update(), stopped_text(exc, "Stopped before the first step; nothing was saved."), \
                gr.update()

    def stop(self, request: gr.Request):
        """Stop this page's AdaIN job (a training run checkpoints first)."""
        n = self.ctx.engine.cancel(session_key(request))
        return "Stopping after this step; the checkpoint is being written..." if n else "Nothing is running."


def build(ctx: AppContext) -> None:
    # one container with an id, so browser tests (and CSS) can find this tab's widgets
    with gr.Column(elem_id="adain-tab"):
        _build(ctx)


def _build(ctx: AppContext) -> None:
    tab = AdaINTab(ctx)
    # Who owns the trained decoders: "local" on a private instance, the visitor id kept in the
    # browser on a shared one, a logged-in user by name (as in tabs/personalize.py). Every
    # handler that lists, uses or trains decoders takes it as its last input.
    visitor = ctx.visitor if ctx.visitor is not None else gr.State(None)
    gr.Markdown("Real-time arbitrary style transfer with **AdaIN** (Huang & Belongie 2017): the "
                "content's VGG features take each style's channel mean and spread, and a learned "
                "decoder turns them back into an image." +
                (" *Tiny offline mode: random weights, the output is noise-like.*"
                 if tab.tiny else ""))
    with gr.Tab("Transfer"):
        with gr.Row():
            with gr.Column():
                contents = gr.File(label="Content image(s) - several for a batch",
                                   file_count="multiple", file_types=["image"], type="filepath")
                contents_pv = gr.Gallery(label="Contents", columns=4, height=140,
                                         interactive=False)
                styles = gr.File(label="Style image(s)", file_count="multiple",
                                 file_types=["image"], type="filepath")
                styles_pv = gr.Gallery(label="Styles", columns=4, height=140, interactive=False)
                weights = gr.Textbox(label="Style weights (one per style, e.g. 0.7, 0.3; "
                                     "empty = equal)", placeholder="equal")
                alpha = Slider(0, 1, value=1.0, step=0.05,
                                  label="alpha: content (0) to style (1)")
                preserve = gr.Checkbox(label="Preserve the content's colours")
                size = Slider(64, tab.max_side, value=512, step=32,
                                 label=f"Output size, longer side (max {tab.max_side})")
                # a shared instance lists each visitor's own decoders once their page loads
                decoder = Dropdown([DEFAULT_DECODER] if ctx.shared else tab.decoder_choices(),
                                      value=DEFAULT_DECODER,
                                      label="Decoder", allow_custom_value=True)
                with gr.Accordion("Regions: a style per painted area", open=False):
                    use_regions = gr.Checkbox(label="Use painted regions")
                    gr.Markdown("Paint layer 1 where style 1 goes, layer 2 for style 2, ...; "
                                "the unpainted area takes the next style.")
                    regions = ImageEditor(label="Regions", type="numpy", sources=(),
                                             layers=gr.LayerOptions(layers=["Style 1"]),
                                             transforms=(), height=360)
                run_btn = gr.Button("Stylize", variant="primary")
            with gr.Column():
                gallery = gr.Gallery(label="Stylized", columns=2, format="png")
                info = gr.Markdown()
    with gr.Tab("Webcam"):
        gr.Markdown("Streams your webcam through the model with the styles from the Transfer "
                    "panel.")
        with gr.Row():
            cam = Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam")
            cam_out = gr.Image(label="Stylized", type="pil", format="jpeg")
        with gr.Row():
            cam_size = Slider(64, min(tab.max_side, 768), value=256, step=32,
                                 label="Frame size")
            fps = gr.Markdown("FPS appears here once the stream runs.")
        cam_state = gr.State({})
    with gr.Tab("Train your own decoder"):
        with gr.Row():
            with gr.Column():
                t_contents = gr.File(label="Content images (e.g. photos)", file_count="multiple",
                                     file_types=["image"], type="filepath")
                t_styles = gr.File(label="Style images (e.g. paintings)", file_count="multiple",
                                   file_types=["image"], type="filepath")
                with gr.Accordion("...or folders on the server", open=False,
                                  visible=bool(getattr(ctx.args, "allow_server_paths", False))):
                    t_cdir = gr.Textbox(label="Content folder (e.g. MS-COCO train2014)")
                    t_sdir = gr.Textbox(label="Style folder (e.g. WikiArt)")
                run_name = gr.Textbox(label="Run name (a new one, or an old one to resume)")
                with gr.Row():
                    steps = Number(value=200 if tab.tiny else 160_000, precision=0,
                                      label="Steps", minimum=1)
                    batch = Number(value=8, precision=0, label="Batch", minimum=1)
                with gr.Accordion("Recipe (the paper's defaults)", open=False):
                    resize = Number(value=512, precision=0, label="Resize shorter side to")
                    crop = Number(value=256, precision=0, label="Random crop")
                    sample_every = Number(value=20 if tab.tiny else 500, precision=0,
                                             label="Samples every N steps")
                    save_every = Number(value=50 if tab.tiny else 1000, precision=0,
                                           label="Checkpoint every N steps")
                    resume = gr.Checkbox(value=True, label="Resume from the run's checkpoint")
                    gr.Markdown("Loss = content (on the AdaIN target) + 10 x style (mean/std at "
                                "relu1_1..relu4_1); Adam, lr 1e-4 / (1 + 5e-5 x step).")
                with gr.Row():
                    train_btn = gr.Button("Train", variant="primary")
                    stop_btn = gr.Button("Stop", variant="stop")
            with gr.Column():
                curve = gr.LinePlot(x="step", y="value", color="term", label="Loss",
                                    height=320)
                t_samples = gr.Gallery(label="content / style / transfer", columns=3,
                                       height=220)
                t_status = gr.Markdown()

    private = dict(api_visibility="private", show_progress="hidden")
    contents.change(tab.preview, contents, contents_pv, api_name="adain_contents", **private)
    contents.change(tab.regions_background, contents, regions, api_name="adain_regions",
                    **private)
    styles.change(tab.preview, styles, styles_pv, api_name="adain_styles", **private)
    # decoders trained in other sessions (or before a restart) show up when the list opens
    decoder.focus(tab.refresh_decoders, [decoder, visitor], decoder, api_name="adain_decoders",
                  **private)
    root = getattr(gr.context.Context, "root_block", None)
    if root is not None and hasattr(root, "load"):  # this owner's decoders when a page opens
        root.load(tab.refresh_decoders, [decoder, visitor], decoder, queue=False,
                  api_visibility="private")
    run_btn.click(gpu(duration=60)(tab.transfer),
                  [contents, styles, weights, alpha, preserve, use_regions, regions, size, decoder,
                   visitor],
                  [gallery, info], api_name="adain", **GPU)
    cam.stream(gpu(duration=30)(tab.webcam),
               [cam, styles, weights, alpha, cam_size, decoder, cam_state, visitor],
               [cam_out, fps, cam_state], stream_every=0.1, time_limit=300,
               show_progress="hidden", api_name="adain_webcam", **GPU)
    train_btn.click(gpu(duration=1800)(tab.train),
                    [t_contents, t_styles, t_cdir, t_sdir, run_name, steps, batch, resize, crop,
                     sample_every, save_every, resume, visitor],
                    [curve, t_samples, t_status, decoder], api_name="adain_train", **GPU)
    # no output: the job itself reports "Stopped at step N" as its last update (a reply from
    # this handler could land after that line and overwrite it)
    stop_btn.click(tab.stop, None, None, api_name="adain_stop", queue=False)
