"""The Text-to-SVG tab: VectorFusion (Jain et al., CVPR 2023), image vectorization and icon sets.

Three parts, each a streaming handler with its own Stop:
- From text (api_name="svg_generate"): baseline (K samples ranked by CLIP, LIVE on the best)
  then score distillation through our rasterizer; candidates with their CLIP scores, then
  frames and the loss; the current SVG and PNG can be downloaded at any moment.
- From an image (api_name="vectorize"): vtracer's tracing refined (the default), or LIVE, with a path budget.
- Icon set (api_name="svg_icon_set"): a Style-Aligned set of prompts, each vectorized.

The preview is the PNG that cairosvg renders from the very SVG file offered for download. The
jobs' results are read as core/vector/results.py's typed runs.
"""
from __future__ import annotations

import gradio as gr

from core import validate as v
from core import vectorfusion
from core.events import Progress, Result
from core.images import load_image
from core.vector import results

from .common import GPU, Tab, about, deliver, example, gpu, job_updates, md_text, status_text, user_errors
from .widgets import Number, Radio, Slider

TITLE = "Text-to-SVG"

STOPPED_KEPT = "**Stopped.** The last SVG is kept: download it (SVG or PNG) from the files."
STOPPED_EMPTY = "**Stopped.** No SVG was made yet."
SET_STOPPED_KEPT = "**Stopped.** The icons vectorized so far are in the files."
SET_STOPPED_EMPTY = "**Stopped.** The set was not finished."

# one click fills a form, then its button: text prompts (prompt, style), an image to vectorize, icon sets
TEXT_EXAMPLES = [("a red panda eating bamboo", "iconographic"), ("a lighthouse on a cliff", "iconographic"),
                 ("a cup of coffee", "pixel art"), ("a bicycle", "sketch")]
IMAGE_EXAMPLES = ["icon-leaf.png", "style-mosaic.png"]
SET_EXAMPLES = ["a guitar\na hot air balloon\na sailboat\na mountain", "a fox\nan owl\na bear"]

SUMMARY = ("**Make SVG vector art from a text prompt, or trace an image into an SVG.** Type a prompt and "
           "Generate SVG; the SVG and a PNG are ready to download at any moment.")
ABOUT = ("VectorFusion (Jain et al., CVPR 2023). From text: the model samples K images of the prompt + "
         f"\"{vectorfusion.SUFFIX}\", CLIP ranks them and picks the best, LIVE (layer-wise image vectorization) "
         "traces it path by path, then score distillation sampling (SDS) through our differentiable rasterizer "
         "refines the paths so that the rendered SVG looks like the prompt to the diffusion model (guidance 100, "
         "as in the paper). \"From scratch\" skips the sampling and starts SDS from random paths. Styles: "
         "iconographic (filled closed paths), pixel art (a grid of squares), sketch (open strokes). From an "
         "image: vtracer's tracing refined (the default, the better one), or LIVE, with a path budget. "
         "Icon set: a Style-Aligned set of the prompts (one shared style), each vectorized. The preview is the "
         "download: cairosvg renders the very SVG file offered below it.")

START_CHOICES = [("Baseline: sample K, rank with CLIP, LIVE, then SDS", "baseline"),
                 ("From scratch: random paths, SDS only", "scratch")]


def _status(event) -> str:
    """A progress line with the frame's loss, PSNR and path count."""
    line = status_text(event)
    m = getattr(event, "metrics", None) or {}
    bits = []
    if "loss" in m:
        bits.append(f"loss {m['loss']:.4g}")
    if "psnr" in m:
        bits.append(f"PSNR {m['psnr']:.1f} dB")
    if "paths" in m:
        bits.append(f"{int(m['paths'])} paths")
    return line + (" · " + " · ".join(bits) if bits else "")


def _captions(candidates: results.Candidates) -> list:
    return [(img, f"CLIP {s:.3f}" + (" (best)" if i == candidates.best else ""))
            for i, (img, s) in enumerate(zip(candidates.images, candidates.clip_scores))]


def _run_line(result: Result) -> str:
    """The line of a text-to-SVG Result: the candidates' stage, or what the run made, with its
    last SDS step (the step counter's last value, which the closing line replaces)."""
    if results.stage(result) == results.CANDIDATES:
        return "**Candidates ranked by CLIP.**"
    run = results.SvgRun.from_result(result)
    sds = f"SDS {run.sds_steps}/{run.sds_steps} · final loss {run.final_loss:.4g} · " if run.sds_steps else ""
    styled = f" Library style: {md_text(run.library_style)}." if run.library_style else ""
    return f"**Done.** {sds}{run.paths} paths.{styled}"


def _vectorized_line(result: Result) -> str:
    run = results.VectorizedImage.from_result(result)
    return f"**Done.** {run.paths} paths · PSNR {run.psnr:.1f} dB at {run.size[0]}x{run.size[1]}"


def _set_line(result: Result) -> str:
    if results.stage(result) == results.SET:
        return "**Style-aligned set done; vectorizing.**"
    icons = results.IconSet.from_result(result)
    styled = "" if not icons.library_style else f" Library style: {md_text(icons.library_style)}" + \
        ("; every icon aligned to its image." if icons.aligned_to_style else ".")
    return f"**Done.** {len(icons.svgs)} icons.{styled}"


def _delivered(paths) -> tuple:
    """(svg, png) copies for Gradio to hand out (tabs.common.deliver); skips while there are none."""
    return tuple(deliver(p) for p in paths) if paths else (gr.skip(), gr.skip())


def _preview_every(steps: int) -> int:
    """A frame every ~1/40 of the run, at least every step and at most every 10."""
    return max(1, min(10, steps // 40))


# Writing the SVG and its PNG for a frame costs as much as a short run's SDS step: frames take at
# most this share of a VectorFusion run's time (core.pacing.PreviewPacer), the rest stream as text.
PREVIEW_SHARE = 0.1


def result_panel(prefix: str):
    """The current SVG (as cairosvg renders it), its SVG and PNG downloads, hidden details."""
    preview = gr.Image(label="Current SVG (rendered by cairosvg)", type="filepath",
                       interactive=False, height=360, elem_id=f"{prefix}-preview")
    with gr.Row():
        svg_file = gr.File(label="SVG", interactive=False, elem_id=f"{prefix}-file")
        png_file = gr.File(label="PNG", interactive=False, elem_id=f"{prefix}-png")
    info = gr.JSON(label="Details", visible=False)
    return preview, svg_file, png_file, info


class SvgTab(Tab):
    title = TITLE
    api_prefix = "svg"

    # ------------------------------------------------------------------ handlers
    @user_errors
    def show_image(self, image):
        """The uploaded raster as it will be read (a clear error for what is not an image)."""
        paths = v.files(image, "Raster image", 1)
        return load_image(paths[0], what="image to vectorize", max_side=1024) if paths else None

    def default_preset(self) -> str:
        """The papers' settings, except on the offline tiny family (a CPU demo): the fast ones."""
        return "fast" if self.engine.offline else "paper"

    @user_errors
    def preset_values(self, preset, paths):
        """The budgets a preset stands for, into the sliders: (K, SDS steps, sampling steps, LIVE
        steps in all for this many paths)."""
        preset = v.choice(preset, "Settings", list(vectorfusion.PRESETS))
        n_paths = v.whole(paths, "Paths", 1, vectorfusion.MAX_PATHS)
        st = vectorfusion.VectorFusionSettings.preset(preset)
        return st.k, st.sds_steps, st.sample_steps, min(5000, st.live.total_steps(n_paths))

    @user_errors
    @gpu(duration=600)
    def generate(self, prompt, style, start, paths, k, steps, guidance, seed, sample_steps, live_steps, negative,
                 preset=None, library_style=None, style_weight=1.0, visitor=None, request: gr.Request = None):
        """VectorFusion from text, streamed: (candidates, preview, status, SVG file, PNG file, details).
        `library_style`: the id of a StyleDrop adapter or B-LoRA the visitor may use, on with
        `style_weight` for the whole run; `visitor` owns the run's folder."""
        n_paths = v.whole(paths, "Paths", 1, vectorfusion.MAX_PATHS)
        k_n = v.whole(k, "K samples to rank", 1, vectorfusion.MAX_K)
        steps_n = v.whole(steps, "SDS steps", 0, vectorfusion.MAX_SDS_STEPS)
        guidance_f = v.real(guidance, "SDS guidance", 0, 200)
        seed_n = v.seed(seed)
        sample_n = v.whole(sample_steps, "Sampling steps", 1, 100)
        live_n = v.whole(live_steps, "LIVE steps in all", 1, 5000)
        preset = self.default_preset() if preset is None else v.choice(preset, "Settings", list(vectorfusion.PRESETS))
        style = v.choice(style, "Style", list(vectorfusion.STYLES))
        start = v.choice(start, "Start from", [c for _, c in START_CHOICES])
        prompt, negative = v.text(prompt, "Prompt", 2_000), v.text(negative, "Negative prompt", 2_000)
        caller = self.caller(request, visitor)
        picked, style_weight_f = self.library_style(library_style, style_weight, caller.owner)
        options = vectorfusion.VFOptions(style=style, num_paths=n_paths, steps=steps_n, guidance=guidance_f,
                                         seed=seed_n, negative_prompt=negative, preview_every=_preview_every(steps_n),
                                         preview_share=PREVIEW_SHARE)
        events = vectorfusion.text_to_svg(
            self.engine, prompt, options, init=start, preset=preset, k=k_n, sample_steps=sample_n, live_steps=live_n,
            metrics=self.ctx.metrics, data_dir=self.ctx.data_dir, owner=caller.owner, stop_key=caller.stop_key,
            library_style=picked, style_weight=style_weight_f)
        shown: list = []      # the candidates, repeated in the last update (API callers see only it)
        on_disk: list = []    # the current SVG and PNG, once there is one
        for u in job_updates(events, stopped=lambda: STOPPED_KEPT if on_disk else STOPPED_EMPTY, done=_run_line,
                             progress=_status):
            ev = u.event
            if u.stopped:     # the job's own last word, with the SVG it wrote on stopping
                svg, png = _delivered(on_disk)
                yield shown or gr.skip(), png, u.status, svg, png, gr.skip()
            elif isinstance(ev, Result) and results.stage(ev) == results.CANDIDATES:
                shown = _captions(results.Candidates.from_result(ev))
                yield shown, gr.skip(), u.status, gr.skip(), gr.skip(), gr.skip()
            elif isinstance(ev, vectorfusion.SvgProgress):
                on_disk[:] = ev.files
                svg, png = _delivered(on_disk)
                yield gr.skip(), png, u.status, svg, png, gr.skip()
            elif isinstance(ev, Progress):
                yield ev.preview or gr.skip(), gr.skip(), u.status, gr.skip(), gr.skip(), gr.skip()
            elif isinstance(ev, Result):
                run = results.SvgRun.from_result(ev)
                svg, png = _delivered([run.svg_path, run.png_path])
                yield shown, png, u.status, svg, png, run.details
            else:
                yield gr.skip(), gr.skip(), u.status, gr.skip(), gr.skip(), gr.skip()

    @user_errors
    @gpu(duration=300)
    def vectorize(self, image, method, paths, steps, size, visitor=None, request: gr.Request = None):
        """Image to SVG, streamed: (preview, status, SVG file, PNG file, details)."""
        n_paths = v.whole(paths, "Path budget", 1, 512)
        steps_n = v.whole(steps, "Steps", 0, 5000)
        size_n = v.whole(size, "Working size", 32, 600)
        method = v.choice(method, "Method", ["live", "vtracer"])
        images = v.files(image, "Raster image", 1)
        caller = self.caller(request, visitor)     # a forged token is refused first
        if not images:
            raise gr.Error("Upload an image to vectorize.", print_exception=False)
        events = vectorfusion.image_to_svg(
            self.engine, images[0], num_paths=n_paths, init=method, steps=steps_n, size=size_n,
            data_dir=self.ctx.data_dir, owner=caller.owner, stop_key=caller.stop_key,
            preview_every=_preview_every(steps_n))
        on_disk: list = []
        for u in job_updates(events, stopped=lambda: STOPPED_KEPT if on_disk else STOPPED_EMPTY,
                             done=_vectorized_line, progress=_status):
            ev = u.event
            if u.stopped:
                svg, png = _delivered(on_disk)
                yield png, u.status, svg, png, gr.skip()
            elif isinstance(ev, vectorfusion.SvgProgress):
                on_disk[:] = ev.files
                svg, png = _delivered(on_disk)
                yield png, u.status, svg, png, gr.skip()
            elif isinstance(ev, Result):
                run = results.VectorizedImage.from_result(ev)
                svg, png = _delivered([run.svg_path, run.png_path])
                yield png, u.status, svg, png, run.details
            else:
                yield gr.skip(), u.status, gr.skip(), gr.skip(), gr.skip()

    @user_errors
    @gpu(duration=600)
    def icon_set(self, prompts, paths, live_steps, size, seed, steps, guidance, visitor=None, library_style=None,
                 style_weight=1.0, request: gr.Request = None):
        """A Style-Aligned set, each icon vectorized, streamed: (icons, status, files, details).
        `library_style`: a library style whose adapter is on while the set is made and whose image
        (a saved style's) is the set's reference."""
        n_paths = v.whole(paths, "Paths per icon", 1, 256)
        live_n = v.whole(live_steps, "LIVE steps per icon", 1, 5000)
        size_n = v.whole(size, "Working size", 32, 600)
        seed_n = v.seed(seed)
        steps_n = v.whole(steps, "Sampling steps", 1, 100)
        guidance_f = v.real(guidance, "Guidance", 0, 20)
        prompts = v.text(prompts, "One icon per line", 10_000)
        caller = self.caller(request, visitor)
        picked, style_weight_f = self.library_style(library_style, style_weight, caller.owner)
        events = vectorfusion.icon_set(
            self.engine, prompts.splitlines(), num_paths=n_paths, live_steps=live_n, live_size=size_n, seed=seed_n,
            steps=steps_n, guidance=guidance_f, metrics=self.ctx.metrics, data_dir=self.ctx.data_dir,
            owner=caller.owner, stop_key=caller.stop_key, library_style=picked, style_weight=style_weight_f)
        on_disk: dict[str, None] = {}     # every icon's SVG and PNG so far, in order
        for u in job_updates(events, stopped=lambda: SET_STOPPED_KEPT if on_disk else SET_STOPPED_EMPTY,
                             done=_set_line, progress=_status):
            ev = u.event
            if u.stopped:
                yield gr.skip(), u.status, [deliver(p) for p in on_disk] if on_disk else gr.skip(), gr.skip()
            elif isinstance(ev, Result) and results.stage(ev) == results.SET:
                yield ev.images, u.status, gr.skip(), gr.skip()
            elif isinstance(ev, vectorfusion.SvgProgress):
                on_disk.update(dict.fromkeys(ev.files))
                yield gr.skip(), u.status, gr.skip(), gr.skip()
            elif isinstance(ev, Progress):
                yield ev.preview or gr.skip(), u.status, gr.skip(), gr.skip()
            elif isinstance(ev, Result):
                icons = results.IconSet.from_result(ev)
                yield list(icons.images), u.status, [deliver(p) for p in icons.files], icons.details
            else:
                yield gr.skip(), u.status, gr.skip(), gr.skip()

    # ------------------------------------------------------------------ layout and wiring
    def build(self) -> None:
        about(SUMMARY, ABOUT)
        with gr.Tab("From text"):
            self._from_text()
        with gr.Tab("From an image"):
            self._from_image()
        with gr.Tab("Icon set"):
            self._icon_set()

    def _from_text(self) -> None:
        tiny = self.engine.offline
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value=TEXT_EXAMPLES[0][0], elem_id="svg-prompt")
                style = Radio(list(vectorfusion.STYLES), value=TEXT_EXAMPLES[0][1], label="Style (iconographic: "
                              "filled paths · pixel art: grid of squares · sketch: strokes)", elem_id="svg-style")
                preset = Radio([("The papers' settings (VectorFusion, LIVE: 1000 SDS steps, 500 LIVE steps per "
                                 "16 paths, 600 px)", "paper"),
                                ("Fast (ours: half the steps, LIVE at 256 px)", "fast")],
                               value=self.default_preset(), label="Settings", elem_id="svg-preset")
                with gr.Row():
                    run = gr.Button("Generate SVG", variant="primary", elem_id="svg-generate")
                    stop = gr.Button("Stop (keeps the last SVG)", variant="stop", elem_id="svg-stop")
                gr.Examples([list(e) for e in TEXT_EXAMPLES], [prompt, style],
                            label="Examples: click one, then Generate SVG", examples_per_page=len(TEXT_EXAMPLES),
                            elem_id="svg-examples", example_labels=[f"{p} ({st})" for p, st in TEXT_EXAMPLES])
                with gr.Accordion("Settings: start, paths, steps, seed", open=False):
                    start = Radio(START_CHOICES, value="baseline", label="Start from", elem_id="svg-start")
                    budget = vectorfusion.VectorFusionSettings.preset(self.default_preset())
                    with gr.Row():
                        paths = Slider(1, vectorfusion.MAX_PATHS, value=16 if tiny else 64, step=1,
                                       label="Paths (pixel art: squares in the grid)", elem_id="svg-paths")
                        k = Slider(1, vectorfusion.MAX_K, value=2 if tiny else budget.k, step=1,
                                   label="K samples to rank", elem_id="svg-k")
                    with gr.Row():
                        steps = Slider(0, vectorfusion.MAX_SDS_STEPS, value=6 if tiny else budget.sds_steps, step=1,
                                       label="SDS steps", elem_id="svg-steps")
                        guidance = Slider(0, 200, value=100, step=1, label="SDS guidance (the paper: 100)",
                                          elem_id="svg-guidance")
                        seed = Number(label="Seed", value=0, precision=0, minimum=0, elem_id="svg-seed")
                    sample_steps = Slider(1, 100, value=2 if tiny else budget.sample_steps, step=1,
                                          label="Sampling steps (baseline)")
                    live_steps = Slider(1, 5000, value=6 if tiny else min(5000, budget.live.total_steps(64)), step=1,
                                        label="LIVE steps in all (baseline vectorization)")
                    negative = gr.Textbox(label="Negative prompt", value="")
                library_style = self.library_style_inputs(
                    "svg", "A StyleDrop adapter or the style half of a B-LoRA you trained (or one shared with you), "
                           "on while the candidates are sampled and during score distillation: vector art in that "
                           "style. Its style words join the prompt.")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="svg-status")
                preview, svg_file, png_file, info = result_panel("svg")
                candidates = gr.Gallery(label="Candidates (CLIP score)", columns=4, height=150, object_fit="contain",
                                        elem_id="svg-candidates")
        run.click(self.generate, [prompt, style, start, paths, k, steps, guidance, seed, sample_steps, live_steps,
                                  negative, preset, *library_style, self.visitor],
                  [candidates, preview, status, svg_file, png_file, info],
                  api_name="svg_generate", **GPU)
        preset.change(self.preset_values, [preset, paths], [k, steps, sample_steps, live_steps],
                      api_visibility="private", show_progress="hidden")
        self.wire_stop(stop)

    def _from_image(self) -> None:
        tiny = self.engine.offline
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    image = gr.File(label="Raster image (PNG, JPEG, WebP ...)", file_types=["image"],
                                    type="filepath", height=150, elem_id="vec-image")
                    image_view = gr.Image(label="As read", interactive=False, height=150, elem_id="vec-image-view")
                with gr.Row():
                    run = gr.Button("Vectorize", variant="primary", elem_id="vec-run")
                    stop = gr.Button("Stop (keeps the last SVG)", variant="stop", elem_id="vec-stop")
                gr.Examples([[example(n)] for n in IMAGE_EXAMPLES], [image],
                            label="Examples: click one, then Vectorize", elem_id="vec-examples",
                            example_labels=[n.removesuffix(".png") for n in IMAGE_EXAMPLES])
                method = Radio([("LIVE (layer by layer)", "live"), ("vtracer + refinement", "vtracer")],
                               value="vtracer", label="Method", elem_id="vec-method")
                with gr.Row():
                    paths = Slider(1, 512, value=16, step=1, label="Path budget", elem_id="vec-paths")
                    steps = Slider(0, 5000, value=100 if tiny else 500, step=1, label="Steps", elem_id="vec-steps")
                    size = Slider(32, 600, value=64 if tiny else 256, step=8, label="Working size (px)",
                                  elem_id="vec-size")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="vec-status")
                preview, svg_file, png_file, info = result_panel("vec")
        image.change(self.show_image, image, image_view, api_name=False)
        run.click(self.vectorize, [image, method, paths, steps, size, self.visitor],
                  [preview, status, svg_file, png_file, info],
                  api_name="vectorize", **GPU)
        self.wire_stop(stop, api_name="vectorize_stop")

    def _icon_set(self) -> None:
        tiny = self.engine.offline
        with gr.Row():
            with gr.Column(scale=1):
                prompts = gr.Textbox(label="One icon per line (a Style-Aligned set: one shared style)", lines=4,
                                     value=SET_EXAMPLES[0], elem_id="set-prompts")
                with gr.Row():
                    run = gr.Button("Make the icon set", variant="primary", elem_id="set-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="set-stop")
                gr.Examples([[e] for e in SET_EXAMPLES], [prompts], label="Examples: click one, then Make the icon set",
                            elem_id="set-examples")
                with gr.Row():
                    paths = Slider(1, 256, value=8 if tiny else 32, step=1, label="Paths per icon",
                                   elem_id="set-paths")
                    live_steps = Slider(1, 5000, value=6 if tiny else 300, step=1, label="LIVE steps per icon")
                    size = Slider(32, 600, value=64 if tiny else 256, step=8, label="Working size (px)")
                with gr.Row():
                    seed = Number(label="Seed", value=0, precision=0, minimum=0)
                    steps = Slider(1, 100, value=2 if tiny else 30, step=1, label="Sampling steps")
                    guidance = Slider(0, 20, value=5.0, step=0.5, label="Guidance")
                library_style = self.library_style_inputs(
                    "set", "A style saved from any tab: its image is the set's reference, so every icon takes "
                           "its style (and its adapter, if it has one, is on); or a StyleDrop adapter or B-LoRA "
                           "style half alone.")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="set-status")
                gallery = gr.Gallery(label="Icons (rendered by cairosvg from the SVGs)", columns=4, height="auto",
                                     object_fit="contain",
                                     elem_id="set-gallery")
                files = gr.File(label="SVG and PNG files", file_count="multiple", interactive=False,
                                elem_id="set-files")
                info = gr.JSON(label="Details", visible=False)
        run.click(self.icon_set, [prompts, paths, live_steps, size, seed, steps, guidance, self.visitor,
                                  *library_style],  # after the token: earlier API calls keep working
                  [gallery, status, files, info], api_name="svg_icon_set", **GPU)
        self.wire_stop(stop, api_name="svg_icon_set_stop")


build = SvgTab.mount  # the tab module's entry point (tabs/__init__.py)
