"""The Style-Aligned Set tab: a set of images sharing one style (Hertz et al., CVPR 2024)."""
from __future__ import annotations

import re
from types import SimpleNamespace

import gradio as gr

from core import ranking, styledrop, styles
from core import validate as v
from core.errors import UserError
from core.images import load_image
from core.style_aligned import MAX_SET, SharingOptions, build_prompts, style_aligned_set

from .common import GPU, Tab, about, example, gpu, image_updates, md_text, saved_style_text, user_errors
from .widgets import Number, Slider

TITLE = "Style-Aligned Set"

EXAMPLE_PROMPTS = "A guitar\nA hot air balloon\nA sailboat\nA mountain"
EXAMPLE_STYLE = "in minimal flat design illustration"

# (prompts, style text, reference image or None, its description): one click fills the form
EXAMPLES = [
    (EXAMPLE_PROMPTS, EXAMPLE_STYLE, None, ""),
    ("A fox\nA lighthouse\nA teapot\nA bicycle", "in a woodblock print of blue waves", None, ""),
    ("A robot\nA castle\nAn owl", "in the style of the reference", "style-mosaic.png",
     "a stained-glass mosaic of warm tiles, in mosaic style"),
]

SUMMARY = ("**Make a set of images in one shared style.** Write one prompt per line and a style; "
           "every image borrows the look of the first one (or of a reference image you upload).")
ABOUT = ("Style-Aligned (Hertz et al., CVPR 2024): during denoising, every image's self-attention "
         "also attends to the reference image's keys and values, with AdaIN aligning each image's "
         "queries and keys to the reference's statistics. No training. With a reference image, it is "
         "first inverted with DDIM so that its denoising path can be shared. The scores below the set: "
         "CLIP text score per image (does it show its prompt?) and the mean pairwise DINO similarity "
         "(is the style consistent?). Advanced settings follow the paper's ablations: sharing on values "
         "too, shared group norm, full sharing (the leakage baseline), the shared-score shift.")


def _gallery(result) -> list:
    """The set's images; with best of N, every set's images captioned by its place, seed and scores."""
    sets = result.info.get("sets")
    if not sets:
        return result.images
    k = len(result.images) // len(sets)
    return [(img, sets[i // k]["caption"] if i % k == 0 else f"set #{sets[i // k]['rank']}")
            for i, img in enumerate(result.images)]


def _metrics_markdown(info: dict, note: str) -> str:
    lines = []
    if info.get("sets"):
        lines.append("**Candidate sets, best first** (shown in this order; a seed regenerates its set "
                     "with Candidate sets = 1)\n\n| place | seed | mean CLIP text | DINO consistency | score |"
                     "\n|---|---|---|---|---|")
        lines += [f"| {r['rank']} | {r['seed']} | {r['text']:.3f} | "
                  f"{'—' if r['consistency'] is None else format(r['consistency'], '.3f')} | {r['score']:.2f} |"
                  for r in info["sets"]]
        lines.append("\nThe best set, image by image:\n")
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
    used = info.get("library_style")
    if used:
        ref = f"#{used['adapter_id']}" if used.get("entry_id") is None else used["key"]
        how = "; its image is the reference" if info.get("reference") == "the library style's image" else ""
        lines.insert(0, f"**Library style:** {md_text(used['name'])} ({ref}) × {used['weight']:g}{how}\n")
    return "\n".join(lines)


class StyleAlignedTab(Tab):
    title = TITLE
    api_prefix = "style_aligned"

    # ------------------------------------------------------------------ handlers
    @user_errors
    def show_reference(self, path):
        """The uploaded reference as it will be used (a clear error for what is not an image)."""
        paths = v.files(path, "Reference image", 1)
        return load_image(paths[0], what="reference image", max_side=1024) if paths else None

    @staticmethod
    def sharing_options(adain_queries, adain_keys, adain_values, share_group_norm, full_attention_share,
                        shared_score_shift, shared_score_scale, share_fraction) -> SharingOptions:
        return SharingOptions(
            adain_queries=v.flag(adain_queries, "AdaIN on queries"),
            adain_keys=v.flag(adain_keys, "AdaIN on keys"),
            adain_values=v.flag(adain_values, "AdaIN on values"),
            share_group_norm=v.flag(share_group_norm, "Shared group norm"),
            full_attention_share=v.flag(full_attention_share, "Full attention sharing"),
            shared_score_shift=v.real(shared_score_shift, "Shared-score shift", 0, 2),
            shared_score_scale=v.real(shared_score_scale, "Scale on the reference keys", 0.1, 2),
            share_fraction=v.real(share_fraction, "Fraction of self-attention layers that share", 0, 1))

    @user_errors
    @gpu(duration=120)
    def generate(self, prompts, style, seed, steps, guidance, width, height, negative, reference_file,
                 reference_prompt, adain_queries, adain_keys, adain_values, share_group_norm,
                 full_attention_share, shared_score_shift, shared_score_scale, share_fraction,
                 library_style=None, style_weight=1.0, candidates=1, preference=0.5, visitor=None,
                 request: gr.Request = None):
        """The set, streamed: (gallery, status, metrics table, metrics). `library_style`: the id of
        a library style the visitor may use, active with `style_weight` while the set is made.
        `candidates` > 1: best of N sets, ranked by mean CLIP text score vs DINO consistency
        (`preference` 0 = prompts .. 1 = consistency), best set first."""
        seed_n = v.seed(seed)
        n_sets = v.whole(candidates, "Candidate sets (best of N)", 1, ranking.MAX_CANDIDATES)
        preference_f = v.real(preference, "Preference: prompts ↔ consistency", 0, 1)
        steps_n = v.whole(steps, "Steps", 1, 100)
        guidance_f = v.real(guidance, "Guidance", 0, 20)
        width_n, height_n = v.whole(width, "Width", 8, 4096), v.whole(height, "Height", 8, 4096)
        options = self.sharing_options(adain_queries, adain_keys, adain_values, share_group_norm,
                                       full_attention_share, shared_score_shift, shared_score_scale,
                                       share_fraction)
        prompts = v.text(prompts, "Prompts", 10_000)
        style = v.text(style, "Style text appended to every prompt", 1_000)
        negative = v.text(negative, "Negative prompt", 2_000)
        reference_prompt = v.text(reference_prompt, "Describe the reference", 1_000)
        ref_paths = v.files(reference_file, "Reference image", 1)
        reference = load_image(ref_paths[0], what="reference image", max_side=2048) if ref_paths else None
        caller = self.caller(request, visitor)
        picked, style_weight_f = self.library_style(library_style, style_weight, caller.owner)
        events = style_aligned_set(
            self.engine, prompts.splitlines(), style, options=options, seed=seed_n, steps=steps_n,
            guidance=guidance_f, width=width_n, height=height_n, negative_prompt=negative,
            reference_image=reference, reference_prompt=reference_prompt, metrics=self.ctx.metrics,
            library_style=picked, style_weight=style_weight_f, owner=caller.owner, stop_key=caller.stop_key,
            candidates=n_sets, preference=preference_f)
        note = self.ctx.metrics.note if self.ctx.metrics else ""
        # no scores of an earlier set under this one while it runs, nor after a Stop
        yield from image_updates(events, stopped="**Stopped.** The set was not finished.", rest=("", None),
                                 finish=lambda result, status: (_gallery(result), status,
                                                                _metrics_markdown(result.info, note),
                                                                dict(result.info)))

    @staticmethod
    def best_set(gallery, limit: int, purpose: str) -> list[str]:
        """The shown set's image files (with best of N, the best set only: the first, up to "set #2"),
        at most `limit`; a UserError saying `purpose` when there is none."""
        items = []
        for it in gallery or []:
            path, caption = (it[0], it[1] if len(it) > 1 else None) if isinstance(it, (list, tuple)) else (it, None)
            place = re.match(r"set #(\d+)", caption) if isinstance(caption, str) else None
            if place and place.group(1) != "1":
                break
            items.append(path)
        paths = v.files(items[:limit], "Set", limit)
        if not paths:
            raise UserError(f"Generate a set first: {purpose}.")
        return paths

    @user_errors
    def save_style(self, gallery, prompts, style, reference_file, reference_prompt, library_style, name,
                   visitor=None, request: gr.Request = None) -> str:
        """The shown set as a library style: its images, the first as the reference (described by
        the reference's description, or the first prompt with the style text), the style text as
        the descriptor, and the library style's adapter when one was on."""
        name = v.text(name, "Style name", styles.MAX_NAME)
        lines = [ln.strip() for ln in v.text(prompts, "Prompts", 10_000).splitlines() if ln.strip()]
        style = v.text(style, "Style text appended to every prompt", 1_000)
        reference_prompt = v.text(reference_prompt, "Describe the reference", 1_000).strip()
        uploaded = bool(v.files(reference_file, "Reference image", 1))
        caller = self.caller(request, visitor)
        picked, _ = self.library_style(library_style, 1.0, caller.owner)
        paths = self.best_set(gallery, styles.MAX_IMAGES, "its images become the style's images")
        images = [load_image(p, what="set image", max_side=1024) for p in paths]
        ref_text = reference_prompt if uploaded and reference_prompt else \
            styles.styled_prompts(build_prompts(lines or ["an image"], style), picked)[0]
        saved = styles.save_style(self.engine, owner=caller.owner, name=name, images=images, source="style_aligned",
                                  descriptor=style_descriptor(style), reference=images[0], reference_prompt=ref_text,
                                  adapter_id=None if picked is None else picked.adapter_id)
        return saved_style_text(saved)

    @user_errors
    def set_for_styledrop(self, gallery, prompts, style):
        """The finished set handed to StyleDrop as the style images of a new loop (up to its 8),
        with the reference's prompt as their content and the style text as the descriptor:
        (style files, content, style descriptor, the tab to show)."""
        paths = self.best_set(gallery, styledrop.MAX_STYLE_IMAGES, "its images become the style images of a "
                                                                   "StyleDrop loop")
        lines = [ln.strip() for ln in v.text(prompts, "Prompts", 10_000).splitlines() if ln.strip()]
        descriptor = style_descriptor(v.text(style, "Style text appended to every prompt", 1_000))
        return paths, (lines[0] if lines else ""), descriptor, gr.Tabs(selected="tabs.styledrop")

    # ------------------------------------------------------------------ layout and wiring
    def build(self) -> None:
        offline = self.engine.offline
        res = self.engine.resolution
        about(SUMMARY, ABOUT)
        with gr.Row():
            with gr.Column(scale=1):
                prompts = gr.Textbox(label=f"Prompts, one per line (at most {MAX_SET})", lines=5,
                                     value=EXAMPLE_PROMPTS, elem_id="sa-prompts")
                style = gr.Textbox(label="Style text appended to every prompt", value=EXAMPLE_STYLE,
                                   elem_id="sa-style")
                with gr.Row():
                    run = gr.Button("Generate set", variant="primary", elem_id="sa-generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="sa-stop")
                with gr.Row():
                    seed = Number(label="Seed", value=0, precision=0, minimum=0)
                    steps = Slider(1, 100, value=4 if offline else 50, step=1, label="Steps", elem_id="sa-steps")
                    guidance = Slider(0, 20, value=5.0, step=0.5, label="Guidance (1 or less: off)")
                with gr.Row():
                    lo, hi, step = (64, 256, 8) if offline else (512, 2048, 64)
                    width = Slider(lo, hi, value=res, step=step, label="Width")
                    height = Slider(lo, hi, value=res, step=step, label="Height")
                negative = gr.Textbox(label="Negative prompt", value="")
                with gr.Accordion("Reference image (optional)", open=False):
                    ref_file = gr.File(label="Upload an image to follow its style", file_types=["image"],
                                       type="filepath", elem_id="sa-ref")
                    ref_view = gr.Image(label="Reference as used", interactive=False, height=200)
                    ref_prompt = gr.Textbox(label="Describe the reference (content and style)",
                                            placeholder="a painting of a house, in impressionist style")
                with gr.Accordion("Best of N sets (optional)", open=False, elem_id="sa-best-of"):
                    gr.Markdown("Make several candidate sets at once and rank them by the paper's two scores: "
                                "each image shows its prompt (CLIP) and the set looks alike (DINO).")
                    with gr.Row():
                        n_sets = Slider(1, ranking.MAX_CANDIDATES, value=1, step=1, label="Candidate sets (best of N)",
                                        elem_id="sa-candidates")
                        preference = Slider(0, 1, value=0.5, step=0.05, label="Preference: prompts ↔ consistency",
                                            elem_id="sa-preference")
                library_style = self.library_style_inputs(
                    "sa", "A style saved from any tab, a StyleDrop adapter or the style half of a B-LoRA you "
                          "trained (or one shared with you): its adapter is on while the set is made, its style "
                          "words join every prompt, and a saved style's image is the set's reference (unless "
                          "you upload one).")
                with gr.Accordion("Advanced", open=False):
                    sharing = self._sharing_widgets()
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="sa-status")
                gallery = gr.Gallery(label="Set", columns=4, height="auto", elem_id="sa-gallery")
                to_styledrop = gr.Button("Train a StyleDrop style on this set (opens StyleDrop Loop)", size="sm",
                                         elem_id="sa-to-styledrop")
                metrics_md = gr.Markdown("", elem_id="sa-metrics")
                metrics_json = gr.JSON(label="Metrics", visible=False)
                save = self.save_style_inputs("sa", "The set shown (the best one with best of N) as a style of "
                                                    "your own: its images, the first as the reference, the style "
                                                    "text as its words, the library style's adapter if one was on.")

        with gr.Row():
            gr.Examples([[p, st, example(ref) if ref else None, rp] for p, st, ref, rp in EXAMPLES],
                        [prompts, style, ref_file, ref_prompt], label="Examples: click one, then Generate set",
                        examples_per_page=len(EXAMPLES))
        ref_file.change(self.show_reference, ref_file, ref_view, api_visibility="private")
        # app.link_tabs wires the hand-over to StyleDrop (it needs that tab's inputs)
        self.ui = SimpleNamespace(gallery=gallery, prompts=prompts, style=style, to_styledrop=to_styledrop)
        inputs = [prompts, style, seed, steps, guidance, width, height, negative, ref_file, ref_prompt, *sharing,
                  *library_style, n_sets, preference, self.visitor]
        run.click(self.generate, inputs, [gallery, status, metrics_md, metrics_json], api_name="style_aligned", **GPU)
        self.wire_stop(stop)
        save.button.click(self.save_style, [gallery, prompts, style, ref_file, ref_prompt, library_style[0], save.name,
                                            self.visitor], save.status, api_name="style_aligned_save_style")


    @staticmethod
    def _sharing_widgets() -> list:
        """The shared-attention settings, in `sharing_options`' order."""
        d = SharingOptions()
        return [
            gr.Checkbox(value=d.adain_queries, label="AdaIN on queries"),
            gr.Checkbox(value=d.adain_keys, label="AdaIN on keys"),
            gr.Checkbox(value=d.adain_values, label="AdaIN on values"),
            gr.Checkbox(value=d.share_group_norm, label="Shared group norm (statistics pooled with the reference)"),
            gr.Checkbox(value=d.full_attention_share,
                        label="Full attention sharing (every image with every other: the paper's leakage baseline)"),
            Slider(0, 2, value=d.shared_score_shift, step=0.01,
                   label="Shared-score shift (log 2 = 0.69 doubles the reference's weight)"),
            Slider(0.1, 2, value=d.shared_score_scale, step=0.05, label="Scale on the reference keys"),
            Slider(0, 1, value=d.share_fraction, step=0.05, label="Fraction of self-attention layers that share"),
        ]


def style_descriptor(style_text: str) -> str:
    """A StyleDrop style descriptor from a Style-Aligned style text: "in minimal flat design
    illustration" -> "minimal flat design illustration" (StyleDrop adds "in ... style" itself)."""
    text = (style_text or "").strip().rstrip(".")
    text = re.sub(r"^(in\s+)?(the\s+style\s+of\s+|a\s+style\s+of\s+)?", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+style$", "", text, flags=re.IGNORECASE).strip()
    return text


build = StyleAlignedTab.mount  # the tab module's entry point (tabs/__init__.py)
