"""The Style-Aligned Set tab: a set of images sharing one style (Hertz et al., CVPR 2024)."""
from __future__ import annotations

import gradio as gr

from core import validate as v
from core.errors import Cancelled
from core.events import Notice, Progress, Result
from core.images import load_image
from core.style_aligned import MAX_SET, SharingOptions, style_aligned_set

from .common import GPU, AppContext, gpu, session_key, status_text, stopped_text, user_errors
from .widgets import Number, Slider

TITLE = "Style-Aligned Set"

EXAMPLE_PROMPTS = "A guitar\nA hot air balloon\nA sailboat\nA mountain"
EXAMPLE_STYLE = "in minimal flat design illustration"


def _metrics_markdown(info: dict, note: str) -> str:
    lines = []
    scores = info.get("clip_text_scores")
    if scores:
        lines.append("| image | prompt | CLIP text score |\n|---|---|---|")
        lines += [f"| {i + 1}{' (reference)' if i == 0 else ''} | {p} | {s:.3f} |"
                  for i, (p, s) in enumerate(zip(info["prompts"], scores))]
    if info.get("style_consistency") is not None:
        lines.append(f"\n**Style consistency** (mean pairwise DINO cosine): "
                     f"{info['style_consistency']:.3f}")
    if lines:
        lines.append(f"\n<small>Scored with {note}.</small>")
    return "\n".join(lines)


def build(ctx: AppContext) -> None:
    engine = ctx.engine
    res = engine.resolution
    gr.Markdown("A set of images that share one style: every image attends to the first one "
                "(the reference) with AdaIN on queries and keys. One prompt per line; the first "
                "prompt's image is the reference, or upload a reference image below.")
    with gr.Row():
        with gr.Column(scale=1):
            prompts = gr.Textbox(label=f"Prompts, one per line (at most {MAX_SET})", lines=5,
                                 value=EXAMPLE_PROMPTS, elem_id="sa-prompts")
            style = gr.Textbox(label="Style text appended to every prompt", value=EXAMPLE_STYLE,
                               elem_id="sa-style")
            with gr.Row():
                seed = Number(label="Seed", value=0, precision=0, minimum=0)
                steps = Slider(1, 100, value=4 if engine.offline else 50, step=1, label="Steps",
                                  elem_id="sa-steps")
                guidance = Slider(0, 20, value=5.0, step=0.5, label="Guidance (1 or less: off)")
            with gr.Row():
                width = Slider(64 if engine.offline else 512, 256 if engine.offline else 2048,
                                  value=res, step=8 if engine.offline else 64, label="Width")
                height = Slider(64 if engine.offline else 512, 256 if engine.offline else 2048,
                                   value=res, step=8 if engine.offline else 64, label="Height")
            negative = gr.Textbox(label="Negative prompt", value="")
            with gr.Accordion("Reference image (optional)", open=False):
                ref_file = gr.File(label="Upload an image to follow its style", file_types=["image"],
                                   type="filepath", elem_id="sa-ref")
                ref_view = gr.Image(label="Reference as used", interactive=False, height=160)
                ref_prompt = gr.Textbox(label="Describe the reference (content and style)",
                                        placeholder="a painting of a house, in impressionist style")
            with gr.Accordion("Advanced", open=False):
                d = SharingOptions()
                adain_q = gr.Checkbox(value=d.adain_queries, label="AdaIN on queries")
                adain_k = gr.Checkbox(value=d.adain_keys, label="AdaIN on keys")
                adain_v = gr.Checkbox(value=d.adain_values, label="AdaIN on values")
                share_gn = gr.Checkbox(value=d.share_group_norm,
                                       label="Shared group norm (statistics pooled with the reference)")
                full_share = gr.Checkbox(value=d.full_attention_share,
                                         label="Full attention sharing (every image with every other: "
                                               "the paper's leakage baseline)")
                shift = Slider(0, 2, value=d.shared_score_shift, step=0.01,
                                  label="Shared-score shift (log 2 = 0.69 doubles the reference's weight)")
                scale = Slider(0.1, 2, value=d.shared_score_scale, step=0.05,
                                  label="Scale on the reference keys")
                fraction = Slider(0, 1, value=d.share_fraction, step=0.05,
                                     label="Fraction of self-attention layers that share")
            with gr.Row():
                run = gr.Button("Generate set", variant="primary", elem_id="sa-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="sa-stop")
        with gr.Column(scale=1):
            status = gr.Markdown("", elem_id="sa-status")
            gallery = gr.Gallery(label="Set", columns=4, height="auto", elem_id="sa-gallery")
            metrics_md = gr.Markdown("", elem_id="sa-metrics")
            metrics_json = gr.JSON(label="Metrics", visible=False)

    @user_errors
    def show_reference(path):
        paths = v.files(path, "Reference image", 1)
        return load_image(paths[0], what="reference image", max_side=1024) if paths else None

    @user_errors
    @gpu(duration=120)
    def generate(prompt_text, style_text, seed_v, steps_v, guidance_v, w, h, neg, ref_path, ref_text,
                 aq, ak, av, gn, full, shift_v, scale_v, frac, request: gr.Request):
        seed_n = v.seed(seed_v)
        steps_n = v.whole(steps_v, "Steps", 1, 100)
        guidance_f = v.real(guidance_v, "Guidance", 0, 20)
        w, h = v.whole(w, "Width", 8, 4096), v.whole(h, "Height", 8, 4096)
        options = SharingOptions(adain_queries=v.flag(aq, "AdaIN on queries"), adain_keys=v.flag(ak, "AdaIN on keys"),
                                 adain_values=v.flag(av, "AdaIN on values"),
                                 share_group_norm=v.flag(gn, "Shared group norm"),
                                 full_attention_share=v.flag(full, "Full attention sharing"),
                                 shared_score_shift=v.real(shift_v, "Shared-score shift", 0, 2),
                                 shared_score_scale=v.real(scale_v, "Scale on the reference keys", 0.1, 2),
                                 share_fraction=v.real(frac, "Fraction of self-attention layers that share", 0, 1))
        prompt_text = v.text(prompt_text, "Prompts", 10_000)
        style_text = v.text(style_text, "Style text appended to every prompt", 1_000)
        neg, ref_text = v.text(neg, "Negative prompt", 2_000), v.text(ref_text, "Describe the reference", 1_000)
        ref_paths = v.files(ref_path, "Reference image", 1)
        ref = load_image(ref_paths[0], what="reference image", max_side=2048) if ref_paths else None
        events = style_aligned_set(
            engine, prompt_text.splitlines(), style_text, options=options, seed=seed_n,
            steps=steps_n, guidance=guidance_f, width=w, height=h,
            negative_prompt=neg, reference_image=ref, reference_prompt=ref_text,
            metrics=ctx.metrics, owner=ctx.caller(request).stop_key)  # Stop reaches this page's job
        notes = []
        try:
            for event in events:
                if isinstance(event, Notice):
                    notes.append(event.message)
                    yield gr.skip(), "\n\n".join(notes), gr.skip(), gr.skip()
                elif isinstance(event, Progress):
                    line = status_text(event)
                    yield (event.preview if event.preview else gr.skip(),
                           "\n\n".join(notes + [line]), gr.skip(), gr.skip())
                elif isinstance(event, Result):
                    info = {k: v for k, v in event.info.items()}
                    yield (event.images, "\n\n".join(notes + ["**Done.**"]),
                           _metrics_markdown(info, ctx.metrics.note if ctx.metrics else ""), info)
        except Cancelled as exc:
            # the job's own last word, so no progress line that was already on its way can
            # overwrite it (a reply from the Stop handler could be)
            yield (gr.skip(), "\n\n".join(notes + [stopped_text(exc, "**Stopped.** The set was not finished.")]),
                   gr.skip(), gr.skip())

    ref_file.change(show_reference, ref_file, ref_view, api_visibility="private")
    inputs = [prompts, style, seed, steps, guidance, width, height, negative, ref_file, ref_prompt,
              adain_q, adain_k, adain_v, share_gn, full_share, shift, scale, fraction]
    run.click(generate, inputs, [gallery, status, metrics_md, metrics_json], api_name="style_aligned", **GPU)

    def cancel(request: gr.Request):
        engine.cancel(session_key(request))  # the running job stops within one step and says so

    stop.click(cancel, None, None, queue=False, api_name="style_aligned_stop")
