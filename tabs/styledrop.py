"""The StyleDrop Loop tab (Sohn et al., NeurIPS 2023): an adapter tuned on one style image, then
feedback rounds driven by thumbs up/down and by CLIP.

Widgets and wiring only: the method is core/styledrop.py on the shared trainer; rounds,
candidates and ratings live in the store (a reload or a restart shows the loop where it was).
"""
from __future__ import annotations

import base64
import io
import threading
import time
from collections import OrderedDict

import gradio as gr
import pandas as pd
from PIL import Image

from core import library
from core import styledrop as sd
from core import validate as v
from core.errors import Cancelled, UserError
from core.events import Notice, Progress, Result
from core.images import load_image
from core.throttle import DistinctLimit, Throttle
from core.train import MAX_STEPS, TrainConfig, TrainStep

from .common import (GPU, PLOT_EVERY_S, AppContext, gpu, html_text, md_text, session_key,
                     status_text, stopped_text, user_errors)
from .widgets import Dropdown, Number, Radio, Slider

# Ratings of someone else's published loop, per client address: at most RATES_PER_MINUTE, and
# at most RATERS_PER_LOOP different visitor tokens per loop (tokens are free to get, votes are
# not free to stuff). A loop's owner rates their own loop without limits.
RATES_PER_MINUTE = 60
RATERS_PER_LOOP = 2

TITLE = "StyleDrop Loop"
THUMB = 256

# Visitor text goes in triple-stash fields only after tabs.common.html_text (Gradio evaluates the
# rendered template as a JavaScript template literal); the message is our own text.
GRID_TEMPLATE = """
<div class="sd-wrap">
  {{#if value.message}}<p class="sd-message">{{value.message}}</p>{{/if}}
  <div class="sd-grid" role="grid" aria-label="Candidates of this round">
  {{#each value.tiles}}
    <figure class="sd-tile{{#if liked}} sd-liked{{/if}}{{#if mine_up}} sd-mine-up{{/if}}{{#if mine_down}} sd-mine-down{{/if}}"
            tabindex="0" data-id="{{id}}" data-mine="{{mine}}" aria-label="{{{prompt}}}">
      <img src="{{src}}" alt="{{{prompt}}}" draggable="false">
      <figcaption>
        <span class="sd-content">{{{content}}}</span>
        <span class="sd-scores">{{scores}}</span>
        <span class="sd-votes"><b class="sd-up-n">👍 {{up}}</b> · <b class="sd-down-n">👎 {{down}}</b>{{#if clip}} · <i>CLIP ✓</i>{{/if}}{{#if liked}} · <b>liked</b>{{/if}}</span>
        <span class="sd-actions">
          <button type="button" class="sd-up" title="Thumbs up (U)" aria-pressed="{{mine_up}}">👍 up</button>
          <button type="button" class="sd-down" title="Thumbs down (D)" aria-pressed="{{mine_down}}">👎 down</button>
        </span>
      </figcaption>
    </figure>
  {{/each}}
  </div>
</div>
"""

GRID_CSS = """
.sd-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 8px; }
.sd-tile { margin: 0; border: 3px solid transparent; border-radius: 8px; padding: 4px; outline: none;
           background: var(--background-fill-secondary); }
.sd-tile:focus { border-color: var(--color-accent); }
.sd-tile.sd-liked { box-shadow: 0 0 0 2px #2e9d4a inset; }
.sd-tile img { width: 100%; aspect-ratio: 1; object-fit: cover; image-rendering: auto; border-radius: 4px; }
.sd-tile figcaption { display: flex; flex-direction: column; font-size: 12px; gap: 2px; }
.sd-content { font-weight: 600; }
.sd-actions { display: flex; gap: 6px; }
.sd-actions button { flex: 1; border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 2px;
                     background: var(--background-fill-primary); cursor: pointer; font-size: 13px; }
.sd-mine-up .sd-up { background: #c8efd2; border-color: #2e9d4a; }
.sd-mine-down .sd-down { background: #f6cccc; border-color: #c03030; }
.sd-message { color: var(--body-text-color-subdued); }
"""

# Clicks and keys on the grid: thumbs toggle on click; with a tile focused, U / + = thumbs up,
# D / - = thumbs down, 0 / X = withdraw (each moves on to the next tile), arrows move.
GRID_JS = """
const tiles = () => Array.from(element.querySelectorAll('.sd-tile'));
const send = (tile, v) => {
  element.dataset.focus = tile.dataset.id;
  trigger('click', {candidate: parseInt(tile.dataset.id), rating: v});
};
element.addEventListener('click', (ev) => {
  const b = ev.target.closest('button.sd-up, button.sd-down');
  const t = ev.target.closest('.sd-tile');
  if (!t) return;
  if (!b) { t.focus(); return; }
  const want = b.classList.contains('sd-up') ? 1 : -1;
  send(t, parseInt(t.dataset.mine) === want ? 0 : want);
});
element.addEventListener('keydown', (ev) => {
  const t = ev.target.closest ? ev.target.closest('.sd-tile') : null;
  if (!t || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const all = tiles(), i = all.indexOf(t), k = ev.key;
  const cols = Math.max(1, all.filter(x => x.offsetTop === all[0].offsetTop).length);
  const go = (j) => { if (j >= 0 && j < all.length) { all[j].focus(); element.dataset.focus = all[j].dataset.id; } };
  let v = null;
  if (k === 'u' || k === 'U' || k === '+') v = 1;
  else if (k === 'd' || k === 'D' || k === '-') v = -1;
  else if (k === '0' || k === 'x' || k === 'X' || k === 'Delete' || k === 'Backspace') v = 0;
  if (v !== null) {
    ev.preventDefault();
    send(t, v);
    if (i + 1 < all.length) element.dataset.focus = all[i + 1].dataset.id;
    return;
  }
  const moves = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols};
  if (k in moves) { ev.preventDefault(); go(i + moves[k]); }
});
watch('value', () => {
  const id = element.dataset.focus;
  if (!id) return;
  const t = element.querySelector('.sd-tile[data-id="' + id + '"]');
  if (t) t.focus({preventScroll: true});
});
"""

_thumbs: "OrderedDict[tuple, str]" = OrderedDict()
_thumbs_lock = threading.Lock()


def _data_uri(path: str) -> str:
    """A small JPEG of a candidate as a data URI (cached), so the grid needs no file route."""
    import os

    try:
        key = (path, os.path.getmtime(path))
    except OSError:
        return ""
    with _thumbs_lock:
        if key in _thumbs:
            _thumbs.move_to_end(key)
            return _thumbs[key]
    img = Image.open(path).convert("RGB")
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    with _thumbs_lock:
        _thumbs[key] = uri
        while len(_thumbs) > 1024:
            _thumbs.popitem(last=False)
    return uri


def _fmt(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def _id(value, field: str) -> int | None:
    return None if value == "new" else v.record_id(value, field)


def build(ctx: AppContext) -> None:
    engine = ctx.engine
    default = sd.default_preset(engine)
    p = sd.PRESETS[default]
    gr.Markdown(
        "**StyleDrop**: one style image (more allowed) trains a small adapter: a low-rank residual layer "
        "`out + U·D·out` after the feed-forward of every transformer block of the UNet, nothing else. Training "
        "text: **\"[content of the image] in [style] style\"**. Each round generates a grid of candidates; rate them "
        "with 👍/👎 (click, or focus a tile and press **U** / **D**, **0** to withdraw, arrow keys to move) or let "
        "CLIP pick, then train the next round: a fresh adapter on the **liked** images plus the style image.\n\n"
        "*Combining ratings:* every person (and CLIP, as one more rater) has at most one vote per image; an image is "
        "**liked** when thumbs up minus thumbs down is at least 1.")
    with gr.Row():
        with gr.Column(scale=1):
            style_files = gr.File(label=f"Style image (1, up to {sd.MAX_STYLE_IMAGES})", file_count="multiple",
                                  file_types=["image"], type="filepath", elem_id="sd-style-files")
            style_view = gr.Gallery(label="Style image(s)", columns=4, height=140, elem_id="sd-style-view")
            content = gr.Textbox(label="Content of the style image", value="a house", elem_id="sd-content")
            style = gr.Textbox(label="Style descriptor", value="watercolor painting", elem_id="sd-style")
            text_md = gr.Markdown(f"Training text: **{sd.training_text('a house', 'watercolor painting')}**",
                                  elem_id="sd-text")
            loop_name = gr.Textbox(label="Loop name (default: the style descriptor)", value="", elem_id="sd-name")
            preset = Dropdown(list(sd.PRESETS), value=default, label="Preset", elem_id="sd-preset")
            with gr.Accordion("Training settings", open=False):
                with gr.Row():
                    steps = Number(label="Steps", value=p["steps"], precision=0, minimum=1, elem_id="sd-steps")
                    lr = Number(label="Learning rate", value=p["learning_rate"], elem_id="sd-lr")
                    rank = Number(label="Adapter rank r", value=p["rank"], precision=0, minimum=1, maximum=128,
                                     elem_id="sd-rank")
                with gr.Row():
                    gc = gr.Checkbox(label="Gradient checkpointing", value=p["gradient_checkpointing"])
                    seed = Number(label="Training seed", value=0, precision=0, minimum=0)
            params_md = gr.Markdown(elem_id="sd-params")
            with gr.Accordion("Candidate grid", open=True):
                n_prompts = p["prompts"]
                prompts = gr.Textbox(label="Content prompts, one per line (sampled as \"[content] in [style] style\")",
                                     lines=5, value="\n".join(sd.DEFAULT_CONTENT_PROMPTS[:n_prompts]),
                                     elem_id="sd-prompts")
                with gr.Row():
                    samples = Number(label="Samples per prompt", value=p["samples_per_prompt"], precision=0,
                                        minimum=1, maximum=16, elem_id="sd-samples")
                    s_steps = Number(label="Sampling steps", value=p["sample_steps"], precision=0, minimum=1,
                                        elem_id="sd-sample-steps")
                    guidance = Number(label="Guidance", value=p["guidance"], minimum=0)
                    g_seed = Number(label="Grid seed", value=0, precision=0, minimum=0)
            with gr.Row():
                new_btn = gr.Button("Start a new loop (round 1)", variant="primary", elem_id="sd-new")
                next_btn = gr.Button("Train the next round on the liked images", variant="primary", elem_id="sd-next")
            with gr.Row():
                gen_btn = gr.Button("Generate more candidates for this round", elem_id="sd-generate")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="sd-stop")
        with gr.Column(scale=2):
            with gr.Row():
                loop_dd = Dropdown([], value=None, label="Feedback loop", elem_id="sd-loop", scale=3,
                                      allow_custom_value=True)
                round_radio = Dropdown([], value=None, label="Round (every round is kept)", elem_id="sd-round",
                                          scale=2, allow_custom_value=True)
                publish = gr.Checkbox(label="Shared for rating (others can rate)", value=False, elem_id="sd-publish",
                                      scale=1)
            status = gr.Markdown("", elem_id="sd-status")
            loss_plot = gr.LinePlot(None, x="step", y="loss", title="Training loss", height=180,
                                    elem_id="sd-loss")
            counts = gr.Markdown("", elem_id="sd-counts")
            grid = gr.HTML({"tiles": [], "message": "No loop yet: upload a style image and start one."},
                           html_template=GRID_TEMPLATE, css_template=GRID_CSS, js_on_load=GRID_JS,
                           elem_id="sd-grid")
            with gr.Group():
                with gr.Row():
                    clip_mode = Radio([("Top-k", "top_k"), ("Threshold", "threshold")], value="top_k",
                                         label="CLIP feedback picks", elem_id="sd-clip-mode")
                    clip_k = Slider(1, 32, value=4, step=1, label="k (best k)", elem_id="sd-clip-k")
                    clip_thr = Slider(-1, 1, value=0.5, step=0.005, label="Threshold on the score",
                                         elem_id="sd-clip-thr")
                with gr.Row():
                    clip_w = Slider(0, 1, value=0.5, step=0.05,
                                       label="Score = w · CLIP text + (1 − w) · CLIP style; w =", elem_id="sd-clip-w")
                    clip_pp = gr.Checkbox(label="Top-k per content prompt (the paper's CLIP feedback)", value=False)
                    clip_btn = gr.Button("Apply CLIP feedback", elem_id="sd-clip")
            rounds_md = gr.Markdown("", elem_id="sd-rounds")
    with gr.Accordion("Style + subject (StyleDrop + DreamBooth)", open=False):
        gr.Markdown("Pick a StyleDrop adapter and a Personalize (DreamBooth) subject: both adapters are active at "
                    "once, a weight each, on \"a [V] [class] in [style] style\".")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    c_style = Dropdown([], value=None, label="Style adapter (StyleDrop)", elem_id="sd-c-style",
                                          scale=3, allow_custom_value=True)
                    c_style_w = Slider(0, 2, value=1.0, step=0.05, label="Style weight", scale=1)
                with gr.Row():
                    c_subject = Dropdown([], value=None, label="Subject adapter (DreamBooth)",
                                            elem_id="sd-c-subject", scale=3, allow_custom_value=True)
                    c_subject_w = Slider(0, 2, value=1.0, step=0.05, label="Subject weight", scale=1)
                c_prompt = gr.Textbox(label="Prompts, one per line", lines=2, elem_id="sd-c-prompt")
                with gr.Row():
                    c_seed = Number(label="Seed", value=0, precision=0, minimum=0)
                    c_btn = gr.Button("Generate with both", variant="primary", elem_id="sd-c-generate")
            with gr.Column():
                c_status = gr.Markdown("", elem_id="sd-c-status")
                c_gallery = gr.Gallery(label="Style + subject", columns=4, height="auto", elem_id="sd-c-gallery")
    # the API's rating endpoint (the grid's clicks and keys go through the grid's own event)
    with gr.Row(visible=False):
        rate_cid = Number(label="candidate id", precision=0)
        rate_value = Number(label="rating (+1, -1, 0)", precision=0)
        rate_btn = gr.Button("rate")
        rate_out = gr.JSON()
        new_marker = gr.Textbox(value="new")
    visitor = ctx.visitor if ctx.visitor is not None else gr.State(None)
    info_json = gr.JSON(visible=False)

    # ------------------------------------------------------------------ views
    def owner_of(request, visitor_v) -> str:
        return ctx.owner(request, visitor_v)

    def params_text(rank_v) -> str:
        try:
            r = v.whole(rank_v, "Adapter rank r", 1, 128, default=4)
        except UserError as exc:
            return f"⚠ {exc}"
        try:
            unet = engine.pipe.unet if engine._pipe is not None else None
        except Exception:  # noqa: BLE001 - the model may still be loading
            unet = None
        if unet is None:
            return f"Adapter rank {r}: the parameter count appears when the model has loaded."
        n, blocks = sd.param_count(unet, r), len(sd.ff_out_layers(unet))
        return (f"**Adapter:** D (r×d) and U (d×r) after the feed-forward of each of the {blocks} transformer "
                f"blocks → **{n:,} trained parameters** at r = {r} (Σ 2·r·d). Saved as a standard LoRA on "
                f"`ff.net.2` (lora_A = D·W2, lora_B = U; {sd.lora_numbers(unet, r):,} numbers in the file; the "
                "adapter's bias term U·D·b is left out, in training too), loadable by diffusers, A1111, ComfyUI.")

    def loop_choices(viewer):
        store = sd.store_of(engine)
        out = []
        for lp in store.list_loops(viewer):
            n = len(store.rounds(lp.id, viewer))
            tag = "" if lp.owner == viewer else " · shared by someone else"
            pub = " · shared" if lp.published and lp.owner == viewer else ""
            out.append((f"{lp.name[:100]} · {n} round{'s' if n != 1 else ''} · #{lp.id}{pub}{tag}", str(lp.id)))
        return out

    def pick_loop(viewer, wanted=None) -> int | None:
        store = sd.store_of(engine)
        loops = store.list_loops(viewer)
        ids = {lp.id for lp in loops}
        if wanted is not None and int(wanted) in ids:
            return int(wanted)
        own = [lp for lp in loops if lp.owner == viewer]
        return (own or loops)[0].id if (own or loops) else None

    def grid_value(rid, viewer) -> dict:
        if rid is None:
            return {"tiles": [], "message": "This loop has no round yet: train one."}
        v = sd.round_view(engine, rid, viewer)
        tiles = []
        for t in v["tiles"]:
            sc = []
            if t.clip_text is not None:
                sc.append(f"text {t.clip_text:.3f}")
            if t.clip_style is not None:
                sc.append(f"style {t.clip_style:.3f}")
            tiles.append({"id": t.id, "src": _data_uri(t.path), "prompt": html_text(t.prompt),
                          "content": html_text(t.content),
                          "scores": " · ".join(sc), "up": t.up, "down": t.down, "mine": t.mine,
                          "mine_up": t.mine == 1, "mine_down": t.mine == -1, "clip": t.clip, "liked": t.liked})
        msg = "" if tiles else "No candidates in this round yet: generate them."
        return {"tiles": tiles, "message": msg, "round": v["round"].number}

    def counts_text(rid, viewer) -> str:
        if rid is None:
            return ""
        v = sd.round_view(engine, rid, viewer)
        mine = sum(1 for t in v["tiles"] if t.mine)
        fb = v["round"].extra.get("clip_feedback")
        clip = ""
        if fb:
            rule = (f"top {fb['k']}{' per prompt' if fb.get('per_prompt') else ''}" if fb["mode"] == "top_k"
                    else f"score ≥ {fb['threshold']:.3f}")
            clip = f" (CLIP rule: {rule}, w = {fb['text_weight']:.2f})"
        return (f"**Round {v['round'].number}** · {len(v['tiles'])} candidates · 👍 {v['up']} · 👎 {v['down']} · "
                f"CLIP picked {v['clip_picked']}{clip} · **liked (net ≥ 1): {v['liked']}** · your ratings: {mine}")

    def rounds_text(loop_id, viewer) -> str:
        if loop_id is None:
            return ""
        rows = sd.rounds_table(engine, loop_id, viewer)
        if not rows:
            return "No rounds yet."
        lines = ["| round | adapter | trained on | trained params | steps | loss (fixed draws) | candidates | liked "
                 "| CLIP text | CLIP style |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            loss = (f"{r['loss_before']:.4f} → {r['loss_after']:.4f}"
                    if r["loss_before"] is not None and r["loss_after"] is not None else "–")
            lines.append(f"| {r['round']} | {md_text(r['adapter'])} (#{r['adapter_id']}) | {r['trained_on']} | "
                         f"{(r['params'] or 0):,} | {r['steps'] or '–'} | {loss} | {r['candidates']} | {r['liked']} | "
                         f"{_fmt(r['clip_text'])} | {_fmt(r['clip_style'])} |")
        note = ctx.metrics.note if ctx.metrics is not None else "no scoring models"
        lp = sd.store_of(engine).get_loop(loop_id, viewer)
        head = (f"**Loop #{lp.id} \"{md_text(lp.name)}\"** · training text *{md_text(lp.extra.get('training_text', ''))}* · "
                f"{lp.extra.get('style_images', 1)} style image(s) · "
                + ("yours" if lp.owner == viewer else "shared by its owner: you can rate") + "\n\n")
        return (head + "**Rounds side by side** (means over each round's candidates)\n\n" + "\n".join(lines)
                + f"\n\n<small>Scored with {note}.</small>")

    def render(viewer, loop_id=None, round_id=None):
        """Everything the loop view shows: loop list, rounds, grid, counts, table."""
        loop_id = pick_loop(viewer, loop_id)
        store = sd.store_of(engine)
        choices = loop_choices(viewer)
        if loop_id is None:
            return (gr.update(choices=choices, value=None), gr.update(choices=[], value=None),
                    gr.update(value=False, interactive=False), "",
                    {"tiles": [], "message": "No loop yet: upload a style image and start one."}, "")
        lp = store.get_loop(loop_id, viewer)
        rounds = store.rounds(loop_id, viewer)
        rids = {r.id for r in rounds}
        rid = int(round_id) if round_id is not None and int(round_id) in rids else (rounds[-1].id if rounds else None)
        rchoices = [(f"Round {r.number}", str(r.id)) for r in rounds]
        return (gr.update(choices=choices, value=str(loop_id)),
                gr.update(choices=rchoices, value=str(rid) if rid else None),
                gr.update(value=lp.published, interactive=lp.owner == viewer),
                counts_text(rid, viewer), grid_value(rid, viewer), rounds_text(loop_id, viewer))

    view_outputs = [loop_dd, round_radio, publish, counts, grid, rounds_md]

    # ------------------------------------------------------------------ handlers
    rate_throttle = Throttle(RATES_PER_MINUTE, 60.0)
    raters_per_loop = DistinctLimit(RATERS_PER_LOOP)

    @user_errors
    def show_style(paths):
        paths = v.files(paths, "Style image", sd.MAX_STYLE_IMAGES)
        return [load_image(pth, what="style image", max_side=1024) for pth in paths]

    def describe(content_v, style_v):
        try:
            return f"Training text: **{md_text(sd.training_text(content_v, style_v))}**"
        except UserError as exc:
            return f"⚠ {exc}"

    def apply_preset(name_):
        q = sd.PRESETS.get(name_) if isinstance(name_, str) else None
        q = q or sd.PRESETS[default]
        return (q["steps"], q["learning_rate"], q["rank"], q["gradient_checkpointing"], q["samples_per_prompt"],
                q["sample_steps"], q["guidance"], params_text(q["rank"]))

    @user_errors
    def on_load(visitor_v, request: gr.Request):
        viewer = owner_of(request, visitor_v)
        return (*render(viewer), params_text(rank.value), *adapter_lists(viewer))

    @user_errors
    def on_loop(loop_v, visitor_v, request: gr.Request):
        return render(owner_of(request, visitor_v), _id(loop_v, "Feedback loop"))

    @user_errors
    def on_round(loop_v, round_v, visitor_v, request: gr.Request):
        return render(owner_of(request, visitor_v), _id(loop_v, "Feedback loop"), _id(round_v, "Round"))

    @user_errors
    def on_publish(loop_v, value, visitor_v, request: gr.Request):
        lid = _id(loop_v, "Feedback loop")
        value = v.flag(value, "Shared for rating")
        viewer = owner_of(request, visitor_v)
        if lid is None:
            raise UserError("Start a loop first.")
        store = sd.store_of(engine)
        lp = store.get_loop(lid, viewer)
        if lp.owner == viewer and lp.published != value:
            store.publish_loop(lid, viewer, value)
        return render(viewer, lid, None)

    def _grid_args(prompts_v, samples_v, s_steps_v, guid_v, g_seed_v) -> dict:
        return dict(contents=v.text(prompts_v, "Content prompts", 10_000),
                    samples_per_prompt=v.whole(samples_v, "Samples per prompt", 1, 16),
                    sample_steps=v.whole(s_steps_v, "Sampling steps", 1, 150),
                    guidance=v.real(guid_v, "Guidance", 0, 30), seed=v.seed(g_seed_v, "Grid seed"))

    @user_errors
    @gpu(duration=900)
    def run_train(loop_v, files, content_v, style_v, name_v, steps_v, lr_v, rank_v, gc_v, seed_v, prompts_v,
                  samples_v, s_steps_v, guid_v, g_seed_v, visitor_v, request: gr.Request):
        # every value checked before anything is stored or started
        cfg = TrainConfig(steps=v.whole(steps_v, "Steps", 1, MAX_STEPS),
                          learning_rate=v.real(lr_v, "Learning rate", 1e-8, 0.1),
                          gradient_checkpointing=v.flag(gc_v, "Gradient checkpointing"),
                          seed=v.seed(seed_v, "Training seed"), sample_every=0, resume=False)
        r = v.whole(rank_v, "Adapter rank r", 1, 128)
        grid = _grid_args(prompts_v, samples_v, s_steps_v, guid_v, g_seed_v)
        lid = _id(loop_v, "Feedback loop")
        paths = v.files(files, "Style image", sd.MAX_STYLE_IMAGES)
        content_v, style_v = v.text(content_v, "Content of the style image", 200), v.text(style_v, "Style descriptor", 200)
        name_v = v.text(name_v, "Loop name", 100)
        caller = ctx.caller(request, visitor_v)
        owner = caller.owner
        sd.adapter_spec(r)
        contents, n_samples = sd.check_grid(grid["contents"], grid["samples_per_prompt"], grid["sample_steps"])
        round_kw = dict(stop_key=caller.stop_key, rank=r, contents=contents, samples_per_prompt=n_samples,
                        seed=grid["seed"], sample_steps=grid["sample_steps"], guidance=grid["guidance"],
                        metrics=ctx.metrics)
        notes: list[str] = []
        if lid is None:
            if not paths:
                raise UserError("Upload a style image to start a loop.")
            imgs = [load_image(f, what=f"style image {i + 1}", max_side=4096) for i, f in enumerate(paths)]
            events = sd.first_round(engine, imgs, cfg, owner=owner, content_description=content_v,
                                    style_descriptor=style_v, name=name_v, **round_kw)
        else:
            events = sd.train_round(engine, lid, cfg, owner=owner, **round_kw)
        history: list[dict] = []
        last_plot = 0.0
        skip6 = (gr.skip(),) * 6
        # None, not an empty frame: Gradio's plot fixes its domain on the first value it draws
        yield ("**Starting**", None, *render(owner, lid), gr.skip())
        try:
            for ev in events:
                if isinstance(ev, TrainStep):
                    history.append({"step": ev.step, "loss": ev.loss})
                    now = time.monotonic()
                    if now - last_plot >= PLOT_EVERY_S or ev.step == ev.total:
                        last_plot = now
                        line = f"**{ev.message}** · lr {ev.lr:.1e} · {ev.seconds:.2f} s/step"
                        yield ("\n\n".join(notes + [line]), pd.DataFrame(history), *skip6, gr.skip())
                elif isinstance(ev, Notice):
                    notes.append(md_text(ev.message, 400))
                elif isinstance(ev, Progress):
                    yield ("\n\n".join(notes + [status_text(ev)]), gr.skip(), *skip6, gr.skip())
                elif isinstance(ev, Result):
                    info = ev.info
                    done = (f"**Done: round {info['round']}** trained on {info['trained_on']['style_images']} style "
                            f"+ {len(info['trained_on']['liked_candidates'])} liked images · adapter "
                            f"**{md_text(info['adapter_name'])}** (#{info['adapter_id']}) · "
                            f"{info['trainable_params']:,} trained parameters · {len(ev.images)} candidates. "
                            "Rate them, then train the next round.")
                    yield ("\n\n".join(notes + [done]), pd.DataFrame(history) if history else None,
                           *render(owner, info["loop_id"], info["round_id"]), info)
        except Cancelled as exc:  # the job's own last word (see tabs/style_aligned.py); the loop as it is now
            text = ("**Stopped.** Nothing half-written is kept: an unfinished round (adapter and grid) is "
                    "removed, a new loop without a finished round too; the last finished round stays.")
            yield ("\n\n".join(notes + [stopped_text(exc, text)]), pd.DataFrame(history) if history else gr.skip(),
                   *render(owner, lid), gr.skip())

    @user_errors
    @gpu(duration=300)
    def run_generate(loop_v, round_v, prompts_v, samples_v, s_steps_v, guid_v, g_seed_v, visitor_v,
                     request: gr.Request):
        grid = _grid_args(prompts_v, samples_v, s_steps_v, guid_v, g_seed_v)
        lid, rid = _id(loop_v, "Feedback loop"), _id(round_v, "Round")
        caller = ctx.caller(request, visitor_v)
        owner = caller.owner
        if rid is None:
            raise UserError("Pick a round (train one first).")
        events = sd.generate_candidates(engine, rid, owner=owner, stop_key=caller.stop_key,
                                        contents=sd.parse_prompts(grid["contents"]),
                                        samples_per_prompt=grid["samples_per_prompt"], seed=grid["seed"],
                                        sample_steps=grid["sample_steps"], guidance=grid["guidance"],
                                        metrics=ctx.metrics)
        try:
            for ev in events:
                if isinstance(ev, Progress):
                    yield (status_text(ev), *(gr.skip(),) * 6)
                elif isinstance(ev, Notice):
                    yield (f"Note: {ev.message}", *(gr.skip(),) * 6)
                elif isinstance(ev, Result):
                    yield (f"**Done.** {ev.info['added']} more candidates in round {ev.info['round']}.",
                           *render(owner, lid, rid))
        except Cancelled as exc:  # the job's own last word (see tabs/style_aligned.py)
            yield (stopped_text(exc, "**Stopped.** No candidates were added."), *(gr.skip(),) * 6)

    def _rate(caller, cid: int, value: int) -> None:
        """One rating, within the limits for someone else's published loop."""
        lp = sd.store_of(engine).candidate_loop(cid, caller.owner)
        if lp.owner != caller.owner:
            key = caller.stop_key.client or caller.stop_key
            if not rate_throttle.allow(str(key)):
                raise UserError(f"Too many ratings: at most {RATES_PER_MINUTE} a minute. Wait a little.")
            if not raters_per_loop.allow(f"{key}|{lp.id}", caller.owner):
                raise UserError("Ratings of this loop from your address already count for "
                                f"{RATERS_PER_LOOP} visitors; more would not be fair to its owner.")
        sd.rate(engine, cid, caller.owner, value)

    @user_errors
    def rate_from_grid(loop_v, round_v, visitor_v, evt: gr.EventData, request: gr.Request):
        data = getattr(evt, "_data", None)
        data = data if isinstance(data, dict) else {}
        cid = v.record_id(data.get("candidate"), "Candidate")
        value = v.whole(data.get("rating"), "Rating", -1, 1)
        lid, rid = _id(loop_v, "Feedback loop"), _id(round_v, "Round")
        caller = ctx.caller(request, visitor_v)
        if cid is None:
            raise UserError("That rating could not be read.")
        _rate(caller, cid, value)
        return counts_text(rid, caller.owner), grid_value(rid, caller.owner), rounds_text(lid, caller.owner)

    @user_errors
    def rate_api(cid_v, value_v, visitor_v, request: gr.Request):
        cid = v.record_id(cid_v, "candidate id")
        value = v.whole(value_v, "rating", -1, 1)
        caller = ctx.caller(request, visitor_v)
        if cid is None:
            raise UserError("Give a candidate id and a rating (+1, -1 or 0).")
        _rate(caller, cid, value)
        return sd.candidate_votes(engine, cid, caller.owner)

    @user_errors
    def run_clip(loop_v, round_v, mode, k, thr, w, per_prompt, visitor_v, request: gr.Request):
        k_n = v.whole(k, "k (best k)", 1, 32)
        thr_f = v.real(thr, "Threshold on the score", -1, 1)
        w_f = v.real(w, "Score = w · CLIP text + (1 − w) · CLIP style; w =", 0, 1)
        mode = v.choice(mode, "CLIP feedback picks", ["top_k", "threshold"])
        per_prompt = v.flag(per_prompt, "Top-k per content prompt")
        lid, rid = _id(loop_v, "Feedback loop"), _id(round_v, "Round")
        viewer = owner_of(request, visitor_v)
        if rid is None:
            raise UserError("Pick a round with candidates first.")
        sd.clip_feedback(engine, rid, owner=viewer, mode=mode, k=k_n, threshold=thr_f, text_weight=w_f,
                         per_prompt=per_prompt)
        return render(viewer, lid, rid)

    def adapter_lists(viewer):
        store = sd.store_of(engine)
        base = library.base_model_id(engine)
        styles = [(f"{a.name} · #{a.id}", str(a.id)) for a in store.list_adapters(viewer, method=sd.METHOD,
                                                                                   base_model=base)]
        subjects = [(f"{a.name} · [{a.trigger_words}] · #{a.id}", str(a.id))
                    for a in store.list_adapters(viewer, method="dreambooth", base_model=base)]
        return (gr.update(choices=styles, value=styles[0][1] if styles else None),
                gr.update(choices=subjects, value=subjects[0][1] if subjects else None))

    @user_errors
    def refresh_adapters(visitor_v, request: gr.Request):
        return adapter_lists(owner_of(request, visitor_v))

    @user_errors
    def combine_prompt(style_v, subject_v, visitor_v, request: gr.Request):
        sid, bid = _id(style_v, "Style adapter"), _id(subject_v, "Subject adapter")
        viewer = owner_of(request, visitor_v)
        store = sd.store_of(engine)
        if sid is None or bid is None:
            return gr.skip()
        st, sub = store.get_adapter(sid, viewer), store.get_adapter(bid, viewer)
        return sd.subject_style_prompt(sub, st.trigger_words or "")

    @user_errors
    @gpu(duration=120)
    def run_combine(style_v, style_w, subject_v, subject_w, prompt_v, seed_v, s_steps_v, guid_v, visitor_v,
                    request: gr.Request):
        style_wf = v.real(style_w, "Style weight", 0, 2)
        subject_wf = v.real(subject_w, "Subject weight", 0, 2)
        seed_n = v.seed(seed_v)
        steps_n = v.whole(s_steps_v, "Sampling steps", 1, 150)
        guid_f = v.real(guid_v, "Guidance", 0, 30)
        sid, bid = _id(style_v, "Style adapter"), _id(subject_v, "Subject adapter")
        prompt_v = v.text(prompt_v, "Prompts", 10_000)
        caller = ctx.caller(request, visitor_v)
        if sid is None:
            raise UserError("Pick a StyleDrop adapter (train a round first).")
        lines = [ln.strip() for ln in prompt_v.splitlines() if ln.strip()]
        events = sd.generate_with_subject(engine, style_adapter_id=sid, subject_adapter_id=bid,
                                          prompts=lines, style_weight=style_wf, subject_weight=subject_wf,
                                          owner=caller.owner, stop_key=caller.stop_key, seed=seed_n,
                                          steps=steps_n, guidance=guid_f)
        try:
            for ev in events:
                if isinstance(ev, Progress):
                    yield ev.preview or gr.skip(), status_text(ev)
                elif isinstance(ev, Result):
                    act = ", ".join(f"#{i} × {w:g}" for i, w in ev.info["adapters"].items())
                    yield [(im, pr) for im, pr in zip(ev.images, ev.info["prompts"])], f"**Done.** Adapters: {act}."
        except Cancelled as exc:  # the job's own last word (see tabs/style_aligned.py)
            yield gr.skip(), stopped_text(exc, "**Stopped.** The images were not finished.")

    # ------------------------------------------------------------------ wiring
    style_files.change(show_style, style_files, style_view, api_visibility="private")
    content.change(describe, [content, style], text_md, queue=False, api_visibility="private")
    style.change(describe, [content, style], text_md, queue=False, api_visibility="private")
    rank.change(params_text, rank, params_md, queue=False, api_visibility="private")
    preset.change(apply_preset, preset, [steps, lr, rank, gc, samples, s_steps, guidance, params_md],
                  api_visibility="private")
    loop_dd.input(on_loop, [loop_dd, visitor], view_outputs, api_visibility="private")
    round_radio.input(on_round, [loop_dd, round_radio, visitor], view_outputs, api_visibility="private")
    publish.input(on_publish, [loop_dd, publish, visitor], view_outputs, api_name="styledrop_publish")

    train_tail = [style_files, content, style, loop_name, steps, lr, rank, gc, seed, prompts, samples, s_steps,
                  guidance, g_seed, visitor]
    train_outputs = [status, loss_plot, *view_outputs, info_json]
    next_event = next_btn.click(run_train, [loop_dd, *train_tail], train_outputs, api_name="styledrop_train", **GPU)
    new_event = new_btn.click(run_train, [new_marker, *train_tail], train_outputs, api_visibility="private", **GPU)
    for ev in (next_event, new_event):
        ev.then(refresh_adapters, visitor, [c_style, c_subject], api_visibility="private").then(
            params_text, rank, params_md, api_visibility="private")
    gen_btn.click(run_generate, [loop_dd, round_radio, prompts, samples, s_steps, guidance, g_seed, visitor],
                  [status, *view_outputs], api_name="styledrop_generate", **GPU)
    grid.click(rate_from_grid, [loop_dd, round_radio, visitor], [counts, grid, rounds_md], api_visibility="private",
               trigger_mode="multiple")
    rate_btn.click(rate_api, [rate_cid, rate_value, visitor], rate_out, api_name="styledrop_rate")
    clip_btn.click(run_clip, [loop_dd, round_radio, clip_mode, clip_k, clip_thr, clip_w, clip_pp, visitor],
                   view_outputs, api_name="styledrop_clip")
    c_style.change(combine_prompt, [c_style, c_subject, visitor], c_prompt, queue=False, api_visibility="private")
    c_subject.change(combine_prompt, [c_style, c_subject, visitor], c_prompt, queue=False,
                     api_visibility="private")
    c_btn.click(run_combine, [c_style, c_style_w, c_subject, c_subject_w, c_prompt, c_seed, s_steps, guidance, visitor],
                [c_gallery, c_status], api_name="styledrop_combine", **GPU)

    root = getattr(gr.context.Context, "root_block", None)
    if root is not None and hasattr(root, "load"):  # a page (re)load shows the loop where it was
        root.load(on_load, visitor, [*view_outputs, params_md, c_style, c_subject], api_visibility="private")

    def cancel(request: gr.Request):
        engine.cancel(session_key(request))  # the running job stops within one step and says so

    stop_btn.click(cancel, None, None, queue=False, api_name="styledrop_stop")
