"""The Personalize tab: DreamBooth a subject (Ruiz et al., CVPR 2023), then generate with it.

Widgets and wiring only: the method is core/dreambooth.py on the shared trainer core/train.py;
the library is core/library.py (one store and one set of resident adapters per engine).
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from core import dreambooth, library
from core import validate as v
from core.errors import UserError
from core.train import MAX_STEPS, TrainSettings

from .common import GPU, Tab, captioned, deliver, gpu, image_updates, md_text, stream_training, user_errors
from .widgets import Dropdown, Number, Radio, Slider

TITLE = "Personalize"
SLOTS = 3  # adapters active at once, a weight each
METHODS = ["LoRA", "Full fine-tune (SD 1.5 only)"]
LISTED = "DreamBooth or imported LoRA"  # what the adapter slots list (dreambooth.subject_adapters)
STOPPED_TRAINING = ("**Stopped.** Nothing was saved to the library; the last checkpoint (if any) is kept: "
                    "train again with Resume on to continue.")


def _plot(history: list[dict]) -> pd.DataFrame | None:
    """The run's loss curves: "total", and with prior preservation "instance" and "prior" too.

    Gradio 6.31's LinePlot fixes its colour domain when it first draws a value and later values
    only update the data: a series not in that first value is not drawn (no stroke), and after an
    empty frame nothing is. So never an empty frame (None instead), and each run starts from None
    (see PersonalizeTab.train), which makes the plot draw afresh with this run's series from its
    first step (every step has the same series)."""
    rows = []
    for h in history:
        rows.append({"step": h["step"], "loss": h["loss"], "curve": "total"})
        if h.get("prior_loss") is not None:
            rows.append({"step": h["step"], "loss": h["instance_loss"], "curve": "instance"})
            rows.append({"step": h["step"], "loss": h["prior_loss"], "curve": "prior"})
    return pd.DataFrame(rows) if rows else None


def _plot_row(event, history) -> dict:
    return {"step": event.step, "loss": event.loss, "instance_loss": event.instance_loss,
            "prior_loss": event.prior_loss}


def _label(a) -> str:
    trigger = f" · [{a.trigger_words}]" if a.trigger_words else ""
    return f"{a.name} · {a.method}{trigger} · #{a.id}"


def _trained_text(trained: dreambooth.TrainedAdapter) -> str:
    return (f"**Done.** Saved to the library as **{md_text(trained.name)}** (#{trained.adapter_id}); "
            f"instance loss on fixed draws {trained.loss_before:.4f} → {trained.loss_after:.4f}; "
            f"{trained.trainable_params:,} trained parameters; {trained.seconds:.0f} s.")


def _drift_markdown(info: dict) -> str:
    rows = "\n".join(f"| {s} | {val:.3f} |" for s, val in zip(info["seeds"], info["similarity"], strict=True))
    return (f"**Language drift of \"{md_text(info['prompt'])}\"**: CLIP image similarity between the "
            f"frozen model and the adapter, same seeds (1 = no drift). Mean "
            f"**{info['mean_similarity']:.3f}**.\n\n| seed | similarity |\n|---|---|\n{rows}\n\n"
            f"<small>Scored with {info['note']}.</small>")


def _preset_values(preset: dict) -> tuple:
    """A preset's values in the order of the training widgets it sets (see `_wire`)."""
    q = preset
    return (METHODS[1] if q["full"] else METHODS[0], q["steps"], q["learning_rate"], q["rank"], q["prior"],
            q["prior_weight"], q["num_class_images"], q["batch_size"], q["grad_accum"],
            q["gradient_checkpointing"], q["sample_every"])


class PersonalizeTab(Tab):
    """DreamBooth training, generation with up to SLOTS library adapters, language drift, and
    export / import of LoRAs. Whose adapters: `self.caller(request, visitor).owner` ("local" on
    a private instance, so a reload or a restart shows them again; the visitor token kept in the
    browser on a shared one; a logged-in user by name)."""

    title = TITLE
    api_prefix = "personalize"

    # ------------------------------------------------------------------ subject and identifier
    @user_errors
    def show_crops(self, files):
        paths = v.files(files, "Subject photos", dreambooth.MAX_IMAGES)
        return dreambooth.subject_images(paths, self.engine.resolution) if paths else []

    @user_errors
    def describe_identifier(self, identifier, class_noun) -> str:
        """The instance and class prompts these give, and warnings about the identifier."""
        word = v.text(identifier, "Identifier [V]", 100).strip()
        cls = v.text(class_noun, "Class noun", 100).strip()
        if not word or not cls:
            return "Give an identifier and a class noun."
        try:
            warnings = dreambooth.check_identifier(self.engine, word)
        except UserError as exc:
            return f"**Warning:** {exc}"
        lines = [f"Instance prompt: **{md_text(dreambooth.instance_prompt(word, cls))}** · class prompt: "
                 f"**{md_text(dreambooth.class_prompt(cls))}**"]
        return "\n\n".join(lines + [f"**Warning:** {w}" for w in warnings])

    @user_errors
    def suggest_tokens(self):
        """(the identifier: the first suggestion, the list of suggestions). The list has a field of
        its own: the identifier's change redraws the prompts line, not the suggestions."""
        tokens = dreambooth.rare_tokens(self.engine, n=6, seed=int(time.time()) % 1000)
        if not tokens:
            return gr.skip(), "No rare token found in this tokenizer's vocabulary."
        return tokens[0], (f"Rare single tokens: {', '.join(f'`{t}`' for t in tokens)} "
                           f"(using `{tokens[0]}`; type another of them to use it).")

    @user_errors
    def apply_preset(self, preset):
        name = v.choice(preset, "Preset", dreambooth.PRESETS)
        return _preset_values(dreambooth.PRESETS[name])

    @user_errors
    def prompt_family(self, family) -> str:
        name = v.choice(family, "Prompt family", dreambooth.PROMPT_FAMILIES)
        return "\n".join(dreambooth.PROMPT_FAMILIES[name])

    # ------------------------------------------------------------------ the library lists
    def _slot_updates(self, slots: list, owner: str, selected: int | None = None) -> list:
        """The adapter dropdowns with the owner's listable adapters; each keeps its value while it
        is still listed, and `selected` (a new adapter) goes into the first slot."""
        choices = [(_label(a), str(a.id)) for a in dreambooth.subject_adapters(self.engine, owner=owner)]
        valid = {value for _, value in choices}
        values = [str(i) if i is not None and str(i) in valid else None for i in slots]
        if selected is not None and str(selected) in valid:
            values[0] = str(selected)
        return [gr.update(choices=choices, value=value) for value in values]

    @user_errors
    def refresh_lists(self, adapter_1=None, adapter_2=None, adapter_3=None, visitor=None,
                      request: gr.Request = None):
        """The three adapter dropdowns: the owner's DreamBooth and imported adapters (and published
        ones) for this model, newest first; a selection still listed stays."""
        slots = [v.record_id(a, f"Adapter {i + 1}") for i, a in enumerate((adapter_1, adapter_2, adapter_3))]
        return self._slot_updates(slots, self.caller(request, visitor).owner)

    @user_errors
    def after_train(self, info, adapter_1=None, adapter_2=None, adapter_3=None, visitor=None,
                    request: gr.Request = None):
        """The dropdowns after a run: the new adapter selected in slot 1."""
        new = v.record_id(info.get("adapter_id") if isinstance(info, dict) else None, "Run")
        slots = [v.record_id(a, f"Adapter {i + 1}") for i, a in enumerate((adapter_1, adapter_2, adapter_3))]
        return self._slot_updates(slots, self.caller(request, visitor).owner, selected=new)

    # ------------------------------------------------------------------ training
    @user_errors
    @gpu(duration=1800)
    def train(self, files, identifier, class_noun, method, steps, learning_rate, rank, prior, prior_weight,
              class_images, batch_size, grad_accum, gradient_checkpointing, snr_gamma, sample_every,
              checkpoint_every, resume, seed, name, text_encoder_rank, visitor=None, request: gr.Request = None):
        """The run, streamed: (status, loss plot, validation samples, run info)."""
        steps_n = v.whole(steps, "Steps", 1, MAX_STEPS)
        lr_f = v.real(learning_rate, "Learning rate", 1e-8, 0.1)
        rank_n = v.whole(rank, "LoRA rank", 1, 256)
        te_rank_n = v.whole(text_encoder_rank, "Text-encoder LoRA rank", 0, 256, default=0)
        lam_f = v.real(prior_weight, "Prior weight lambda", 0, 10, default=0)
        n_class = v.whole(class_images, "Class images", 1, dreambooth.MAX_CLASS_IMAGES, default=1)
        batch_n = v.whole(batch_size, "Batch size", 1, 64, default=1)
        accum_n = v.whole(grad_accum, "Gradient accumulation", 1, 256, default=1)
        snr_f = v.real(snr_gamma, "Min-SNR gamma", 0, 100, default=0)
        sample_every_n = v.whole(sample_every, "Samples every N steps", 0, MAX_STEPS, default=0)
        ckpt_n = v.whole(checkpoint_every, "Checkpoint every N steps", 0, MAX_STEPS, default=0)
        seed_n = v.seed(seed)
        full = v.choice(method, "What is trained", METHODS) == METHODS[1]
        prior_b = v.flag(prior, "Prior preservation")
        gc_b, resume_b = v.flag(gradient_checkpointing, "Gradient checkpointing"), v.flag(resume, "Resume")
        word, cls = v.text(identifier, "Identifier [V]", 100), v.text(class_noun, "Class noun", 100)
        name = v.text(name, "Adapter name", 100)
        paths = v.files(files, "Subject photos", dreambooth.MAX_IMAGES)
        caller = self.caller(request, visitor)
        engine = self.engine
        images = dreambooth.subject_images(paths, engine.resolution)
        if full and engine.xl:
            raise UserError("Full fine-tuning is offered for SD 1.5 models only; choose LoRA for SDXL.")
        recipe = dreambooth.make_recipe(
            engine, images, identifier=word, class_noun=cls, prior=prior_b, num_class_images=n_class,
            prior_weight=lam_f, rank=rank_n, full=full, name=name, class_steps=4 if engine.offline else None,
            text_encoder_rank=te_rank_n)
        config = TrainSettings(steps=steps_n, learning_rate=lr_f, batch_size=batch_n, grad_accum=accum_n,
                             gradient_checkpointing=gc_b, snr_gamma=snr_f or None, seed=seed_n,
                             sample_every=sample_every_n, checkpoint_every=ckpt_n, resume=resume_b,
                             sample_steps=4 if engine.offline else 25)
        yield "**Starting**", None, [], None  # None: a fresh plot for this run's curves (see _plot)

        def finish(result):
            info = {k: val for k, val in result.info.items() if k != "history"}  # the run, for API clients
            return _trained_text(dreambooth.TrainedAdapter.from_result(result)), info

        events = dreambooth.train_dreambooth(engine, recipe, config, owner=caller.owner, stop_key=caller.stop_key)
        yield from stream_training(events, plot=_plot, row=_plot_row, finish=finish, stopped=STOPPED_TRAINING)

    # ------------------------------------------------------------------ generation and drift
    @staticmethod
    def slot_weights(adapter_1, weight_1, adapter_2, weight_2, adapter_3, weight_3) -> dict[int, float]:
        """{library id: weight} of the filled slots, checked."""
        weights: dict[int, float] = {}
        for i, (a, w) in enumerate(((adapter_1, weight_1), (adapter_2, weight_2), (adapter_3, weight_3))):
            aid = v.record_id(a, f"Adapter {i + 1}")
            w = v.real(w, f"Weight (adapter {i + 1})", -1, 2, default=1.0)
            if aid is not None:
                weights[aid] = w
        return weights

    @user_errors
    @gpu(duration=120)
    def generate(self, prompts, seed, steps, guidance, adapter_1=None, weight_1=1.0, adapter_2=None, weight_2=1.0,
                 adapter_3=None, weight_3=1.0, visitor=None, request: gr.Request = None):
        """One image per prompt line with the slots' adapters, streamed: (gallery, status). "{v}"
        and "{c}" in a line are the first adapter's identifier and class (dreambooth.fill_triggers)."""
        seed_n = v.seed(seed)
        steps_n = v.whole(steps, "Steps", 1, 100)
        guidance_f = v.real(guidance, "Guidance", 0, 20)
        weights = self.slot_weights(adapter_1, weight_1, adapter_2, weight_2, adapter_3, weight_3)
        prompts = v.text(prompts, "Prompts", 10_000)
        caller = self.caller(request, visitor)
        lines = [ln.strip() for ln in prompts.splitlines() if ln.strip()]
        filled = dreambooth.fill_triggers(self.engine, lines, weights, owner=caller.owner)
        events = library.generate(self.engine, filled, weights, owner=caller.owner, stop_key=caller.stop_key,
                                  seed=seed_n, steps=steps_n, guidance=guidance_f)
        active = ", ".join(f"#{i} × {w:g}" for i, w in weights.items()) or "none (base model)"
        yield from image_updates(events, stopped="**Stopped.** The images were not finished.",
                                 done=f"**Done.** Adapters: {active}.",
                                 finish=lambda result, status: (captioned(result), status))

    @user_errors
    @gpu(duration=120)
    def drift(self, adapter_1, weight_1, seed, steps, guidance, visitor=None, request: gr.Request = None):
        """The class prompt with and without the slot-1 adapter, same seeds, streamed: (gallery,
        status, similarity table)."""
        seed_n = v.seed(seed)
        steps_n = v.whole(steps, "Steps", 1, 100)
        guidance_f = v.real(guidance, "Guidance", 0, 20)
        weight = v.real(weight_1, "Weight", -1, 2, default=1.0)
        aid = v.record_id(adapter_1, "Adapter 1")
        caller = self.caller(request, visitor)
        if aid is None:
            raise UserError("Choose an adapter in slot 1 to measure its language drift.")
        if self.ctx.metrics is None:
            raise UserError("Scoring models are not available in this app.")
        seeds = [min(seed_n + i, v.SEED_MAX) for i in range(4)]
        events = dreambooth.language_drift(self.engine, aid, owner=caller.owner, metrics=self.ctx.metrics,
                                           seeds=seeds, steps=steps_n, guidance=guidance_f, weight=weight,
                                           stop_key=caller.stop_key)
        def finish(result, status):
            labels = [f"{who}, seed {s}" for who in ("frozen", "adapter") for s in result.info["seeds"]]
            return list(zip(result.images, labels, strict=True)), status, _drift_markdown(result.info)
        yield from image_updates(events, stopped="**Stopped.** The drift was not measured.", rest=(gr.skip(),),
                                 finish=finish)

    # ------------------------------------------------------------------ export and import
    @user_errors
    def export(self, adapter_1, visitor=None, request: gr.Request = None):
        """The adapter selected in slot 1 as a kohya .safetensors download: (file, status)."""
        aid = v.record_id(adapter_1, "Adapter 1")
        owner = self.caller(request, visitor).owner
        if aid is None:
            raise UserError("Choose an adapter in slot 1 to export.")
        store = library.get_store(self.engine)
        entry = store.get_adapter(aid, owner)
        path = store.export(aid, owner, fmt="kohya")
        return deliver(path), (f"Exported **{md_text(entry.name)}** (#{entry.id}) as **{md_text(path.name)}** in "
                               "the kohya format (loads in AUTOMATIC1111 and ComfyUI).")

    @user_errors
    def import_lora(self, file, visitor=None, request: gr.Request = None) -> str:
        """A LoRA .safetensors (diffusers/peft or kohya) into the owner's library, checked against
        this model's modules."""
        paths = v.files(file, "Import a LoRA", 1)
        owner = self.caller(request, visitor).owner
        if not paths:
            raise UserError("Choose a .safetensors LoRA file to import.")
        a = library.get_store(self.engine).import_lora(paths[0], owner=owner, **library.import_arguments(self.engine))
        return f"Imported **{md_text(a.name)}** (#{a.id}, {a.extra.get('source_format', '?')} format, rank {a.rank})."

    # ------------------------------------------------------------------ layout and wiring
    def build(self) -> None:
        gr.Markdown(
            "**DreamBooth**: upload 3-5 photos of one subject (1-20 allowed), pick a rare identifier **[V]** and "
            "the subject's class. The model learns \"a [V] [class]\" while a prior-preservation loss on class "
            "images (generated by the frozen model from \"a [class]\") keeps the class itself from drifting. The "
            "adapter is trained in place on the loaded model and saved to the library; generate with it right away.")
        w = SimpleNamespace()
        with gr.Row():
            with gr.Column(scale=1):
                self._subject_widgets(w)
                self._training_widgets(w)
            with gr.Column(scale=1):
                w.status = gr.Markdown("", elem_id="pz-status")
                w.loss_plot = gr.LinePlot(None, x="step", y="loss", color="curve", title="Training loss",
                                          height=240, elem_id="pz-loss")
                w.samples = gr.Gallery(label="Validation samples", columns=4, height="auto", elem_id="pz-samples")
                w.train_info = gr.JSON(label="Run", visible=False)
        gr.Markdown("### Generate with the subject")
        with gr.Row():
            with gr.Column(scale=1):
                self._generate_widgets(w)
            with gr.Column(scale=1):
                w.g_status = gr.Markdown("", elem_id="pz-gen-status")
                w.gallery = gr.Gallery(label="Images", columns=4, height="auto", elem_id="pz-gallery")
                w.drift_md = gr.Markdown("", elem_id="pz-drift-md")
        self._library_widgets(w)
        self._wire(w)

    def _subject_widgets(self, w) -> None:
        res = self.engine.resolution
        w.files = gr.File(label="Subject photos (1-20; auto-cropped to a centred square)", file_count="multiple",
                          file_types=["image"], type="filepath", elem_id="pz-files")
        w.crops = gr.Gallery(label=f"Training crops ({res}x{res})", columns=5, height=160, elem_id="pz-crops")
        with gr.Row():
            w.identifier = gr.Textbox(label="Identifier [V] (a rare token)", value="sks", elem_id="pz-identifier")
            w.class_noun = gr.Textbox(label="Class noun", value="dog", elem_id="pz-class")
            w.suggest = gr.Button("Suggest rare tokens", size="sm", elem_id="pz-suggest")
        w.suggestions = gr.Markdown("", elem_id="pz-suggestions")
        w.id_note = gr.Markdown("Instance prompt: **a sks dog** · class prompt: **a dog**", elem_id="pz-idnote")

    def _training_widgets(self, w) -> None:
        default = dreambooth.default_preset(self.engine)
        p = dreambooth.PRESETS[default]
        w.preset = Dropdown(list(dreambooth.PRESETS), value=default, label="Preset", elem_id="pz-preset")
        with gr.Accordion("Training settings", open=False):
            w.method = Radio(METHODS, value=METHODS[1] if p["full"] else METHODS[0], label="What is trained",
                             info="Full fine-tuning changes every UNet weight only for the run: the original "
                                  "weights are restored exactly afterwards, and the learned change is kept as "
                                  "a LoRA of the given rank extracted by SVD.")
            with gr.Row():
                w.steps = Number(label="Steps", value=p["steps"], precision=0, minimum=1, elem_id="pz-steps")
                w.lr = Number(label="Learning rate", value=p["learning_rate"], elem_id="pz-lr")
                w.rank = Number(label="LoRA rank", value=p["rank"], precision=0, minimum=1)
                w.te_rank = Number(label="Text-encoder LoRA rank (0 = off)", value=0, precision=0, minimum=0,
                                   info="DreamBooth also tunes the text encoder; LoRA only")
            with gr.Row():
                w.prior = gr.Checkbox(label="Prior preservation", value=p["prior"], elem_id="pz-prior")
                w.lam = Number(label="Prior weight lambda", value=p["prior_weight"], minimum=0)
                w.n_class = Number(label="Class images", value=p["num_class_images"], precision=0, minimum=1)
            with gr.Row():
                w.batch = Number(label="Batch size", value=p["batch_size"], precision=0, minimum=1)
                w.accum = Number(label="Gradient accumulation", value=p["grad_accum"], precision=0, minimum=1)
                w.gc = gr.Checkbox(label="Gradient checkpointing", value=p["gradient_checkpointing"])
            with gr.Row():
                w.snr = Number(label="Min-SNR gamma (0 = off)", value=0)
                w.sample_every = Number(label="Samples every N steps (0 = end only)", value=p["sample_every"],
                                        precision=0, minimum=0)
                w.ckpt_every = Number(label="Checkpoint every N steps (0 = none)", value=0, precision=0, minimum=0)
            with gr.Row():
                w.resume = gr.Checkbox(label="Resume a stopped run with the same inputs", value=True)
                w.seed = Number(label="Seed", value=0, precision=0, minimum=0)
                w.name = gr.Textbox(label="Adapter name (default: identifier + class)", value="")
        with gr.Row():
            w.train_btn = gr.Button("Train", variant="primary", elem_id="pz-train")
            w.stop_btn = gr.Button("Stop", variant="stop", elem_id="pz-stop")

    def _generate_widgets(self, w) -> None:
        w.slots = []
        for i in range(SLOTS):
            with gr.Row():
                dd = Dropdown([], value=None, label=f"Adapter {i + 1} ({LISTED})", allow_custom_value=True,
                              elem_id=f"pz-adapter-{i + 1}", scale=3)
                weight = Slider(-1, 2, value=1.0, step=0.05, label="Weight", scale=1, elem_id=f"pz-weight-{i + 1}")
            w.slots += [dd, weight]
        w.dropdowns = w.slots[0::2]
        w.refresh = gr.Button("Refresh the library", size="sm", elem_id="pz-refresh")
        family = "Recontextualization"
        w.family = Dropdown(list(dreambooth.PROMPT_FAMILIES), value=family, label="Prompt family (paper)",
                            elem_id="pz-family")
        w.prompts = gr.Textbox(label="Prompts, one per line ({v} = identifier, {c} = class)", lines=4,
                               value="\n".join(dreambooth.PROMPT_FAMILIES[family][:2]), elem_id="pz-prompts")
        with gr.Row():
            w.g_seed = Number(label="Seed", value=0, precision=0, minimum=0)
            w.g_steps = Slider(1, 100, value=4 if self.engine.offline else 30, step=1, label="Steps")
            w.g_guid = Slider(0, 20, value=5.0, step=0.5, label="Guidance")
        with gr.Row():
            w.gen_btn = gr.Button("Generate", variant="primary", elem_id="pz-generate")
            w.drift_btn = gr.Button("Measure language drift (adapter 1)", elem_id="pz-drift")

    def _library_widgets(self, w) -> None:
        with gr.Accordion("Library: export and import", open=False):
            with gr.Row():
                w.export_btn = gr.Button("Export the adapter in slot 1 (kohya .safetensors for A1111/ComfyUI)",
                                         elem_id="pz-export")
                w.export_file = gr.File(label="Download", interactive=False, elem_id="pz-export-file")
            with gr.Row():
                w.import_file = gr.File(label="Import a LoRA (.safetensors, diffusers or kohya)",
                                        file_types=[".safetensors"], type="filepath", elem_id="pz-import")
                w.import_btn = gr.Button("Import", elem_id="pz-import-btn")
            w.lib_status = gr.Markdown("", elem_id="pz-lib-status")

    def _wire(self, w) -> None:
        ui = dict(api_visibility="private")  # page helpers, not part of the API
        lists = [*w.dropdowns, self.visitor]
        w.files.change(self.show_crops, w.files, w.crops, **ui)
        for box in (w.identifier, w.class_noun):
            box.change(self.describe_identifier, [w.identifier, w.class_noun], w.id_note, queue=False, **ui)
        w.suggest.click(self.suggest_tokens, None, [w.identifier, w.suggestions], **ui)
        w.preset.change(self.apply_preset, w.preset, [w.method, w.steps, w.lr, w.rank, w.prior, w.lam, w.n_class,
                                                      w.batch, w.accum, w.gc, w.sample_every], **ui)
        train_inputs = [w.files, w.identifier, w.class_noun, w.method, w.steps, w.lr, w.rank, w.prior, w.lam,
                        w.n_class, w.batch, w.accum, w.gc, w.snr, w.sample_every, w.ckpt_every, w.resume, w.seed,
                        w.name, w.te_rank, self.visitor]
        trained = w.train_btn.click(self.train, train_inputs, [w.status, w.loss_plot, w.samples, w.train_info],
                                    api_name="personalize_train", **GPU)
        trained.success(self.after_train, [w.train_info, *lists], w.dropdowns, api_name=False)
        w.gen_btn.click(self.generate, [w.prompts, w.g_seed, w.g_steps, w.g_guid, *w.slots, self.visitor],
                        [w.gallery, w.g_status], api_name="personalize_generate", **GPU)
        w.drift_btn.click(self.drift, [w.slots[0], w.slots[1], w.g_seed, w.g_steps, w.g_guid, self.visitor],
                          [w.gallery, w.g_status, w.drift_md], api_name="personalize_drift", **GPU)
        w.refresh.click(self.refresh_lists, lists, w.dropdowns, api_name="personalize_library", queue=False)
        w.family.change(self.prompt_family, w.family, w.prompts, queue=False, **ui)
        w.export_btn.click(self.export, [w.slots[0], self.visitor], [w.export_file, w.lib_status],
                           api_name="personalize_export")
        w.import_btn.click(self.import_lora, [w.import_file, self.visitor], w.lib_status,
                           api_name="personalize_import").success(self.refresh_lists, lists, w.dropdowns, **ui)
        self.on_page_load(self.refresh_lists, lists, w.dropdowns)
        self.wire_stop(w.stop_btn)


build = PersonalizeTab.mount  # the tab module's entry point (tabs/__init__.py)
