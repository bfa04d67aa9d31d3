"""The Text-to-SVG tab: VectorFusion (Jain et al., CVPR 2023), image vectorization and icon sets.

Three parts, each a streaming handler with its own Stop:
- From text (api_name="svg_generate"): baseline (K samples ranked by CLIP, LIVE on the best)
  then score distillation through our rasterizer; candidates with their CLIP scores, then
  frames and the loss; the current SVG and PNG can be downloaded at any moment.
- From an image (api_name="vectorize"): LIVE, or vtracer's tracing refined, with a path budget.
- Icon set (api_name="svg_icon_set"): a Style-Aligned set of prompts, each vectorized.

The preview is the PNG that cairosvg renders from the very SVG file offered for download.
"""
from __future__ import annotations

import gradio as gr

from core import validate as v
from core import vectorfusion as vf
from core.errors import Cancelled
from core.events import Notice, Progress, Result
from core.images import load_image

from .common import GPU, AppContext, deliver, gpu, session_key, status_text, stopped_text, user_errors
from .widgets import Number, Radio, Slider

TITLE = "Text-to-SVG"

STOPPED_KEPT = "**Stopped.** The last SVG is kept: download it (SVG or PNG) from the files."

START_CHOICES = [("Baseline: sample K, rank with CLIP, LIVE, then SDS", "baseline"),
                 ("From scratch: random paths, SDS only", "scratch")]


def _status(event, extra: str = "") -> str:
    line = status_text(event)
    m = getattr(event, "metrics", None) or {}
    bits = []
    if "loss" in m:
        bits.append(f"loss {m['loss']:.4g}")
    if "psnr" in m:
        bits.append(f"PSNR {m['psnr']:.1f} dB")
    if "paths" in m:
        bits.append(f"{int(m['paths'])} paths")
    if bits:
        line += " · " + " · ".join(bits)
    return line + extra


def _candidates(result: Result) -> list:
    scores, best = result.info["clip_scores"], result.info["best"]
    return [(img, f"CLIP {s:.3f}" + (" (best)" if i == best else ""))
            for i, (img, s) in enumerate(zip(result.images, scores))]


def result_panel(prefix: str):
    """The current SVG (as cairosvg renders it), its SVG and PNG downloads, hidden details."""
    preview = gr.Image(label="Current SVG (rendered by cairosvg)", type="filepath",
                       interactive=False, height=360, elem_id=f"{prefix}-preview")
    with gr.Row():
        svg_file = gr.File(label="SVG", interactive=False, elem_id=f"{prefix}-file")
        png_file = gr.File(label="PNG", interactive=False, elem_id=f"{prefix}-png")
    info = gr.JSON(label="Details", visible=False)
    return preview, svg_file, png_file, info


def _delivered(paths) -> tuple:
    """(svg, png) copies for Gradio to hand out (tabs.common.deliver)."""
    return tuple(deliver(p) for p in paths)


def _public_info(info: dict) -> dict:
    """What the Details panel shows: no file paths (they would tell where the server keeps them)."""
    return {k: val for k, val in info.items() if k not in ("files", "svgs", "folder", "paths_on_disk")}


def build(ctx: AppContext) -> None:
    engine = ctx.engine
    tiny = engine.offline

    gr.Markdown("**VectorFusion**: SVG icons from text. The model samples K images of the prompt + "
                f"\"{vf.SUFFIX}\", CLIP picks the best, LIVE vectorizes it layer by layer, then score "
                "distillation through our differentiable rasterizer refines the paths. The preview is "
                "the download: cairosvg renders the very SVG file offered below.")
    with gr.Tab("From text"):
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value="a red panda eating bamboo", elem_id="svg-prompt")
                style = Radio(list(vf.STYLES), value="iconographic", label="Style "
                                 "(iconographic: filled paths · pixel art: grid of squares · sketch: strokes)",
                                 elem_id="svg-style")
                start = Radio(START_CHOICES, value="baseline", label="Start from", elem_id="svg-start")
                with gr.Row():
                    paths = Slider(1, vf.MAX_PATHS, value=16 if tiny else 64, step=1,
                                      label="Paths (pixel art: squares in the grid)", elem_id="svg-paths")
                    k = Slider(1, vf.MAX_K, value=2 if tiny else 4, step=1, label="K samples to rank",
                                  elem_id="svg-k")
                with gr.Row():
                    steps = Slider(0, vf.MAX_SDS_STEPS, value=6 if tiny else 500, step=1, label="SDS steps",
                                      elem_id="svg-steps")
                    guidance = Slider(0, 200, value=100, step=1, label="SDS guidance (the paper: 100)",
                                         elem_id="svg-guidance")
                    seed = Number(label="Seed", value=0, precision=0, minimum=0, elem_id="svg-seed")
                with gr.Accordion("Advanced", open=False):
                    sample_steps = Slider(1, 100, value=2 if tiny else 30, step=1, label="Sampling steps (baseline)")
                    live_steps = Slider(1, 5000, value=6 if tiny else 500, step=1,
                                           label="LIVE steps (baseline vectorization)")
                    negative = gr.Textbox(label="Negative prompt", value="")
                with gr.Row():
                    run = gr.Button("Generate SVG", variant="primary", elem_id="svg-generate")
                    stop = gr.Button("Stop (keeps the last SVG)", variant="stop", elem_id="svg-stop")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="svg-status")
                candidates = gr.Gallery(label="Candidates (CLIP score)", columns=4, height=180,
                                        elem_id="svg-candidates")
                preview, svg_file, png_file, info = result_panel("svg")

    with gr.Tab("From an image"):
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="Raster image (PNG, JPEG, WebP ...)", file_types=["image"],
                                type="filepath", elem_id="vec-image")
                image_view = gr.Image(label="As read", interactive=False, height=160, elem_id="vec-image-view")
                method = Radio([("LIVE (layer by layer)", "live"), ("vtracer + refinement", "vtracer")],
                                  value="live", label="Method", elem_id="vec-method")
                with gr.Row():
                    v_paths = Slider(1, 512, value=16, step=1, label="Path budget", elem_id="vec-paths")
                    v_steps = Slider(0, 5000, value=100 if tiny else 500, step=1, label="Steps",
                                        elem_id="vec-steps")
                    v_size = Slider(32, 600, value=64 if tiny else 256, step=8,
                                       label="Working size (px)", elem_id="vec-size")
                with gr.Row():
                    v_run = gr.Button("Vectorize", variant="primary", elem_id="vec-run")
                    v_stop = gr.Button("Stop (keeps the last SVG)", variant="stop", elem_id="vec-stop")
            with gr.Column(scale=1):
                v_status = gr.Markdown("", elem_id="vec-status")
                v_preview, v_svg, v_png, v_info = result_panel("vec")

    with gr.Tab("Icon set"):
        with gr.Row():
            with gr.Column(scale=1):
                set_prompts = gr.Textbox(label="One icon per line (a Style-Aligned set: one shared style)",
                                         lines=4, value="a guitar\na hot air balloon\na sailboat\na mountain",
                                         elem_id="set-prompts")
                with gr.Row():
                    s_paths = Slider(1, 256, value=8 if tiny else 32, step=1, label="Paths per icon",
                                        elem_id="set-paths")
                    s_live = Slider(1, 5000, value=6 if tiny else 300, step=1, label="LIVE steps per icon")
                    s_size = Slider(32, 600, value=64 if tiny else 256, step=8, label="Working size (px)")
                with gr.Row():
                    s_seed = Number(label="Seed", value=0, precision=0, minimum=0)
                    s_steps = Slider(1, 100, value=2 if tiny else 30, step=1, label="Sampling steps")
                    s_guid = Slider(0, 20, value=5.0, step=0.5, label="Guidance")
                with gr.Row():
                    s_run = gr.Button("Make the icon set", variant="primary", elem_id="set-run")
                    s_stop = gr.Button("Stop", variant="stop", elem_id="set-stop")
            with gr.Column(scale=1):
                s_status = gr.Markdown("", elem_id="set-status")
                s_gallery = gr.Gallery(label="Icons (rendered by cairosvg from the SVGs)", columns=4,
                                       height="auto", elem_id="set-gallery")
                s_files = gr.File(label="SVG and PNG files", file_count="multiple", interactive=False,
                                  elem_id="set-files")
                s_info = gr.JSON(label="Details", visible=False)

    # ------------------------------------------------------------------ handlers
    @user_errors
    @gpu(duration=600)
    def generate(prompt_v, style_v, start_v, paths_v, k_v, steps_v, guidance_v, seed_v, sample_v, live_v,
                 negative_v, request: gr.Request):
        n_paths = v.whole(paths_v, "Paths", 1, vf.MAX_PATHS)
        k_n = v.whole(k_v, "K samples to rank", 1, vf.MAX_K)
        steps_n = v.whole(steps_v, "SDS steps", 0, vf.MAX_SDS_STEPS)
        guidance_f = v.real(guidance_v, "SDS guidance", 0, 200)
        seed_n = v.seed(seed_v)
        sample_n = v.whole(sample_v, "Sampling steps", 1, 100)
        live_n = v.whole(live_v, "LIVE steps", 1, 5000)
        style_v = v.choice(style_v, "Style", list(vf.STYLES))
        start_v = v.choice(start_v, "Start from", [c for _, c in START_CHOICES])
        prompt_v, negative_v = v.text(prompt_v, "Prompt", 2_000), v.text(negative_v, "Negative prompt", 2_000)
        caller = ctx.caller(request)
        options = vf.VFOptions(style=style_v, num_paths=n_paths, steps=steps_n, guidance=guidance_f, seed=seed_n,
                               negative_prompt=negative_v, preview_every=max(1, min(10, steps_n // 40)))
        events = vf.text_to_svg(engine, prompt_v, options, init=start_v, k=k_n, sample_steps=sample_n,
                                live_steps=live_n, metrics=ctx.metrics, data_dir=ctx.data_dir,
                                owner=caller.owner, stop_key=caller.stop_key)
        notes: list[str] = []
        shown: list = []            # the candidates, repeated in the last update (API callers see only it)
        files: tuple = ()           # the current SVG and PNG (delivered copies), once there is one
        try:
            for event in events:
                if isinstance(event, Notice):
                    notes.append(event.message)
                    yield gr.skip(), gr.skip(), "\n\n".join(notes), gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, Result) and event.info.get("stage") == "candidates":
                    shown = _candidates(event)
                    yield (shown, gr.skip(), "\n\n".join(notes + ["**Candidates ranked by CLIP.**"]),
                           gr.skip(), gr.skip(), gr.skip())
                elif isinstance(event, vf.SvgProgress):
                    files = _delivered(event.files)
                    svg_path, png_path = files
                    yield (gr.skip(), png_path, "\n\n".join(notes + [_status(event)]), svg_path, png_path, gr.skip())
                elif isinstance(event, Progress):
                    preview_v = event.preview if event.preview else gr.skip()
                    yield preview_v, gr.skip(), "\n\n".join(notes + [_status(event)]), gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, Result):
                    svg_path, png_path = _delivered(event.files)
                    done = f"**Done.** {event.info['paths']} paths."
                    yield shown, png_path, "\n\n".join(notes + [done]), svg_path, png_path, _public_info(event.info)
        except Cancelled as exc:
            # the job's own last word (see tabs/style_aligned.py), with the SVG it wrote on stopping
            svg_path, png_path = files or (gr.skip(), gr.skip())
            kept = stopped_text(exc, STOPPED_KEPT if files else "**Stopped.** No SVG was made yet.")
            yield shown or gr.skip(), png_path, "\n\n".join(notes + [kept]), svg_path, png_path, gr.skip()

    @user_errors
    @gpu(duration=300)
    def vectorize(image_v, method_v, paths_v, steps_v, size_v, request: gr.Request):
        n_paths = v.whole(paths_v, "Path budget", 1, 512)
        steps_n = v.whole(steps_v, "Steps", 0, 5000)
        size_n = v.whole(size_v, "Working size", 32, 600)
        method_v = v.choice(method_v, "Method", ["live", "vtracer"])
        images = v.files(image_v, "Raster image", 1)
        if not images:
            raise gr.Error("Upload an image to vectorize.", print_exception=False)
        caller = ctx.caller(request)
        events = vf.image_to_svg(engine, images[0], num_paths=n_paths, init=method_v, steps=steps_n,
                                 size=size_n, data_dir=ctx.data_dir, owner=caller.owner,
                                 stop_key=caller.stop_key, preview_every=max(1, min(10, steps_n // 40)))
        files: tuple = ()
        try:
            for event in events:
                if isinstance(event, vf.SvgProgress):
                    files = _delivered(event.files)
                    svg_path, png_path = files
                    yield png_path, _status(event), svg_path, png_path, gr.skip()
                elif isinstance(event, Result):
                    svg_path, png_path = _delivered(event.files)
                    done = (f"**Done.** {event.info['paths']} paths · PSNR {event.info['psnr']:.1f} dB "
                            f"at {event.info['size'][0]}x{event.info['size'][1]}")
                    yield png_path, done, svg_path, png_path, _public_info(event.info)
                elif isinstance(event, (Progress, Notice)):
                    yield gr.skip(), status_text(event), gr.skip(), gr.skip(), gr.skip()
        except Cancelled as exc:  # the job's own last word (see tabs/style_aligned.py)
            svg_path, png_path = files or (gr.skip(), gr.skip())
            yield (png_path, stopped_text(exc, STOPPED_KEPT if files else "**Stopped.** No SVG was made yet."),
                   svg_path, png_path, gr.skip())

    @user_errors
    @gpu(duration=600)
    def make_set(prompts_v, paths_v, live_v, size_v, seed_v, steps_v, guid_v, request: gr.Request):
        n_paths = v.whole(paths_v, "Paths per icon", 1, 256)
        live_n = v.whole(live_v, "LIVE steps per icon", 1, 5000)
        size_n = v.whole(size_v, "Working size", 32, 600)
        seed_n = v.seed(seed_v)
        steps_n = v.whole(steps_v, "Sampling steps", 1, 100)
        guid_f = v.real(guid_v, "Guidance", 0, 20)
        prompts_v = v.text(prompts_v, "One icon per line", 10_000)
        caller = ctx.caller(request)
        events = vf.icon_set(engine, prompts_v.splitlines(), num_paths=n_paths, live_steps=live_n, live_size=size_n,
                             seed=seed_n, steps=steps_n, guidance=guid_f, metrics=ctx.metrics,
                             data_dir=ctx.data_dir, owner=caller.owner, stop_key=caller.stop_key)
        files: dict[str, None] = {}     # every icon's SVG and PNG so far (delivered copies), in order
        try:
            for event in events:
                if isinstance(event, Result) and event.info.get("stage") == "set":
                    yield event.images, "**Style-aligned set done; vectorizing.**", gr.skip(), gr.skip()
                elif isinstance(event, vf.SvgProgress):
                    yield gr.skip(), _status(event), gr.skip(), gr.skip()
                    files.update(dict.fromkeys(event.files))
                elif isinstance(event, Progress):
                    yield (event.preview if event.preview else gr.skip()), _status(event), gr.skip(), gr.skip()
                elif isinstance(event, Notice):
                    yield gr.skip(), f"Note: {event.message}", gr.skip(), gr.skip()
                elif isinstance(event, Result):
                    yield (event.images, f"**Done.** {len(event.info['svgs'])} icons.",
                           [deliver(p) for p in event.files], _public_info(event.info))
        except Cancelled as exc:  # the job's own last word (see tabs/style_aligned.py)
            if files:
                yield (gr.skip(), stopped_text(exc, "**Stopped.** The icons vectorized so far are in the files."),
                       [deliver(p) for p in files], gr.skip())
            else:
                yield gr.skip(), stopped_text(exc, "**Stopped.** The set was not finished."), gr.skip(), gr.skip()

    @user_errors
    def show_image(path):
        paths = v.files(path, "Raster image", 1)
        return load_image(paths[0], what="image to vectorize", max_side=1024) if paths else None

    image.change(show_image, image, image_view, api_name=False)
    run.click(generate, [prompt, style, start, paths, k, steps, guidance, seed, sample_steps, live_steps, negative],
              [candidates, preview, status, svg_file, png_file, info], api_name="svg_generate", **GPU)
    v_run.click(vectorize, [image, method, v_paths, v_steps, v_size],
                [v_preview, v_status, v_svg, v_png, v_info], api_name="vectorize", **GPU)
    s_run.click(make_set, [set_prompts, s_paths, s_live, s_size, s_seed, s_steps, s_guid],
                [s_gallery, s_status, s_files, s_info], api_name="svg_icon_set", **GPU)

    def cancel(request: gr.Request):
        engine.cancel(session_key(request))  # the running job stops within one step and says so

    stop.click(cancel, None, None, queue=False, api_name="svg_stop")
    v_stop.click(cancel, None, None, queue=False, api_name="vectorize_stop")
    s_stop.click(cancel, None, None, queue=False, api_name="svg_icon_set_stop")
