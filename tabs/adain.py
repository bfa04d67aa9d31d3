"""AdaIN Transfer tab: real-time arbitrary style transfer (Huang & Belongie 2017).

Validation, rendering and layout only; the method lives in core/adain.py, the runs, weights and
jobs in core/adain_runs.py. Three panels:

- Transfer (api_name="adain"): content images (a batch), style images with a weight each,
  alpha, colour preservation, optional regions painted in a mask editor (one layer per style),
  output size with a safe maximum, and the decoder to use (published/tiny, or one you trained).
- Webcam: streamed frames styled live, with the measured frames per second.
- Train your own decoder: uploads or server folders, the paper's recipe (smaller in tiny mode,
  core.adain_runs.TINY_PRESET), a streamed loss curve and sample transfers, Stop (after the
  first checkpoint the state so far is checkpointed; before it nothing is kept).

Trained decoders belong to their owner (tabs.common.owner_key): each owner lists, uses and
trains only their own (core.adain_runs keeps them in separate folders).
"""
import re
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from core import adain, adain_runs
from core import styles as library_styles
from core import validate as v
from core.adain_runs import BUILT_IN, DecoderSamples, DecoderTraining, DecoderSettings
from core.errors import UserError
from core.events import Progress, Result
from tabs.common import (GPU, WEBCAM, AppContext, JobClock, LossPlotAxes, Tab, about, example, gpu, job_updates,
                         md_text, saved_style_text, session_key, status_text, user_errors)
from tabs.widgets import Dropdown, Image, ImageEditor, Number, Slider

TITLE = "AdaIN Transfer"

DEFAULT_DECODER = BUILT_IN

# Bounds on one request's work (every instance; a shared one also has a time limit per job)
MAX_CONTENTS = 16          # content images styled in one Transfer
MAX_STYLES = 8             # style images mixed at once
MAX_TRAIN_IMAGES = 200     # uploaded images per training set
MAX_TRAIN_STEPS = 200_000  # the paper trains 160,000
GALLERY_EVERY_S = 1.0      # how often a Transfer re-sends its growing gallery

# (content images, style images): one click fills the Transfer panel with our own example images
EXAMPLES = [(["content-house.png"], ["style-waves.png"]), (["content-cat.png"], ["style-mosaic.png"]),
            (["content-house.png", "content-cat.png"], ["style-ink.png"])]
TRAIN_EXAMPLE = (["content-house.png", "content-cat.png"], ["style-waves.png", "style-mosaic.png", "style-ink.png"])

SUMMARY = ("**Restyle a photo with any style image, instantly.** Upload a content image and a style image, "
           "then Stylize; no training needed (you can train your own decoder below).")
ABOUT = ("AdaIN (Huang & Belongie, ICCV 2017), real-time arbitrary style transfer: a fixed VGG-19 encodes the "
         "content and the style; adaptive instance normalization gives the content's features each style's "
         "channel mean and spread (at relu4_1); a learned decoder turns them back into an image. alpha blends "
         "the AdaIN features with the content's own (0 = the content, 1 = full style); several styles mix by "
         "their weights; painted regions give each style its own area; colour preservation matches the style "
         "image's colours to the content's first. Training a decoder: loss = content (on the AdaIN target) + "
         "10 x style (mean and spread at relu1_1..relu4_1), Adam with lr 1e-4 / (1 + 5e-5 x step); the paper "
         "trains batch 8 of 256 px crops (of images resized to 512) for 160,000 steps on MS-COCO and WikiArt.")
# The decoder presets' duration: measured on this project's CPU for the tiny preset (bench/adain.py);
# for the paper's recipe, an estimate, not a measurement.
TINY_NOTE = ("*Tiny offline mode: random weights, the output is noise-like. The tiny training preset takes "
             "about half a minute on a 2-core CPU.*")
PAPER_TIME = ("The paper's recipe (160,000 steps) is a long job: many hours on one GPU (an estimate, not "
              "measured here); a few thousand steps already give a usable decoder.")


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


def fps_text(state: dict, model_s: float, size: tuple[int, int], device: str) -> tuple[str, dict]:
    """The webcam read-out: frames per second on screen (from the arrival times of the last 3 s)
    and of the model alone (a running average); returns it and the page's new state."""
    now = time.time()
    times = [t for t in state.get("times", []) if isinstance(t, float) and now - t < 3.0] + [now]
    stream_fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    ema = state.get("model_ms")
    model_ms = model_s * 1000 if not isinstance(ema, float) else 0.8 * ema + 0.2 * model_s * 1000
    text = (f"**{stream_fps:.1f} FPS** on screen · model {1000 / model_ms:.1f} FPS "
            f"({model_ms:.0f} ms per {size[0]}x{size[1]} frame, {device})")
    return text, {**state, "times": times, "model_ms": model_ms}


class AdaINTab(LossPlotAxes, Tab):
    """The handlers, bound to one app context (tests call them directly)."""

    title = TITLE
    api_prefix = "adain"
    max_steps = MAX_TRAIN_STEPS

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.webcam_stylizer = adain_runs.WebcamStylizer()

    # ------------------------------------------------------------------ the engine and the owner's decoders
    @property
    def tiny(self) -> bool:
        return adain_runs.is_tiny(self.engine)

    @property
    def max_side(self) -> int:
        return adain_runs.max_side(self.engine)

    @property
    def preset(self) -> DecoderSettings:
        return adain_runs.preset(tiny=self.tiny)

    def decoder_choices(self, owner: str = adain_runs.LOCAL) -> list[str]:
        return adain_runs.decoder_choices(self.ctx.data_dir, owner=owner)

    def model(self, decoder=None, owner: str = adain_runs.LOCAL) -> adain.AdaINNet:
        return adain_runs.model_for(self.engine, data_dir=self.ctx.data_dir, decoder=decoder, owner=owner,
                                    weights=getattr(self.ctx.args, "adain_weights", None))

    # ------------------------------------------------------------------ transfer
    @user_errors
    @gpu(duration=60)
    def transfer(self, content_files, style_files, weights_text, alpha, preserve_color, use_regions, regions,
                 size, decoder, visitor=None, library_style=None, request: gr.Request = None):
        """The styled images, streamed: (gallery, status). `library_style`: a library style whose
        images (core.styles.images_of) join the uploaded style images."""
        alpha_f = v.real(alpha, "alpha", 0, 1)
        size_n = v.whole(size, "Output size", 16, self.max_side, default=0) or None  # empty: as large as the content
        preserve_b = v.flag(preserve_color, "Preserve the content's colours")
        regions_b = v.flag(use_regions, "Use painted regions")
        decoder = adain_runs.check_decoder(decoder)
        contents = v.files(content_files, "Content image(s)", MAX_CONTENTS)
        styles = v.files(style_files, "Style image(s)", MAX_STYLES)
        weights_text = v.text(weights_text, "Style weights", 500)
        caller = self.caller(request, visitor)
        picked, _ = self.library_style(library_style, 1.0, caller.owner)
        if picked is not None:
            found = library_styles.images_of(self.engine, picked, owner=caller.owner)
            if not found:
                raise UserError(f"The library style {md_text(picked.name)} keeps no images to take a style from.")
            styles = [*styles, *found]
            if len(styles) > MAX_STYLES:
                raise UserError(f"Style image(s): {len(styles)} with the library style's; at most {MAX_STYLES}.")
        if not contents:
            raise UserError("Upload at least one content image.")
        if not styles:
            raise UserError("Upload at least one style image (or pick a library style).")
        weights = parse_weights(weights_text, len(styles))
        masks = masks_from_editor(regions, len(styles)) if regions_b else None
        req = adain.TransferRequest(contents, styles, weights, alpha_f, preserve_b, masks, size_n, self.max_side)
        events = adain_runs.transfer(self.engine, self.model(decoder, caller.owner), req, stop_key=caller.stop_key)
        yield from self._transfer_updates(events, masks)

    def _transfer_updates(self, events, masks):
        done: list = []
        last = 0.0
        for u in job_updates(events, stopped="Stopped."):
            ev = u.event
            if isinstance(ev, Result):
                yield ev.images, self._transfer_text(ev, masks)
            elif isinstance(ev, Progress) and ev.total:
                done.extend(ev.preview or [])
                now = time.monotonic()
                if now - last >= GALLERY_EVERY_S:  # not the whole gallery on every image
                    last = now
                    yield list(done), f"Styled {ev.step}/{ev.total}..."
                else:
                    yield gr.skip(), f"Styled {ev.step}/{ev.total}..."
            else:  # waiting for the accelerator, or stopped
                yield gr.skip(), u.status

    def _transfer_text(self, result: Result, masks) -> str:
        per = result.info["seconds"] / max(len(result.images), 1)
        w, h = result.images[0].size
        text = (f"Done: {len(result.images)} image(s) at {w}x{h}, "
                f"{per * 1000:.0f} ms each on {adain_runs.device_of(self.engine).type}.")
        if masks is not None:
            text += " Regions: " + ", ".join(f"style {i + 1} {100 * float(m.mean()):.0f}%"
                                             for i, m in enumerate(masks))
        return text

    @user_errors
    def save_style(self, style_files, descriptor, name, visitor=None, request: gr.Request = None) -> str:
        """The uploaded style image(s) as a library style (described by `descriptor`)."""
        paths = v.files(style_files, "Style image(s)", MAX_STYLES)
        descriptor = v.text(descriptor, "Style words (e.g. watercolor painting)", 300)
        name = v.text(name, "Style name", library_styles.MAX_NAME)
        caller = self.caller(request, visitor)
        if not paths:
            raise UserError("Upload the style image(s) to save first.")
        images = [adain.load_image(p, what=f"style image {i + 1}", max_side=1024) for i, p in enumerate(paths)]
        saved = library_styles.save_style(self.engine, owner=caller.owner, name=name, images=images, source="adain",
                                          descriptor=descriptor)
        return saved_style_text(saved)

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
        """The Decoder list of this page's owner (the current choice kept if it is still there)."""
        choices = self.decoder_choices(self.caller(request, visitor).owner)
        return gr.update(choices=choices, value=current if current in choices else DEFAULT_DECODER)

    # ------------------------------------------------------------------ webcam
    @user_errors
    @gpu(duration=30)
    def webcam(self, frame, style_files, weights_text, alpha, size, decoder, state, visitor=None,
               request: gr.Request = None):
        """One streamed frame: (styled frame, FPS read-out, the page's state)."""
        state = dict(state) if isinstance(state, dict) else {}
        alpha_f = v.real(alpha, "alpha", 0, 1)
        size = v.whole(size, "Frame size", 16, min(self.max_side, 768))
        decoder = adain_runs.check_decoder(decoder)
        styles = v.files(style_files, "Style image(s)", MAX_STYLES)
        weights_text = v.text(weights_text, "Style weights", 500)
        caller = self.caller(request, visitor)
        if frame is None:
            return None, "Waiting for the webcam...", state
        if not styles:
            raise UserError("Upload at least one style image (in the Transfer panel) first.")
        weights = parse_weights(weights_text, len(styles))
        model = self.model(decoder, caller.owner)
        img = adain.prepare(frame, size, what="webcam frame", max_side=self.max_side)
        styled = self.webcam_stylizer.stylize(self.engine, model, img, styles=styles, weights=weights,
                                              alpha=alpha_f, size=size, stop_key=caller.stop_key)
        if styled is None:  # a frame never queues behind a long job: it is shown as it is
            return img, "The accelerator is busy with another job; frames are styled again when it is free.", state
        out, model_s = styled
        text, state = fps_text(state, model_s, img.size, adain_runs.device_of(self.engine).type)
        return out, text, state

    # ------------------------------------------------------------------ training
    def _settings(self, steps, batch_size, resize, crop, sample_every, save_every, resume) -> DecoderSettings:
        settings = DecoderSettings(
            steps=v.whole(steps, "Steps", 1, MAX_TRAIN_STEPS), batch_size=v.whole(batch_size, "Batch", 1, 32),
            resize=v.whole(resize, "Resize shorter side to", 16, 1024), crop=v.whole(crop, "Random crop", 16, 1024),
            sample_every=v.whole(sample_every, "Samples every N steps", 1, MAX_TRAIN_STEPS),
            save_every=v.whole(save_every, "Checkpoint every N steps", 1, MAX_TRAIN_STEPS),
            resume=v.flag(resume, "Resume from the run's checkpoint"))
        if settings.crop > settings.resize:
            raise UserError(f"Random crop ({settings.crop}) cannot exceed the resize size ({settings.resize}).")
        return settings

    @user_errors
    @gpu(duration=1800)
    def train(self, content_files, style_files, content_dir, style_dir, run_name, steps, batch_size, resize,
              crop, sample_every, save_every, resume, visitor=None, request: gr.Request = None):
        """A decoder training run, streamed: (loss plot, samples, status, Decoder list)."""
        settings = self._settings(steps, batch_size, resize, crop, sample_every, save_every, resume)
        run_name = v.text(run_name, "Run name", 64)
        content_dir, style_dir = v.text(content_dir, "Content folder", 4096), v.text(style_dir, "Style folder", 4096)
        contents = v.files(content_files, "Content images", MAX_TRAIN_IMAGES)
        styles = v.files(style_files, "Style images", MAX_TRAIN_IMAGES)
        caller = self.caller(request, visitor)
        name = adain_runs.check_run_name(run_name)
        allow_dirs = bool(getattr(self.ctx.args, "allow_server_paths", False)) and not self.ctx.shared
        if (content_dir.strip() or style_dir.strip()) and not allow_dirs and not (contents and styles):
            raise UserError("Reading folders on the server is off: upload the images, or start the "
                            "app with --allow-server-paths (never on a shared instance).")
        run_dir = adain_runs.runs_for(self.ctx.data_dir, owner=caller.owner) / name  # nobody else resumes it
        cdir = adain_runs.training_images(run_dir, uploads=contents, server_dir=content_dir, what="content")
        sdir = adain_runs.training_images(run_dir, uploads=styles, server_dir=style_dir, what="style")
        cfg = adain_runs.train_config(self.engine, run_dir=run_dir, content_dir=cdir, style_dir=sdir,
                                      settings=settings, weights=getattr(self.ctx.args, "adain_weights", None))
        events = adain_runs.train(self.engine, cfg, run=name, stop_key=caller.stop_key)
        yield from self._training_updates(events, log_every=cfg.log_every, owner=caller.owner)

    def _training_updates(self, events, *, log_every: int, owner: str):
        history: list[dict] = []
        clock = JobClock()  # elapsed and time left on the lines with samples too

        def line(ev):
            return status_text(ev.progress, clock) if isinstance(ev, DecoderSamples) else None

        for u in job_updates(events, stopped="Stopped before the first step; nothing was saved.", line=line):
            ev = u.event.progress if isinstance(u.event, DecoderSamples) else u.event
            if isinstance(ev, Progress):
                if ev.metrics:
                    history.append({"step": ev.step, **ev.metrics})
                # no empty frame: the plot would fix an empty colour domain and draw no lines;
                # samples are only sent when new ones were made
                yield (loss_frame(history) if history else gr.update(),
                       ev.preview if ev.preview else gr.update(), u.status, gr.update())
            elif isinstance(ev, DecoderTraining):
                history = [r for r in ev.history if r["step"] % log_every == 0 or r["step"] == ev.step]
                yield (loss_frame(history) if history else gr.update(), list(ev.samples), self._finished_text(ev),
                       gr.update(choices=self.decoder_choices(owner), value=ev.run) if ev.decoder else gr.update())
            elif u.stopped:  # stopped while it waited for the accelerator
                yield gr.update(), gr.update(), u.status, gr.update()

    @staticmethod
    def _finished_text(run: DecoderTraining) -> str:
        word = "Stopped" if run.cancelled else "Finished"
        prefix = f"**{run.stop_reason}**\n\n" if run.stop_reason else ""
        if run.decoder is None and run.step == 0:
            return f"{prefix}{word} before the first step; nothing was saved."
        if run.decoder is None:
            return (f"{prefix}{word} at step {run.step}, before the first checkpoint; nothing was saved "
                    "(a Stop keeps the run once it has a checkpoint).")
        return (f"{prefix}{word} at step {run.step}; decoder saved as run '{run.run}'. "
                "Pick it in the Decoder list to use it.")

    def stop(self, request: gr.Request = None) -> str:
        """Stop this page's AdaIN job (a training run past its first checkpoint checkpoints first)."""
        n = self.engine.cancel(session_key(request))
        return "Stopping after this step..." if n else "Nothing is running."

    # ------------------------------------------------------------------ layout and wiring
    def build(self) -> None:
        # one container with an id, so browser tests (and CSS) can find this tab's widgets
        with gr.Column(elem_id="adain-tab"):
            about(SUMMARY + (f"\n\n{TINY_NOTE}" if self.tiny else ""), ABOUT)
            with gr.Tab("Transfer"):
                transfer = self._transfer_panel()
            with gr.Tab("Webcam"):
                webcam = self._webcam_panel()
            with gr.Tab("Train your own decoder"):
                training = self._train_panel()
        self._wire(transfer, webcam, training)

    def _transfer_panel(self) -> dict:
        w = {}
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    w["contents"] = gr.File(label="Content image(s) - several for a batch", file_count="multiple",
                                            file_types=["image"], type="filepath", height=120,
                                            elem_id="adain-contents")
                    w["styles"] = gr.File(label="Style image(s)", file_count="multiple", file_types=["image"],
                                          type="filepath", height=120, elem_id="adain-styles")
                with gr.Row():
                    w["contents_pv"] = self._preview_gallery("Contents")
                    w["styles_pv"] = self._preview_gallery("Styles")
                w["run"] = gr.Button("Stylize", variant="primary", elem_id="adain-run")
                w["alpha"] = Slider(0, 1, value=1.0, step=0.05, label="alpha: content (0) to style (1)")
                # a shared instance lists each visitor's own decoders once their page loads
                w["decoder"] = Dropdown([DEFAULT_DECODER] if self.ctx.shared else self.decoder_choices(),
                                        value=DEFAULT_DECODER, label="Decoder", allow_custom_value=True)
                with gr.Accordion("More settings: weights, colours, size", open=False):
                    w["weights"] = gr.Textbox(label="Style weights (one per style, e.g. 0.7, 0.3; empty = equal)",
                                              placeholder="equal")
                    w["preserve"] = gr.Checkbox(label="Preserve the content's colours")
                    w["size"] = Slider(64, self.max_side, value=512, step=32,
                                       label=f"Output size, longer side (max {self.max_side})")
                w["library_style"], = self.library_style_inputs(
                    "adain", "A style saved from any tab (or a StyleDrop adapter's or a B-LoRA's own image): its "
                             "images are style images here, after any you upload.", weight=False)
                w["save"] = self.save_style_inputs("adain", "The uploaded style image(s) as a style of your own, "
                                                           "usable in the other tabs (as a Style-Aligned reference).",
                                                   words=True)
                with gr.Accordion("Regions: a style per painted area", open=False):
                    w["use_regions"] = gr.Checkbox(label="Use painted regions")
                    gr.Markdown("Paint layer 1 where style 1 goes, layer 2 for style 2, ...; "
                                "the unpainted area takes the next style.")
                    w["regions"] = ImageEditor(label="Regions", type="numpy", sources=(),
                                               layers=gr.LayerOptions(layers=["Style 1"]), transforms=(), height=360)
            with gr.Column():
                w["info"] = gr.Markdown(elem_id="adain-info")
                w["gallery"] = gr.Gallery(label="Stylized", columns=2, format="png", height=420,
                                          object_fit="contain", elem_id="adain-gallery")
        gr.Examples([[[example(n) for n in c], [example(n) for n in st]] for c, st in EXAMPLES],
                    [w["contents"], w["styles"]], label="Examples: click one, then Stylize",
                    examples_per_page=len(EXAMPLES), elem_id="adain-examples",
                    example_labels=[" + ".join(n.removesuffix(".png") for n in c + st) for c, st in EXAMPLES])
        return w

    @staticmethod
    def _preview_gallery(label: str):
        """Thumbnails of the uploads, each shown whole (two across, never stretched to a strip)."""
        return gr.Gallery(label=label, columns=2, fit_columns=False, height=150, interactive=False,
                          object_fit="contain", allow_preview=False)

    def _webcam_panel(self) -> dict:
        w = {}
        gr.Markdown("Streams your webcam through the model with the styles from the Transfer panel.")
        with gr.Row():
            w["cam"] = Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam")
            w["out"] = gr.Image(label="Stylized", type="pil", format="jpeg")
        with gr.Row():
            w["size"] = Slider(64, min(self.max_side, 768), value=256, step=32, label="Frame size")
            w["fps"] = gr.Markdown("FPS appears here once the stream runs.")
        w["state"] = gr.State({})
        return w

    def _train_panel(self) -> dict:
        w, p = {}, self.preset
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    w["contents"] = gr.File(label="Content images (e.g. photos)", file_count="multiple",
                                            file_types=["image"], type="filepath", height=120,
                                            elem_id="adain-contents-train")
                    w["styles"] = gr.File(label="Style images (e.g. paintings)", file_count="multiple",
                                          file_types=["image"], type="filepath", height=120,
                                          elem_id="adain-styles-train")
                with gr.Accordion("...or folders on the server", open=False,
                                  visible=bool(getattr(self.ctx.args, "allow_server_paths", False))):
                    w["content_dir"] = gr.Textbox(label="Content folder (e.g. MS-COCO train2014)")
                    w["style_dir"] = gr.Textbox(label="Style folder (e.g. WikiArt)")
                w["run_name"] = gr.Textbox(label="Run name (a new one, or an old one to resume)")
                with gr.Row():
                    w["steps"] = Number(value=p.steps, precision=0, label="Steps", minimum=1)
                    w["batch"] = Number(value=p.batch_size, precision=0, label="Batch", minimum=1)
                self._recipe(w, p)
                with gr.Row():
                    w["train"] = gr.Button("Train", variant="primary")
                    w["stop"] = gr.Button("Stop", variant="stop")
            with gr.Column():
                w["curve"] = gr.LinePlot(x="step", y="value", color="term", label="Loss", height=320,
                                         **self.loss_axes(p.steps))
                w["samples"] = gr.Gallery(label="content / style / transfer", columns=3, height=220,
                                          object_fit="contain")
                w["status"] = gr.Markdown()
        gr.Examples([[[example(n) for n in TRAIN_EXAMPLE[0]], [example(n) for n in TRAIN_EXAMPLE[1]], "first-decoder"]],
                    [w["contents"], w["styles"], w["run_name"]], label="Example: click it, then Train",
                    elem_id="adain-train-examples", example_labels=["2 photos + 3 styles, run 'first-decoder'"])
        return w

    def _recipe(self, w: dict, p: DecoderSettings) -> None:
        with gr.Accordion("Recipe (the paper's defaults)", open=False):
            w["resize"] = Number(value=p.resize, precision=0, label="Resize shorter side to")
            w["crop"] = Number(value=p.crop, precision=0, label="Random crop")
            w["sample_every"] = Number(value=p.sample_every, precision=0, label="Samples every N steps")
            w["save_every"] = Number(value=p.save_every, precision=0, label="Checkpoint every N steps")
            w["resume"] = gr.Checkbox(value=p.resume, label="Resume from the run's checkpoint")
            gr.Markdown("A Stop keeps the run once it has a checkpoint. " +
                        ("*Tiny mode: smaller than the paper's batch 8 of 256 px crops (of images resized to "
                         "512) for 160,000 steps, so a run takes well under a minute on a CPU.*"
                         if self.tiny else PAPER_TIME))

    def _wire(self, t: dict, cam: dict, tr: dict) -> None:
        private = dict(api_visibility="private", show_progress="hidden")
        visitor, decoder = self.visitor, t["decoder"]
        t["contents"].change(self.preview, t["contents"], t["contents_pv"], api_name="adain_contents", **private)
        t["contents"].change(self.regions_background, t["contents"], t["regions"], api_name="adain_regions",
                             **private)
        t["styles"].change(self.preview, t["styles"], t["styles_pv"], api_name="adain_styles", **private)
        # decoders trained in other sessions (or before a restart) show up when the list opens
        decoder.focus(self.refresh_decoders, [decoder, visitor], decoder, api_name="adain_decoders", **private)
        self.on_page_load(self.refresh_decoders, [decoder, visitor], decoder)  # this owner's decoders
        t["run"].click(self.transfer, [t["contents"], t["styles"], t["weights"], t["alpha"], t["preserve"],
                                       t["use_regions"], t["regions"], t["size"], decoder, visitor,
                                       t["library_style"]],
                       [t["gallery"], t["info"]], api_name="adain", **GPU)
        t["save"].button.click(self.save_style, [t["styles"], t["save"].words, t["save"].name, visitor],
                               t["save"].status, api_name="adain_save_style")
        cam["cam"].stream(self.webcam, [cam["cam"], t["styles"], t["weights"], t["alpha"], cam["size"], decoder,
                                        cam["state"], visitor],
                          [cam["out"], cam["fps"], cam["state"]], stream_every=0.1, time_limit=300,
                          show_progress="hidden", api_name="adain_webcam", **WEBCAM)
        tr["train"].click(self.train, [tr["contents"], tr["styles"], tr["content_dir"], tr["style_dir"],
                                       tr["run_name"], tr["steps"], tr["batch"], tr["resize"], tr["crop"],
                                       tr["sample_every"], tr["save_every"], tr["resume"], visitor],
                          [tr["curve"], tr["samples"], tr["status"], decoder], api_name="adain_train", **GPU)
        tr["steps"].change(self.update_loss_axes, tr["steps"], tr["curve"], queue=False, **private)
        # no output: the job itself reports "Stopped at step N" as its last update
        self.wire_stop(tr["stop"])


build = AdaINTab.mount  # the tab module's entry point (tabs/__init__.py)
