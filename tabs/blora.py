"""The B-LoRA Mix tab: separate the content and the style of one image, then recombine them
(Frenkel et al., ECCV 2024).

Widgets and wiring only: the method is core/blora.py (a recipe of the shared trainer core/train.py,
halves loaded by block into the resident UNet); the library is core/library.py.
"""
from __future__ import annotations


import gradio as gr
import pandas as pd

from core import blora
from core import validate as v
from core.errors import Cancelled, UserError
from core.events import Notice, Progress, Result
from core.images import load_image
from core.train import MAX_STEPS, TrainConfig

from .common import GPU, AppContext, gpu, md_text, session_key, status_text, stopped_text, stream_training, user_errors
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


def _plot(history: list[dict]) -> pd.DataFrame | None:
    """The loss curve of the B-LoRA being trained (one series: gradio 6.31's LinePlot draws only
    the colour series present in its first non-empty value, and none at all after an empty frame,
    so a run over several images shows one image at a time)."""
    if not history:
        return None
    current = history[-1]["image"]
    return pd.DataFrame([{"step": h["step"], "loss": h["loss"]} for h in history if h["image"] == current])


def _id(value, field: str) -> int | None:
    return v.record_id(value, field)


def _thumbnail(a):
    """A B-LoRA's first sample as an image (never a path: the library is not served)."""
    path = blora.thumbnail(a)
    try:
        return load_image(path, what="sample", max_side=256) if path else None
    except UserError:
        return None


def build(ctx: AppContext) -> None:
    engine = ctx.engine
    res = engine.resolution
    default = blora.default_preset(engine)
    p = blora.PRESETS[default]

    # Who owns the B-LoRAs: "local" on a private instance, the visitor id kept in the browser on a
    # shared one (so a reload finds them again), a logged-in user by name (see tabs/personalize.py).
    visitor = ctx.visitor if ctx.visitor is not None else gr.State(None)

    def owner_of(request, visitor_v=None) -> str:
        return ctx.owner(request, visitor_v)

    gr.Markdown(
        "**B-LoRA** learns one image with LoRA on just two blocks of SDXL's UNet, trained together: "
        f"`{blora.CONTENT_BLOCK}` learns its **content**, `{blora.STYLE_BLOCK}` its **style**. Each image becomes "
        "one library entry holding both halves; combine halves of different images below.")
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label=f"Images (1-{blora.MAX_IMAGES}; each becomes its own B-LoRA)", file_count="multiple",
                            file_types=["image"], type="filepath", elem_id="bl-files")
            crops = gr.Gallery(label=f"Training crops ({res}x{res})", columns=4, height=140, elem_id="bl-crops")
            with gr.Row():
                trigger = gr.Textbox(label="Trigger word (empty: a fresh [vN])", value="", elem_id="bl-trigger")
                name = gr.Textbox(label="Name (default: the trigger)", value="", elem_id="bl-name")
            joint = gr.Checkbox(label="One B-LoRA from all images (a subject from several photos) instead of one per image",
                                value=False, elem_id="bl-joint")
            preset = Dropdown(list(blora.PRESETS), value=default, label="Preset", elem_id="bl-preset",
                                 info="The paper: prompt \"A [v]\", rank 64, lr 5e-5 constant, 1000 steps, batch 1, "
                                      "no prior preservation, text encoders frozen.")
            with gr.Accordion("Training settings", open=False):
                with gr.Row():
                    steps = Number(label="Steps", value=p["steps"], precision=0, minimum=1, elem_id="bl-steps")
                    lr = Number(label="Learning rate (constant)", value=p["learning_rate"], elem_id="bl-lr")
                    rank = Number(label="LoRA rank", value=p["rank"], precision=0, minimum=1, elem_id="bl-rank")
                with gr.Row():
                    sample_every = Number(label="Samples every N steps (0 = end only)", value=p["sample_every"],
                                             precision=0, minimum=0, elem_id="bl-sample-every")
                    ckpt_every = Number(label="Checkpoint every N steps (0 = none)", value=p["checkpoint_every"],
                                           precision=0, minimum=0)
                    gc = gr.Checkbox(label="Gradient checkpointing", value=p["gradient_checkpointing"])
                with gr.Row():
                    seed = Number(label="Seed", value=0, precision=0, minimum=0)
                    resume = gr.Checkbox(label="Resume a stopped run with the same inputs", value=True)
            with gr.Row():
                train_btn = gr.Button("Train B-LoRA", variant="primary", elem_id="bl-train")
                stop_train = gr.Button("Stop", variant="stop", elem_id="bl-stop-train")
        with gr.Column(scale=1):
            status = gr.Markdown("", elem_id="bl-status")
            loss_plot = gr.LinePlot(None, x="step", y="loss", title="Training loss (the B-LoRA being trained)",
                                    height=240, elem_id="bl-loss")
            samples = gr.Gallery(label="Samples while training", columns=4, height="auto", elem_id="bl-samples")
            train_info = gr.JSON(label="Run", visible=False)

    gr.Markdown("### Mix content and style")
    ids_state = gr.State([])
    with gr.Row():
        with gr.Column(scale=1):
            library_gallery = gr.Gallery(label="The library's B-LoRAs (click one to pick it)", columns=4, height=220,
                                         allow_preview=False, elem_id="bl-library")
            with gr.Row():
                pick_as = Radio(["content", "style"], value="content", label="A click picks it as",
                                   elem_id="bl-pick-as")
                refresh = gr.Button("Refresh", size="sm", elem_id="bl-refresh")
            with gr.Row():
                content = Dropdown([], value=None, label=f"Content half (into {blora.CONTENT_BLOCK})",
                                      elem_id="bl-content", scale=3, allow_custom_value=True)
                content_w = Slider(0, 2, value=1.0, step=0.05, label="Content weight", info=WEIGHT_INFO,
                                      elem_id="bl-content-w", scale=2)
            with gr.Row():
                style = Dropdown([], value=None, label=f"Style half (into {blora.STYLE_BLOCK})",
                                    elem_id="bl-style", scale=3, allow_custom_value=True)
                style_w = Slider(0, 2, value=1.0, step=0.05, label="Style weight", info=WEIGHT_INFO,
                                    elem_id="bl-style-w", scale=2)
            gr.Markdown(f"<small>{WEIGHT_NOTE}</small>", elem_id="bl-weight-note")
            gr.Markdown("**The paper's four uses**, one click each ([c] = the content trigger, [s] = the style "
                        "trigger):")
            with gr.Row():
                use_btns = [gr.Button(u, elem_id=f"bl-use-{i}", size="sm") for i, u in enumerate(blora.USES)]
            gr.Markdown("\n".join(f"- **{u}**: {v['help']}" for u, v in blora.USES.items()))
            prompts = gr.Textbox(label="Prompts, one per line ([c], [s] are replaced by the triggers)", lines=3,
                                 value="A [c] in [s] style", elem_id="bl-prompts")
            with gr.Row():
                g_seed = Number(label="Seed", value=0, precision=0, minimum=0, elem_id="bl-seed")
                g_steps = Slider(1, 100, value=4 if engine.offline else 50, step=1, label="Steps",
                                    elem_id="bl-gen-steps")
                g_guid = Slider(0, 20, value=7.5, step=0.5, label="Guidance")
            gr.Markdown(f"<small>{NEGATIVE_NOTE}</small>", elem_id="bl-negative-note")
            with gr.Row():
                gen_btn = gr.Button("Generate with these prompts", variant="primary", elem_id="bl-generate")
                stop_gen = gr.Button("Stop", variant="stop", elem_id="bl-stop")
            use_dd = Dropdown([CUSTOM, *blora.USES], value=CUSTOM, visible=False, label="Use")
        with gr.Column(scale=1):
            g_status = gr.Markdown("", elem_id="bl-gen-status")
            gallery = gr.Gallery(label="Images", columns=4, height="auto", elem_id="bl-gallery")
            gen_info = gr.JSON(label="Halves used", visible=False)

    # ------------------------------------------------------------------ handlers
    @user_errors
    def show_crops(paths):
        paths = v.files(paths, "Images", blora.MAX_IMAGES)
        return blora.training_images(paths, res) if paths else []

    def apply_preset(name_):
        q = blora.PRESETS.get(name_) if isinstance(name_, str) else None
        q = q or blora.PRESETS[default]
        return q["steps"], q["learning_rate"], q["rank"], q["sample_every"], q["checkpoint_every"], \
            q["gradient_checkpointing"]

    def library_view(owner: str, cur_c=None, cur_s=None):
        items = blora.entries(engine, owner)
        choices = [(blora.label(a), str(a.id)) for a in items]
        valid = {val for _, val in choices}
        shown = [(a, t) for a in items if (t := _thumbnail(a)) is not None]
        thumbs = [(t, blora.label(a)) for a, t in shown]
        ids = [str(a.id) for a, _ in shown]
        return (thumbs, ids, gr.update(choices=choices, value=cur_c if cur_c in valid else None),
                gr.update(choices=choices, value=cur_s if cur_s in valid else None))

    @user_errors
    def refresh_library(cur_c, cur_s, visitor_v, request: gr.Request):
        _id(cur_c, "Content half"), _id(cur_s, "Style half")
        return library_view(owner_of(request, visitor_v), cur_c, cur_s)

    def pick(ids, part, evt: gr.SelectData):
        if evt is None or not isinstance(evt.index, int) or not ids or not 0 <= evt.index < len(ids):
            return gr.skip(), gr.skip()
        aid = ids[evt.index]
        return (aid, gr.skip()) if part == "content" else (gr.skip(), aid)

    @user_errors
    @gpu(duration=600)
    def run_train(paths, trig, name_v, joint_v, steps_v, lr_v, rank_v, sample_every_v, ckpt_v, gc_v, seed_v,
                  resume_v, visitor_v, request: gr.Request):
        steps_n = v.whole(steps_v, "Steps", 1, MAX_STEPS)
        lr_f = v.real(lr_v, "Learning rate", 1e-8, 0.1)
        rank_n = v.whole(rank_v, "LoRA rank", 1, 256)
        sample_every_n = v.whole(sample_every_v, "Samples every N steps", 0, MAX_STEPS, default=0)
        ckpt_n = v.whole(ckpt_v, "Checkpoint every N steps", 0, MAX_STEPS, default=0)
        seed_n = v.seed(seed_v)
        joint_b, gc_b, resume_b = v.flag(joint_v, "One B-LoRA from all images"), v.flag(gc_v, "Gradient checkpointing"), \
            v.flag(resume_v, "Resume")
        trig, name_v = v.text(trig, "Trigger word", 50), v.text(name_v, "Name", 100)
        paths = v.files(paths, "Images", blora.MAX_IMAGES)
        caller = ctx.caller(request, visitor_v)
        images = blora.training_images(paths, res)
        cfg = TrainConfig(steps=steps_n, learning_rate=lr_f, lr_scheduler="constant", batch_size=1,
                          gradient_checkpointing=gc_b, seed=seed_n, sample_every=sample_every_n,
                          checkpoint_every=ckpt_n, resume=resume_b,
                          sample_steps=3 if engine.offline else 30, sample_guidance=7.5)
        yield "**Starting**", None, [], None
        events = blora.train_blora(engine, images, cfg, owner=caller.owner, stop_key=caller.stop_key,
                                   trigger=trig.strip() or None, name=name_v, rank=rank_n, joint=joint_b)

        def row(ev, history):  # one curve per image: a new image restarts the step count
            image = 1 if not history else history[-1]["image"] + (ev.step < history[-1]["step"])
            return {"step": ev.step, "loss": ev.loss, "image": image}

        def finish(ev):
            info = {"adapters": ev.info["adapters"]}
            done = "; ".join(f"**{md_text(a['adapter_name'])}** (#{a['adapter_id']}, trigger `{md_text(a['trigger'])}`, "
                             f"loss on fixed draws {a['loss_before']:.4f} → {a['loss_after']:.4f})"
                             for a in ev.info["adapters"])
            n_params = ev.info["adapters"][0]["trainable_params"]
            return f"**Done.** Saved {done}; {n_params:,} trained parameters each.", info

        yield from stream_training(events, plot=_plot, row=row, finish=finish, stopped=(
            "**Stopped.** B-LoRAs finished before the Stop are in the library; the last checkpoint of "
            "the unfinished one (if any) is kept: train again with Resume on to continue."))

    @user_errors
    def after_train(info, cur_c, cur_s, visitor_v, request: gr.Request):
        _id(cur_c, "Content half"), _id(cur_s, "Style half")
        new = None
        if isinstance(info, dict) and info.get("adapters"):
            new = str(info["adapters"][-1]["adapter_id"])
        thumbs, ids, c, s = library_view(owner_of(request, visitor_v), cur_c, cur_s)
        if new is not None and new in ids:
            c = gr.update(choices=c["choices"], value=cur_c if cur_c in ids else new)
            s = gr.update(choices=s["choices"], value=cur_s if cur_s in ids else new)
        return thumbs, ids, c, s

    def _generate(use, cid, cw, sid, sw, text, seed_v, steps_v, guid_v, visitor_v, request):
        seed_n = v.seed(seed_v)
        steps_n = v.whole(steps_v, "Steps", 1, 100)
        guid_f = v.real(guid_v, "Guidance", 0, 20)
        cw_f, sw_f = v.real(cw, "Content weight", 0, 2, default=1.0), v.real(sw, "Style weight", 0, 2, default=1.0)
        c_id, s_id = _id(cid, "Content half"), _id(sid, "Style half")
        use = None if use in (None, "", CUSTOM) else v.choice(use, "Use", list(blora.USES))
        text = v.text(text, "Prompts", 10_000)
        caller = ctx.caller(request, visitor_v)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if use is not None:
            lines = []  # a use button takes its own preset prompts
        events = blora.generate(engine, use=use, content=(c_id, cw_f) if c_id is not None else None,
                                style=(s_id, sw_f) if s_id is not None else None, prompts=lines,
                                owner=caller.owner, stop_key=caller.stop_key, seed=seed_n, steps=steps_n,
                                guidance=guid_f)
        try:
            for ev in events:
                if isinstance(ev, Progress):
                    yield ev.preview or gr.skip(), status_text(ev), gr.skip()
                elif isinstance(ev, Notice):
                    yield gr.skip(), f"Note: {ev.message}", gr.skip()
                elif isinstance(ev, Result):
                    halves = ", ".join(f"{h['part']} #{h['adapter_id']} × {h['weight']:g}"
                                       for h in ev.info["halves"]) or "none (base model)"
                    yield ([(im, p) for im, p in zip(ev.images, ev.info["prompts"])],
                           f"**Done.** {ev.info['use']}: {halves}.", ev.info)
        except Cancelled as exc:  # the job's own last word (see tabs/style_aligned.py)
            yield gr.skip(), stopped_text(exc, "**Stopped.** The images were not finished."), gr.skip()

    @user_errors
    @gpu(duration=120)
    def run_generate(use, cid, cw, sid, sw, text, seed_v, steps_v, guid_v, visitor_v, request: gr.Request):
        yield from _generate(use, cid, cw, sid, sw, text, seed_v, steps_v, guid_v, visitor_v, request)

    def use_handler(use_name):
        @user_errors
        @gpu(duration=120)
        def handler(cid, cw, sid, sw, text, seed_v, steps_v, guid_v, visitor_v, request: gr.Request):
            yield from _generate(use_name, cid, cw, sid, sw, text, seed_v, steps_v, guid_v, visitor_v, request)
        return handler

    # ------------------------------------------------------------------ wiring
    ui = dict(api_visibility="private")  # page helpers, not part of the API
    files.change(show_crops, files, crops, **ui)
    preset.change(apply_preset, preset, [steps, lr, rank, sample_every, ckpt_every, gc], queue=False, **ui)
    lib_outputs = [library_gallery, ids_state, content, style]
    train_event = train_btn.click(
        run_train, [files, trigger, name, joint, steps, lr, rank, sample_every, ckpt_every, gc, seed, resume, visitor],
        [status, loss_plot, samples, train_info], api_name="blora_train", **GPU)
    train_event.then(after_train, [train_info, content, style, visitor], lib_outputs, api_name=False)
    refresh.click(refresh_library, [content, style, visitor], lib_outputs, api_name="blora_library", queue=False)
    library_gallery.select(pick, [ids_state, pick_as], [content, style], queue=False, **ui)
    gen_inputs = [content, content_w, style, style_w, prompts, g_seed, g_steps, g_guid, visitor]
    gen_outputs = [gallery, g_status, gen_info]
    gen_btn.click(run_generate, [use_dd, *gen_inputs], gen_outputs, api_name="blora_generate", **GPU)
    for btn, use_name in zip(use_btns, blora.USES):
        btn.click(use_handler(use_name), gen_inputs, gen_outputs, api_name=False, **GPU)

    root = getattr(gr.context.Context, "root_block", None)
    if root is not None and hasattr(root, "load"):  # fill the gallery when a page opens
        root.load(refresh_library, [content, style, visitor], lib_outputs, queue=False, api_visibility="private")

    def cancel(request: gr.Request):
        engine.cancel(session_key(request))  # the running job stops within one step and says so

    stop_train.click(cancel, None, None, queue=False, api_name="blora_train_stop")
    stop_gen.click(cancel, None, None, queue=False, api_name="blora_stop")
