"""The B-LoRA Mix tab: separate the content and the style of one image, then recombine them
(Frenkel et al., ECCV 2024).

Widgets and wiring only: the method is core/blora.py (a recipe of the shared trainer core/train.py,
halves loaded by block into the resident UNet; the library's B-LoRAs with their thumbnails); B-LoRA
files in the authors' layout come in and go out through core/blora_exchange.py; the library is
core/library.py.
"""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

from core import blora, blora_exchange, ranking, styles
from core import validate as v
from core.errors import UserError
from core.events import Result
from core.train import MAX_STEPS

from .common import (CANDIDATES, GPU, AppContext, LossPlotAxes, Tab, about, best_of_inputs, deliver, example, gpu,
                     image_updates, md_text, ranked_gallery, saved_style_text, stream_training, user_errors)
from .widgets import Dropdown, Number, Radio, Slider

TITLE = "B-LoRA Mix"
CUSTOM = "Custom prompts"
WEIGHT_INFO = "Linear: 0.5 = half this half's LoRA update of 1.0."
WEIGHT_NOTE = ("Weights scale each half's LoRA update **linearly** (0.5 gives exactly half the change of 1.0); "
               "the reference implementation multiplies both LoRA matrices by the weight, so its change grows "
               "with the square of the weight.")
NEGATIVE_NOTE = ("No negative prompt on this tab: with any negative prompt, even an empty one, the unconditional "
                 "branch also passes through the B-LoRA's cross-attention and cancels most of its effect, so the "
                 "unconditional branch always uses zero embeddings, as in the paper.")
TRAIN_STOPPED = ("**Stopped.** B-LoRAs finished before the Stop are in the library; the last checkpoint of "
                 "the unfinished one (if any) is kept: train again with Resume on to continue.")
GENERATE_STOPPED = "**Stopped.** The images were not finished."
PREFERENCE = "Preference: content ↔ style"
EXAMPLES = [(["content-cat.png", "style-mosaic.png"],)]  # one B-LoRA each: the cat's content, the mosaic's style
SUMMARY = ("**Take the content of one image and the style of another.** Train a B-LoRA on each image (one click "
           "on the example, then Train), then mix one's content with another's style below.")
ABOUT = ("B-LoRA (Frenkel et al., ECCV 2024) learns one image with LoRA on just two blocks of SDXL's UNet, "
         f"trained together: `{blora.CONTENT_BLOCK}` learns its **content**, `{blora.STYLE_BLOCK}` its **style**. "
         "Each image becomes one library entry holding both halves; load the content half of one and the style "
         "half of another. The paper's recipe: prompt \"A [v]\", rank 64, lr 5e-5 constant, 1000 steps, batch 1, "
         "no prior preservation, text encoders frozen.\n\nThe paper's four uses ([c] = the content trigger, "
         "[s] = the style trigger):\n\n" + "\n".join(f"- **{u}**: {spec['help']}" for u, spec in blora.USES.items()))
# How long a preset trains one image: the tiny one measured on this project's 2-core CPU (30 steps:
# about 6 s per image); the paper's is an estimate, not a measurement.
PRESET_TIMES = {
    "Quick test (tiny models)": "about 6 s per image on a 2-core CPU (measured)",
    "Paper (SDXL, 1000 steps)": "roughly 10-20 min per image on one A100-class GPU (an estimate, not measured here)",
}


def preset_note(name: str) -> str:
    """How long a preset's run takes, as the page shows it under the preset."""
    return f"<small>Takes {PRESET_TIMES[name]}.</small>" if name in PRESET_TIMES else ""


# the export formats as the page names them -> core.blora_exchange's names
EXPORT_FORMATS = {
    "B-LoRA reference (diffusers)": blora_exchange.REFERENCE,
    "diffusers (this app's library format)": "diffusers",
    "kohya (A1111/ComfyUI)": "kohya",
}
EXPORT_NOTES = {
    blora_exchange.REFERENCE: "the B-LoRA authors' layout: their inference.py loads it as a content or a style B-LoRA",
    "diffusers": "this app's own format (peft keys with their alphas), for diffusers' load_lora_weights",
    "kohya": "the kohya format, for AUTOMATIC1111 and ComfyUI",
}
IMPORT_HELP = ("Import a B-LoRA trained by the authors' trainer (a diffusers .safetensors with LoRA weights on "
               f"{blora.CONTENT_BLOCK} and {blora.STYLE_BLOCK}, like the B-LoRAs published on the Hub): it becomes "
               "one library entry with both halves. Give the trigger it was trained with (its instance prompt "
               "\"A [v18]\" has the trigger [v18]).")

PRESET_FIELDS = ("steps", "learning_rate", "rank", "sample_every", "checkpoint_every", "gradient_checkpointing")


def _plot(history: list[dict]) -> pd.DataFrame | None:
    """The loss curve of the B-LoRA being trained (one series: gradio 6.31's LinePlot draws only
    the colour series present in its first non-empty value, and none at all after an empty frame,
    so a run over several images shows one image at a time)."""
    if not history:
        return None
    current = history[-1]["image"]
    return pd.DataFrame([{"step": h["step"], "loss": h["loss"]} for h in history if h["image"] == current])


def _plot_row(event, history: list[dict]) -> dict:
    """One curve per image: a new image restarts the step count."""
    image = 1 if not history else history[-1]["image"] + (event.step < history[-1]["step"])
    return {"step": event.step, "loss": event.loss, "image": image}


def _trained_line(result: Result) -> tuple[str, dict]:
    """The closing line of a training run, and the run as the page keeps it."""
    run = blora.BLoRATraining.from_result(result)
    made = "; ".join(f"**{md_text(a.adapter_name)}** (#{a.adapter_id}, trigger `{md_text(a.trigger)}`, "
                     f"loss on fixed draws {a.loss_before:.4f} → {a.loss_after:.4f})" for a in run.adapters)
    return (f"**Done.** Saved {made}; {run.adapters[0].trainable_params:,} trained parameters each.",
            run.as_info())


def _generated_line(result: Result) -> str:
    halves = ", ".join(f"{h['part']} #{h['adapter_id']} × {h['weight']:g}"
                       for h in result.info["halves"]) or "none (base model)"
    n = result.info.get("candidates", 1)
    best = (f" Best of {n} (preference {result.info['preference']:g}: 0 content, 1 style), best first; "
            "click one to use its seed." if n > 1 else "")
    return f"**Done.** {result.info['use']}: {halves}.{best}"


class BLoRATab(LossPlotAxes, Tab):
    title = TITLE
    api_prefix = "blora"
    max_steps = MAX_STEPS

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.default_preset = blora.default_preset(self.engine)

    # ------------------------------------------------------------------ handlers: training
    @user_errors
    def show_crops(self, files):
        """The training crops of the uploads, as the trainer will see them."""
        paths = v.files(files, "Images", blora.MAX_IMAGES)
        return blora.training_images(paths, self.engine.resolution) if paths else []

    def apply_preset(self, preset):
        """The training settings of a preset, in the order of PRESET_FIELDS."""
        settings = blora.preset_settings(preset, self.engine)
        return tuple(settings[k] for k in PRESET_FIELDS)

    @staticmethod
    def describe_preset(preset) -> str:
        """How long the preset's run takes (page helper; an unknown name: nothing)."""
        return preset_note(preset if isinstance(preset, str) else "")

    @user_errors
    @gpu(duration=600)
    def train(self, files, trigger, name, joint, steps, learning_rate, rank, sample_every, checkpoint_every,
              gradient_checkpointing, seed, resume, visitor=None, request: gr.Request = None):
        """Train one B-LoRA per image (or one from all), streamed: (status, loss plot, samples, run)."""
        config = blora.train_config(
            self.engine, steps=v.whole(steps, "Steps", 1, MAX_STEPS),
            learning_rate=v.real(learning_rate, "Learning rate", 1e-8, 0.1),
            gradient_checkpointing=v.flag(gradient_checkpointing, "Gradient checkpointing"),
            seed=v.seed(seed), sample_every=v.whole(sample_every, "Samples every N steps", 0, MAX_STEPS, default=0),
            checkpoint_every=v.whole(checkpoint_every, "Checkpoint every N steps", 0, MAX_STEPS, default=0),
            resume=v.flag(resume, "Resume"))
        rank_n = v.whole(rank, "LoRA rank", 1, 256)
        joint_b = v.flag(joint, "One B-LoRA from all images")
        trigger, name = v.text(trigger, "Trigger word", 50), v.text(name, "Name", 100)
        paths = v.files(files, "Images", blora.MAX_IMAGES)
        caller = self.caller(request, visitor)
        images = blora.training_images(paths, self.engine.resolution)
        yield "**Starting**", None, [], None
        events = blora.train_blora(self.engine, images, config, owner=caller.owner, stop_key=caller.stop_key,
                                   trigger=trigger.strip() or None, name=name, rank=rank_n, joint=joint_b)
        yield from stream_training(events, plot=_plot, row=_plot_row, finish=_trained_line, stopped=TRAIN_STOPPED)

    # ------------------------------------------------------------------ handlers: the library
    def library_view(self, owner: str, content=None, style=None):
        """(thumbnails, their ids, content picker, style picker): a pick that is no longer in the
        library is cleared."""
        entries = blora.library_entries(self.engine, owner=owner)
        choices = [(e.label, e.id) for e in entries]
        valid = {e.id for e in entries}
        shown = [e for e in entries if e.thumbnail is not None]
        return ([(e.thumbnail, e.label) for e in shown], [e.id for e in shown],
                gr.update(choices=choices, value=content if content in valid else None),
                gr.update(choices=choices, value=style if style in valid else None))

    @user_errors
    def library(self, content, style, visitor=None, request: gr.Request = None):
        """The visitor's B-LoRAs (thumbnails, ids) and the two pickers, keeping valid picks."""
        v.record_id(content, "Content half"), v.record_id(style, "Style half")
        return self.library_view(self.caller(request, visitor).owner, content, style)

    @user_errors
    def after_train(self, info, content, style, visitor=None, request: gr.Request = None):
        """The library after a run, with the newest B-LoRA in any picker that holds none."""
        v.record_id(content, "Content half"), v.record_id(style, "Style half")
        made = blora.BLoRATraining.from_info(info).adapters
        thumbs, ids, c, s = self.library_view(self.caller(request, visitor).owner, content, style)
        new = str(made[-1].adapter_id) if made else None
        if new is not None and new in ids:
            c = gr.update(choices=c["choices"], value=content if content in ids else new)
            s = gr.update(choices=s["choices"], value=style if style in ids else new)
        return thumbs, ids, c, s

    @user_errors
    def export_picker(self, entry, visitor=None, request: gr.Request = None):
        """The export picker's choices: the visitor's B-LoRAs (a pick no longer there is cleared)."""
        chosen = v.record_id(entry, "B-LoRA to export")
        owner = self.caller(request, visitor).owner
        choices = [(blora.label(a), str(a.id)) for a in blora.entries(self.engine, owner)]
        keep = str(chosen) if chosen is not None and str(chosen) in {c for _, c in choices} else None
        return gr.update(choices=choices, value=keep)

    @user_errors
    def import_blora(self, file, name, trigger, visitor=None, request: gr.Request = None) -> str:
        """A B-LoRA file of the reference trainer into the visitor's library, with both halves."""
        paths = v.files(file, "B-LoRA file", 1)
        name = v.text(name, "Name", 100)
        trigger = v.text(trigger, "Trigger word", 50)
        owner = self.caller(request, visitor).owner
        if not paths:
            raise UserError("B-LoRA file: choose a .safetensors B-LoRA file to import.")
        a = blora_exchange.import_reference(self.engine, paths[0], owner=owner, name=name, trigger=trigger)
        halves = ", ".join(f"{part} {len(keys) // 2} layers" for part, keys in a.parts.items())
        return (f"Imported **{md_text(a.name)}** (#{a.id}, rank {a.rank}; {halves}); pick it as a content or "
                "a style half below.")

    @user_errors
    def export(self, entry, fmt, visitor=None, request: gr.Request = None):
        """A library B-LoRA as a .safetensors download: (file, status)."""
        aid = v.record_id(entry, "B-LoRA to export")
        fmt = EXPORT_FORMATS[v.choice(fmt, "Export format", list(EXPORT_FORMATS))]
        owner = self.caller(request, visitor).owner
        if aid is None:
            raise UserError("B-LoRA to export: pick one from the list.")
        path = blora_exchange.export(self.engine, aid, owner=owner, fmt=fmt)
        return deliver(path), f"Exported **{md_text(path.name)}**: {EXPORT_NOTES[fmt]}."

    @user_errors
    def save_style(self, style, name, visitor=None, request: gr.Request = None) -> str:
        """The B-LoRA picked as the style half, as a library style (its style half, its image)."""
        aid = v.record_id(style, "Style half")
        name = v.text(name, "Style name", styles.MAX_NAME)
        owner = self.caller(request, visitor).owner
        if aid is None:
            raise UserError("Style half: pick the B-LoRA whose style to save.")
        return saved_style_text(styles.save_blora(self.engine, aid, owner=owner, name=name))

    @staticmethod
    def pick(ids, part, evt: gr.SelectData = None):
        """A click on a thumbnail picks its B-LoRA as the content or the style half."""
        if evt is None or not isinstance(evt.index, int) or not ids or not 0 <= evt.index < len(ids):
            return gr.skip(), gr.skip()
        chosen = ids[evt.index]
        return (chosen, gr.skip()) if part == "content" else (gr.skip(), chosen)

    # ------------------------------------------------------------------ handlers: generating
    @user_errors
    @gpu(duration=120)
    def generate(self, use, content, content_weight, style, style_weight, prompts, seed, steps, guidance,
                 visitor=None, candidates=1, preference=0.5, request: gr.Request = None):
        """Images from the halves picked, streamed: (gallery, status, halves used). A use (one of
        the paper's four) takes its own prompts; Custom takes `prompts`, one per line. Best of N:
        `candidates` per prompt ranked with `preference` (0 content .. 1 style); the two come
        after the visitor token, so that clients of the earlier endpoint keep working."""
        seed_n = v.seed(seed)
        n = v.whole(candidates, CANDIDATES, 1, ranking.MAX_CANDIDATES, default=1)
        preference_f = v.real(preference, PREFERENCE, 0, 1, default=0.5)
        steps_n = v.whole(steps, "Steps", 1, 100)
        guidance_f = v.real(guidance, "Guidance", 0, 20)
        content_w = v.real(content_weight, "Content weight", 0, 2, default=1.0)
        style_w = v.real(style_weight, "Style weight", 0, 2, default=1.0)
        content_id, style_id = v.record_id(content, "Content half"), v.record_id(style, "Style half")
        use = None if use in (None, "", CUSTOM) else v.choice(use, "Use", list(blora.USES))
        prompts = v.text(prompts, "Prompts", 10_000)
        caller = self.caller(request, visitor)
        lines = [] if use is not None else [ln for ln in prompts.splitlines() if ln.strip()]
        events = blora.generate(
            self.engine, use=use, content=(content_id, content_w) if content_id is not None else None,
            style=(style_id, style_w) if style_id is not None else None, prompts=lines, owner=caller.owner,
            stop_key=caller.stop_key, seed=seed_n, steps=steps_n, guidance=guidance_f, candidates=n,
            preference=preference_f, metrics=self.ctx.metrics)
        yield from image_updates(events, stopped=GENERATE_STOPPED, done=_generated_line, rest=(gr.skip(),),
                                 finish=lambda result, status: (ranked_gallery(result), status, result.info))

    @staticmethod
    def use_seed(info, evt: gr.SelectData = None):
        """A click on a best-of-N candidate puts its seed in the Seed box and N back to 1: Generate
        then regenerates it (the ordinary run with that seed). Other clicks change nothing."""
        records = (info or {}).get("ranking") if isinstance(info, dict) else None
        if evt is None or not records or not isinstance(evt.index, int) or not 0 <= evt.index < len(records):
            return gr.skip(), gr.skip()
        return records[evt.index]["seed"], 1

    def use_handler(self, use: str):
        """The handler of one use's button: `generate` with that use (the same inputs but `use`)."""
        @user_errors
        @gpu(duration=120)
        def handler(content, content_weight, style, style_weight, prompts, seed, steps, guidance,
                    visitor=None, candidates=1, preference=0.5, request: gr.Request = None):
            yield from self.generate(use, content, content_weight, style, style_weight, prompts, seed, steps,
                                     guidance, visitor=visitor, candidates=candidates, preference=preference,
                                     request=request)
        return handler

    # ------------------------------------------------------------------ layout
    def build(self) -> None:
        about(SUMMARY, ABOUT)
        with gr.Row():
            with gr.Column(scale=1):
                train = self._training_inputs()
            with gr.Column(scale=1):
                train.status = gr.Markdown("", elem_id="bl-status")
                train.loss_plot = gr.LinePlot(None, x="step", y="loss", **self.loss_axes(train.steps.value),
                                              title="Training loss (the B-LoRA being trained)", height=240,
                                              elem_id="bl-loss")
                train.samples = gr.Gallery(label="Samples while training", columns=4, height=280,
                                           object_fit="contain", elem_id="bl-samples")
                train.info = gr.JSON(label="Run", visible=False)
        gr.Examples([[[example(n) for n in files]] for files, in EXAMPLES], [train.files],
                    label="Example: click it, then Train B-LoRA", elem_id="bl-examples",
                    example_labels=[" + ".join(n.removesuffix(".png") for n in files) for files, in EXAMPLES])
        gr.Markdown("### Mix content and style")
        with gr.Row():
            with gr.Column(scale=1):
                mix = self._library_inputs()
                self._exchange_inputs(mix)
                mix.save = self.save_style_inputs("bl", "The B-LoRA picked as the style half, as a style of your "
                                                        "own: its style half and the image it learned, usable in "
                                                        "the other tabs.")
                self._generate_inputs(mix)
            with gr.Column(scale=1):
                mix.status = gr.Markdown("", elem_id="bl-gen-status")
                mix.gallery = gr.Gallery(label="Images", columns=4, height="auto", elem_id="bl-gallery")
                mix.info = gr.JSON(label="Halves used", visible=False)
        self._wire(train, mix)

    def _training_inputs(self) -> SimpleNamespace:
        """Uploads, names and the training settings (`apply_preset` fills the last six)."""
        res = self.engine.resolution
        p = blora.PRESETS[self.default_preset]
        w = SimpleNamespace()
        w.files = gr.File(label=f"Images (1-{blora.MAX_IMAGES}; each becomes its own B-LoRA)",
                          file_count="multiple", file_types=["image"], type="filepath", height=120, elem_id="bl-files")
        w.crops = gr.Gallery(label=f"Training crops ({res}x{res})", columns=5, fit_columns=False, height=140,
                             object_fit="contain", allow_preview=False, elem_id="bl-crops")
        with gr.Row():
            w.preset = Dropdown(list(blora.PRESETS), value=self.default_preset, label="Preset", elem_id="bl-preset",
                                scale=2)
            w.run = gr.Button("Train B-LoRA", variant="primary", elem_id="bl-train", scale=1)
            w.stop = gr.Button("Stop", variant="stop", elem_id="bl-stop-train", scale=1)
        w.preset_note = gr.Markdown(preset_note(self.default_preset), elem_id="bl-preset-note")
        with gr.Accordion("Training settings", open=False):
            with gr.Row():
                w.trigger = gr.Textbox(label="Trigger word (empty: a fresh [vN])", value="", elem_id="bl-trigger")
                w.name = gr.Textbox(label="Name (default: the trigger)", value="", elem_id="bl-name")
            w.joint = gr.Checkbox(label="One B-LoRA from all images (a subject from several photos) "
                                        "instead of one per image", value=False, elem_id="bl-joint")
            with gr.Row():
                w.steps = Number(label="Steps", value=p["steps"], precision=0, minimum=1, elem_id="bl-steps")
                w.lr = Number(label="Learning rate (constant)", value=p["learning_rate"], elem_id="bl-lr")
                w.rank = Number(label="LoRA rank", value=p["rank"], precision=0, minimum=1, elem_id="bl-rank")
            with gr.Row():
                w.sample_every = Number(label="Samples every N steps (0 = end only)", value=p["sample_every"],
                                        precision=0, minimum=0, elem_id="bl-sample-every")
                w.ckpt_every = Number(label="Checkpoint every N steps (0 = none)", value=p["checkpoint_every"],
                                      precision=0, minimum=0)
                w.gc = gr.Checkbox(label="Gradient checkpointing", value=p["gradient_checkpointing"])
            with gr.Row():
                w.seed = Number(label="Seed", value=0, precision=0, minimum=0)
                w.resume = gr.Checkbox(label="Resume a stopped run with the same inputs", value=True)
        return w

    @staticmethod
    def _library_inputs() -> SimpleNamespace:
        """The library's gallery (a click picks) and the two halves with their weights."""
        w = SimpleNamespace(ids=gr.State([]))
        w.library = gr.Gallery(label="The library's B-LoRAs (click one to pick it)", columns=5, fit_columns=False,
                               height=160, object_fit="contain", allow_preview=False, elem_id="bl-library")
        with gr.Row():
            w.pick_as = Radio(["content", "style"], value="content", label="A click picks it as", elem_id="bl-pick-as")
            w.refresh = gr.Button("Refresh", size="sm", elem_id="bl-refresh")
        with gr.Row():
            w.content = Dropdown([], value=None, label=f"Content half (into {blora.CONTENT_BLOCK})",
                                 elem_id="bl-content", scale=3, allow_custom_value=True)
            w.content_w = Slider(0, 2, value=1.0, step=0.05, label="Content weight", info=WEIGHT_INFO,
                                 elem_id="bl-content-w", scale=2)
        with gr.Row():
            w.style = Dropdown([], value=None, label=f"Style half (into {blora.STYLE_BLOCK})",
                               elem_id="bl-style", scale=3, allow_custom_value=True)
            w.style_w = Slider(0, 2, value=1.0, step=0.05, label="Style weight", info=WEIGHT_INFO,
                               elem_id="bl-style-w", scale=2)
        return w

    @staticmethod
    def _exchange_inputs(w: SimpleNamespace) -> None:
        """Import a reference B-LoRA file; export a library B-LoRA (added to `w`)."""
        with gr.Accordion("Import / export B-LoRA files", open=False, elem_id="bl-exchange"):
            gr.Markdown(f"<small>{IMPORT_HELP}</small>")
            w.import_file = gr.File(label="B-LoRA .safetensors", file_types=[".safetensors"], type="filepath",
                                    height=100, elem_id="bl-import-file")
            with gr.Row():
                w.import_name = gr.Textbox(label="Name (default: the file name)", elem_id="bl-import-name")
                w.import_trigger = gr.Textbox(label="Trigger word (e.g. [v18])", elem_id="bl-import-trigger")
                w.import_btn = gr.Button("Import", elem_id="bl-import-btn")
            with gr.Row():
                w.export_entry = Dropdown([], value=None, label="B-LoRA to export", elem_id="bl-export-entry",
                                          scale=2)
                w.export_fmt = Dropdown(list(EXPORT_FORMATS), value=next(iter(EXPORT_FORMATS)), label="Format",
                                        elem_id="bl-export-fmt", scale=2)
                w.export_btn = gr.Button("Export", elem_id="bl-export-btn", scale=1)
            w.export_file = gr.File(label="Download", interactive=False, elem_id="bl-export-file")
            w.exchange_status = gr.Markdown("", elem_id="bl-exchange-status")

    def _generate_inputs(self, w: SimpleNamespace) -> None:
        """The four uses' buttons, the prompts and the sampling settings (added to `w`)."""
        gr.Markdown("**The paper's four uses**, one click each (see About this method):")
        with gr.Row():
            w.use_buttons = [gr.Button(u, elem_id=f"bl-use-{i}", size="sm") for i, u in enumerate(blora.USES)]
        w.prompts = gr.Textbox(label="Prompts, one per line ([c], [s] are replaced by the triggers)", lines=2,
                               value="A [c] in [s] style", elem_id="bl-prompts")
        with gr.Row():
            w.run = gr.Button("Generate with these prompts", variant="primary", elem_id="bl-generate")
            w.stop = gr.Button("Stop", variant="stop", elem_id="bl-stop")
        w.candidates, w.preference = best_of_inputs("bl", PREFERENCE,
                                                    "0: closest to the content image, 1: to the style image")
        with gr.Accordion("Sampling: seed, steps, guidance", open=False):
            with gr.Row():
                w.seed = Number(label="Seed", value=0, precision=0, minimum=0, elem_id="bl-seed")
                w.steps = Slider(1, 100, value=4 if self.engine.offline else 50, step=1, label="Steps",
                                 elem_id="bl-gen-steps")
                w.guidance = Slider(0, 20, value=7.5, step=0.5, label="Guidance")
        gr.Markdown(f"<small>{WEIGHT_NOTE}</small>", elem_id="bl-weight-note")
        gr.Markdown(f"<small>{NEGATIVE_NOTE}</small>", elem_id="bl-negative-note")
        w.use = Dropdown([CUSTOM, *blora.USES], value=CUSTOM, visible=False, label="Use")

    # ------------------------------------------------------------------ wiring
    def _wire(self, train: SimpleNamespace, mix: SimpleNamespace) -> None:
        ui = dict(api_visibility="private")  # page helpers, not part of the API
        train.files.change(self.show_crops, train.files, train.crops, **ui)
        train.steps.change(self.update_loss_axes, train.steps, train.loss_plot, queue=False, **ui)
        train.preset.change(self.describe_preset, train.preset, train.preset_note, queue=False, **ui)
        train.preset.change(self.apply_preset, train.preset, [train.steps, train.lr, train.rank, train.sample_every,
                                                              train.ckpt_every, train.gc], queue=False, **ui)
        library_out = [mix.library, mix.ids, mix.content, mix.style]
        picks = [mix.content, mix.style, self.visitor]
        trained = train.run.click(
            self.train, [train.files, train.trigger, train.name, train.joint, train.steps, train.lr, train.rank,
                         train.sample_every, train.ckpt_every, train.gc, train.seed, train.resume, self.visitor],
            [train.status, train.loss_plot, train.samples, train.info], api_name="blora_train", **GPU)
        export_pick = dict(fn=self.export_picker, inputs=[mix.export_entry, self.visitor], outputs=mix.export_entry,
                           **ui)
        trained.then(self.after_train, [train.info, *picks], library_out, api_name=False).then(**export_pick)
        mix.refresh.click(self.library, picks, library_out, api_name="blora_library", queue=False).then(**export_pick)
        mix.import_btn.click(self.import_blora, [mix.import_file, mix.import_name, mix.import_trigger, self.visitor],
                             mix.exchange_status, api_name="blora_import").success(
            self.library, picks, library_out, **ui).then(**export_pick)
        mix.export_btn.click(self.export, [mix.export_entry, mix.export_fmt, self.visitor],
                             [mix.export_file, mix.exchange_status], api_name="blora_export")
        mix.save.button.click(self.save_style, [mix.style, mix.save.name, self.visitor], mix.save.status,
                              api_name="blora_save_style")
        mix.library.select(self.pick, [mix.ids, mix.pick_as], [mix.content, mix.style], queue=False, **ui)
        inputs = [mix.content, mix.content_w, mix.style, mix.style_w, mix.prompts, mix.seed, mix.steps,
                  mix.guidance, self.visitor, mix.candidates, mix.preference]  # best of N after the token
        outputs = [mix.gallery, mix.status, mix.info]
        mix.run.click(self.generate, [mix.use, *inputs], outputs, api_name="blora_generate", **GPU)
        for button, use in zip(mix.use_buttons, blora.USES):
            button.click(self.use_handler(use), inputs, outputs, api_name=False, **GPU)
        mix.gallery.select(self.use_seed, mix.info, [mix.seed, mix.candidates], queue=False, **ui)
        self.on_page_load(self.library, picks, library_out)  # fill the gallery when a page opens
        self.on_page_load(self.export_picker, [mix.export_entry, self.visitor], mix.export_entry)
        self.wire_stop(train.stop, api_name="blora_train_stop")
        self.wire_stop(mix.stop)


build = BLoRATab.mount  # the tab module's entry point (tabs/__init__.py)
