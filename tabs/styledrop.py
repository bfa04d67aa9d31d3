"""The StyleDrop Loop tab (Sohn et al., NeurIPS 2023): an adapter tuned on one style image, then
feedback rounds driven by thumbs up/down and by CLIP.

Widgets and wiring only: the method is core/styledrop.py on the shared trainer; rounds,
candidates and ratings live in the store (a reload or a restart shows the loop where it was).
The candidate grid's markup, style and keys are tabs/static/styledrop/.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from core import library, styledrop, styles
from core import validate as v
from core.errors import UserError
from core.events import Notice, Result
from core.images import load_image
from core.throttle import DistinctLimit, Throttle
from core.train import MAX_STEPS, TrainSettings

from .common import (GPU, AppContext, LossPlotAxes, Tab, about, captioned, deliver, example, gpu, html_text,
                     image_updates, job_updates, md_text, saved_style_text, stream_training, user_errors)
from .widgets import Dropdown, Number, Radio, Slider

# Ratings of someone else's published loop, per client address: at most RATES_PER_MINUTE, and
# at most RATERS_PER_LOOP different visitor tokens per loop (tokens are free to get, votes are
# not free to stuff). A loop's owner rates their own loop without limits.
RATES_PER_MINUTE = 60
RATERS_PER_LOOP = 2

TITLE = "StyleDrop Loop"
ORDER = "Grid order: prompt ↔ style"
# The page's defaults: the paper's adapter; Eq. 4 with lambda_B = 5 (Table S3) and lambda_A = 1 (the
# middle of round 1's 0-2; round 2 uses 2)
DEFAULT_OPTIONS = {"form": "gelu", "adapter_guidance": True, "lambda_a": 1.0, "lambda_b": 5.0}
DEFAULT_MIX = {"mode": "predictions", "gamma": 0.6}  # the paper's gamma 0.5-0.7

# The grid (a gr.HTML): visitor text goes in its triple-stash fields only after
# tabs.common.html_text (Gradio evaluates the rendered template as a JavaScript template
# literal); the message is our own text.
_STATIC = Path(__file__).parent / "static" / "styledrop"
GRID_TEMPLATE = (_STATIC / "grid.html").read_text(encoding="utf-8")
GRID_CSS = (_STATIC / "grid.css").read_text(encoding="utf-8")
GRID_JS = (_STATIC / "grid.js").read_text(encoding="utf-8")

NO_LOOP = "No loop yet: upload a style image and start one."
STOPPED_ROUND = ("**Stopped.** Nothing half-written is kept: an unfinished round (adapter and grid) is "
                 "removed, a new loop without a finished round too; the last finished round stays.")
SUMMARY = ("**Teach the model a style from one image, then steer it by rating.** Start a loop from a style "
           "image, rate the candidates it makes (thumbs up / down, or let CLIP pick), and train the next round "
           "on the ones you liked.")

# (style image, what it shows, its style): one click fills the form
EXAMPLES = [
    ("style-waves.png", "ocean waves", "woodblock print"),
    ("style-mosaic.png", "a tiled pattern", "stained glass mosaic"),
    ("style-ink.png", "brush strokes", "ink sketch"),
]

INTRO = (
    "**StyleDrop**: one style image (more allowed) trains a small adapter, the paper's "
    "`out + U·GELU(D·out)` after the feed-forward of every transformer block of the UNet, nothing else. Training "
    "text: **\"[content of the image] in [style] style\"**. Each round generates a grid of candidates (by the "
    "paper's adapter guidance, Eq. 4, unless you switch it off); rate them with thumbs up / down "
    "(click, or focus a tile and press **U** / **D**, **0** to withdraw, arrow keys to move) or let "
    "CLIP pick (by default the paper's rule: per prompt, the image with the best CLIP text score), then train the "
    "next round.\n\n"
    "*The next round* trains a **fresh adapter** (not the previous one continued) on the **liked** images plus the "
    "style image. The paper also trains a new adapter, but on the selected images alone and with a wider one in "
    "round 2 (d_prj 32 instead of 4); here the style image stays in and the rank is the one you set.\n\n"
    "*Combining ratings:* every person (and CLIP, as one more rater) has at most one vote per image; an image is "
    "**liked** when thumbs up minus thumbs down is at least 1.")
FORM_NOTE = (
    "**The paper's adapter** (default): `out + U·GELU(D·out)`, put on through hooks only while it is used. "
    "**Linear**: `out + U·D·(out − b)` as a LoRA on `ff.net.2` (no GELU, the bias term left out): a different, "
    "separately trained adapter, which A1111/ComfyUI load exactly.")
GUIDANCE_NOTE = (
    "**Adapter guidance (Eq. 4):** ε = ε̂(t) + λ_A·(ε̂(t) − ε(t)) + λ_B·(ε(t) − ε(∅)), ε̂ the adapted UNet, ε the "
    "base one: three UNet passes a step instead of two. λ_A sets how much of the style, λ_B the text guidance "
    "(it replaces *Guidance*: plain CFG at w is λ_A = −1, λ_B = w − 1). Paper: λ_B = 5, λ_A 0–2 in round 1, 2 in "
    "round 2. Off: plain CFG with the adapter on in both halves. API calls get the page's defaults.")


def _fmt(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def _loss_plot(history: list[dict]):
    # None, not an empty frame: Gradio's plot fixes its domain on the first value it draws
    return pd.DataFrame(history) if history else None


def _done_line(outcome: styledrop.RoundOutcome, candidates: int) -> str:
    return (f"**Done: round {outcome.round}** trained on {outcome.style_images} style "
            f"+ {len(outcome.liked_candidates)} liked images · adapter **{md_text(outcome.adapter_name)}** "
            f"(#{outcome.adapter_id}) · {outcome.trainable_params:,} trained parameters · {candidates} candidates. "
            "Rate them, then train the next round.")


def _tile(t: styledrop.Tile) -> dict:
    scores = []
    if t.clip_text is not None:
        scores.append(f"text {t.clip_text:.3f}")
    if t.clip_style is not None:
        scores.append(f"style {t.clip_style:.3f}")
    ranked = []  # best of N: its place among its prompt's candidates, its seed, DINO and the combined score
    if t.rank is not None:
        ranked = [f"#{t.rank}", f"seed {t.seed}"] + ([f"DINO {t.dino_style:.3f}"] if t.dino_style is not None else [])
        ranked.append(f"score {t.score:.2f}")
    return {"id": t.id, "src": styledrop.tile_thumbnail(t.path), "prompt": html_text(t.prompt),
            "content": html_text(t.content), "scores": " · ".join(scores), "ranking": " · ".join(ranked),
            "up": t.up, "down": t.down, "mine": t.mine, "mine_up": t.mine == 1, "mine_down": t.mine == -1,
            "clip": t.clip, "liked": t.liked}


def _counts_text(view: dict) -> str:
    mine = sum(1 for t in view["tiles"] if t.mine)
    fb = view["round"].extra.get("clip_feedback")
    clip = ""
    if fb:
        rule = (f"top {fb['k']}{' per prompt' if fb.get('per_prompt') else ''}" if fb["mode"] == "top_k"
                else f"score ≥ {fb['threshold']:.3f}")
        clip = f" (CLIP rule: {rule}, w = {fb['text_weight']:.2f})"
    order = (f" · each prompt's candidates best first (grid order {view['preference']:g}: 0 CLIP text, 1 DINO style)"
             if any(t.rank is not None for t in view["tiles"]) else "")
    return (f"**Round {view['round'].number}** · {len(view['tiles'])} candidates · "
            f"thumbs up {view['up']} · thumbs down {view['down']} · CLIP picked {view['clip_picked']}{clip} · "
            f"**liked (net ≥ 1): {view['liked']}** · your ratings: {mine}{order}")


class StyleDropTab(LossPlotAxes, Tab):
    max_steps = MAX_STEPS
    title = TITLE
    api_prefix = "styledrop"

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.rate_throttle = Throttle(RATES_PER_MINUTE, 60.0)
        self.raters_per_loop = DistinctLimit(RATERS_PER_LOOP)
        self.default_preset = styledrop.default_preset(self.engine)

    # ------------------------------------------------------------------ views
    def params_text(self, rank) -> str:
        """What the adapter is at this rank, with its parameter count once the model is loaded."""
        try:
            r = v.whole(rank, "Adapter rank r", 1, 128, default=4)
        except UserError as exc:
            return f"**Warning:** {exc}"
        size = styledrop.adapter_size(self.engine, r)
        if size is None:
            return f"Adapter rank {r}: the parameter count appears when the model has loaded."
        return (f"**Adapter:** D (r×d) and U (d×r) after the feed-forward of each of the {size.blocks} "
                f"transformer blocks → **{size.trainable_params:,} trained parameters** at r = {r} (Σ 2·r·d). "
                "The paper's form keeps exactly those in the library; the linear form is saved as a standard "
                f"LoRA on `ff.net.2` (lora_A = D·W2, lora_B = U; {size.lora_numbers:,} numbers in the file; the "
                "bias term U·D·b is left out, in training too), loadable by diffusers, A1111, ComfyUI.")

    def loop_choices(self, owner: str) -> list[tuple[str, str]]:
        store = styledrop.store_of(self.engine)
        out = []
        for lp in store.list_loops(owner):
            n = len(store.rounds(lp.id, owner))
            tag = "" if lp.owner == owner else " · shared by someone else"
            pub = " · shared" if lp.published and lp.owner == owner else ""
            out.append((f"{lp.name[:100]} · {n} round{'s' if n != 1 else ''} · #{lp.id}{pub}{tag}", str(lp.id)))
        return out

    def round_parts(self, round_id: int | None, owner: str) -> tuple[str, dict]:
        """(counts line, grid value) of a round as `owner` sees it."""
        if round_id is None:
            return "", {"tiles": [], "message": "This loop has no round yet: train one."}
        view = styledrop.round_view(self.engine, round_id, owner)
        tiles = [_tile(t) for t in view["tiles"]]
        msg = "" if tiles else "No candidates in this round yet: generate them."
        return _counts_text(view), {"tiles": tiles, "message": msg, "round": view["round"].number}

    def rounds_text(self, loop_id: int | None, owner: str) -> str:
        if loop_id is None:
            return ""
        rows = styledrop.rounds_table(self.engine, loop_id, owner)
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
        note = self.ctx.metrics.note if self.ctx.metrics is not None else "no scoring models"
        lp = styledrop.store_of(self.engine).get_loop(loop_id, owner)
        head = (f"**Loop #{lp.id} \"{md_text(lp.name)}\"** · training text "
                f"*{md_text(lp.extra.get('training_text', ''))}* · {lp.extra.get('style_images', 1)} style image(s) · "
                + ("yours" if lp.owner == owner else "shared by its owner: you can rate") + "\n\n")
        return (head + "**Rounds side by side** (means over each round's candidates)\n\n" + "\n".join(lines)
                + f"\n\n<small>Scored with {note}.</small>")

    def render(self, owner: str, loop_id: int | None = None, round_id: int | None = None) -> tuple:
        """Everything the loop view shows: loop list, round list, sharing, counts, grid, rounds table."""
        loop_id = styledrop.pick_loop(self.engine, owner, loop_id)
        choices = self.loop_choices(owner)
        if loop_id is None:
            return (gr.update(choices=choices, value=None), gr.update(choices=[], value=None),
                    gr.update(value=False, interactive=False), "", {"tiles": [], "message": NO_LOOP}, "")
        store = styledrop.store_of(self.engine)
        lp = store.get_loop(loop_id, owner)
        rounds = store.rounds(loop_id, owner)
        rid = round_id if round_id in {r.id for r in rounds} else (rounds[-1].id if rounds else None)
        counts, grid = self.round_parts(rid, owner)
        return (gr.update(choices=choices, value=str(loop_id)),
                gr.update(choices=[(f"Round {r.number}", str(r.id)) for r in rounds], value=str(rid) if rid else None),
                gr.update(value=lp.published, interactive=lp.owner == owner),
                counts, grid, self.rounds_text(loop_id, owner))

    def adapter_lists(self, owner: str) -> tuple:
        """The StyleDrop and DreamBooth adapters `owner` may combine (first of each picked)."""
        store = styledrop.store_of(self.engine)
        base = library.base_model_id(self.engine)
        styles = [(f"{a.name} · #{a.id}", str(a.id))
                  for a in store.list_adapters(owner, method=styledrop.METHOD, base_model=base)]
        subjects = [(f"{a.name} · [{a.trigger_words}] · #{a.id}", str(a.id))
                    for a in store.list_adapters(owner, method="dreambooth", base_model=base)]
        return (gr.update(choices=styles, value=styles[0][1] if styles else None),
                gr.update(choices=subjects, value=subjects[0][1] if subjects else None))

    # ------------------------------------------------------------------ small handlers
    @user_errors
    def show_style(self, style_files):
        paths = v.files(style_files, "Style image", styledrop.MAX_STYLE_IMAGES)
        return [load_image(pth, what="style image", max_side=1024) for pth in paths]

    @user_errors
    def style_fields(self, library_style, visitor=None, request: gr.Request = None):
        """A library style picked for a new loop: its content and style words in their fields and
        its images shown (the fields stay editable; no style: nothing changes)."""
        caller = self.caller(request, visitor)
        picked, _ = self.library_style(library_style, 1.0, caller.owner)
        if picked is None:
            return gr.skip(), gr.skip(), gr.skip()
        found, content, words = styles.styledrop_start(self.engine, picked, owner=caller.owner)
        return content, words, [load_image(f, what="the library style's image", max_side=1024) for f in found]

    def describe(self, content, style) -> str:
        """The training text as it will be used (a warning for what it cannot be)."""
        try:
            return f"Training text: **{md_text(styledrop.training_text(content, style))}**"
        except UserError as exc:
            return f"**Warning:** {exc}"

    def apply_preset(self, preset):
        """(steps, learning rate, rank, checkpointing, samples, sampling steps, guidance, adapter text)."""
        q = styledrop.PRESETS.get(preset) if isinstance(preset, str) else None
        q = q or styledrop.PRESETS[self.default_preset]
        return (q["steps"], q["learning_rate"], q["rank"], q["gradient_checkpointing"], q["samples_per_prompt"],
                q["sample_steps"], q["guidance"], self.params_text(q["rank"]))

    @user_errors
    def page_load(self, rank=None, visitor=None, request: gr.Request = None):
        """A page (re)load shows the loop where it was: (loop view ×6, adapter text, style, subject)."""
        owner = self.caller(request, visitor).owner
        return (*self.render(owner), self.params_text(rank), *self.adapter_lists(owner))

    @user_errors
    def show_loop(self, loop, visitor=None, request: gr.Request = None):
        loop_id = v.record_id(loop, "Feedback loop")
        return self.render(self.caller(request, visitor).owner, loop_id)

    @user_errors
    def show_round(self, loop, round, visitor=None, request: gr.Request = None):
        loop_id, round_id = v.record_id(loop, "Feedback loop"), v.record_id(round, "Round")
        return self.render(self.caller(request, visitor).owner, loop_id, round_id)

    @user_errors
    def publish(self, loop, shared, visitor=None, request: gr.Request = None):
        """Share the loop for rating (owner only); the loop view."""
        loop_id = v.record_id(loop, "Feedback loop")
        shared = v.flag(shared, "Shared for rating")
        owner = self.caller(request, visitor).owner
        if loop_id is None:
            raise UserError("Start a loop first.")
        styledrop.set_published(self.engine, loop_id, owner, shared)
        return self.render(owner, loop_id)

    @user_errors
    def refresh_adapters(self, visitor=None, request: gr.Request = None):
        return self.adapter_lists(self.caller(request, visitor).owner)

    @user_errors
    def combine_prompt(self, style_adapter, subject_adapter, visitor=None, request: gr.Request = None):
        """"a [V] [class] in [style] style" for the picked pair (unchanged until both are picked)."""
        style_id = v.record_id(style_adapter, "Style adapter")
        subject_id = v.record_id(subject_adapter, "Subject adapter")
        owner = self.caller(request, visitor).owner
        if style_id is None or subject_id is None:
            return gr.skip()
        return styledrop.combined_prompt(self.engine, style_adapter_id=style_id, subject_adapter_id=subject_id,
                                         owner=owner)

    # ------------------------------------------------------------------ adapter form and guidance
    @staticmethod
    @user_errors
    def options_of(form, adapter_guidance, lambda_a, lambda_b) -> dict:
        """The page's adapter form and guidance settings, checked (kept in a State for train/generate)."""
        return {"form": v.choice(form, "Adapter form", styledrop.FORMS),
                "adapter_guidance": v.flag(adapter_guidance, "Adapter guidance (Eq. 4)"),
                "lambda_a": v.real(lambda_a, "λ_A (style adaptation)", -1, 10),
                "lambda_b": v.real(lambda_b, "λ_B (text guidance)", 0, 30)}

    def sampling_options(self, options) -> tuple[str, tuple[float, float] | None]:
        """(adapter form, (lambda_A, lambda_B) or None for plain CFG) from the State; None (a
        plain REST call, which has no State): the page's defaults, the paper's."""
        options = dict(DEFAULT_OPTIONS) if options is None else options
        if not isinstance(options, dict):
            raise UserError("The adapter settings could not be read.")
        o = self.options_of(options.get("form"), options.get("adapter_guidance"), options.get("lambda_a"),
                            options.get("lambda_b"))
        return o["form"], (o["lambda_a"], o["lambda_b"]) if o["adapter_guidance"] else None

    @user_errors
    def export(self, round, visitor=None, request: gr.Request = None):
        """The round's adapter as a kohya LoRA file for A1111/ComfyUI: (file, note)."""
        round_id = v.record_id(round, "Round")
        owner = self.caller(request, visitor).owner
        if round_id is None:
            raise UserError("Pick a round (train one first).")
        path, exact = styledrop.export_for_lora_loaders(self.engine, round_id, owner=owner)
        return deliver(path), ("Exact: this round's adapter is a LoRA (linear form)." if exact else
                      "**Linearised** (not exact): GELU(z) replaced by z/2 and the bias term dropped; images in "
                      "A1111/ComfyUI will differ from the ones here.")

    @user_errors
    def save_style(self, round, name, visitor=None, request: gr.Request = None) -> str:
        """The round (its adapter, the loop's style images and words) as a library style."""
        round_id = v.record_id(round, "Round")
        name = v.text(name, "Style name", styles.MAX_NAME)
        owner = self.caller(request, visitor).owner
        if round_id is None:
            raise UserError("Pick a round (train one first).")
        return saved_style_text(styles.save_styledrop_round(self.engine, round_id, owner=owner, name=name))

    # ------------------------------------------------------------------ rounds
    @staticmethod
    def grid_settings(prompts, samples_per_prompt, sample_steps, guidance, grid_seed) -> dict:
        """The candidate grid's settings, checked, as core's keyword arguments."""
        contents = v.text(prompts, "Content prompts", 10_000)
        samples = v.whole(samples_per_prompt, "Samples per prompt", 1, 16)
        steps = v.whole(sample_steps, "Sampling steps", 1, 150)
        guidance = v.real(guidance, "Guidance", 0, 30)
        seed = v.seed(grid_seed, "Grid seed")
        contents, samples = styledrop.check_grid(contents, samples, steps)
        return dict(contents=contents, samples_per_prompt=samples, sample_steps=steps, guidance=guidance, seed=seed)

    @user_errors
    @gpu(duration=900)
    def train(self, loop, style_files, content, style, name, steps, learning_rate, rank, gradient_checkpointing,
              seed, prompts, samples_per_prompt, sample_steps, guidance, grid_seed, options=None, visitor=None,
              library_style=None, request: gr.Request = None):
        """Train the loop's next round (no loop: a new loop from the style image) and its grid,
        streamed: (status, loss plot, loop view ×6, info). `library_style` (a key, new loops only):
        its images join the uploaded ones, its words fill an empty content or style field."""
        config = TrainSettings(steps=v.whole(steps, "Steps", 1, MAX_STEPS),
                             learning_rate=v.real(learning_rate, "Learning rate", 1e-8, 0.1),
                             gradient_checkpointing=v.flag(gradient_checkpointing, "Gradient checkpointing"),
                             seed=v.seed(seed, "Training seed"), sample_every=0, resume=False)
        rank = v.whole(rank, "Adapter rank r", 1, 128)
        grid = self.grid_settings(prompts, samples_per_prompt, sample_steps, guidance, grid_seed)
        loop_id = v.record_id(loop, "Feedback loop")
        paths = v.files(style_files, "Style image", styledrop.MAX_STYLE_IMAGES)
        content = v.text(content, "Content of the style image", 200)
        style = v.text(style, "Style descriptor", 200)
        name = v.text(name, "Loop name", 100)
        form, lambdas = self.sampling_options(options)
        caller = self.caller(request, visitor)
        picked, _ = self.library_style(library_style, 1.0, caller.owner)
        images = [] if loop_id is not None else \
            [load_image(f, what=f"style image {i + 1}", max_side=4096) for i, f in enumerate(paths)]
        if picked is not None and loop_id is None:
            found, style_content, style_words = styles.styledrop_start(self.engine, picked, owner=caller.owner)
            images += [load_image(f, what="the library style's image", max_side=4096) for f in found]
            content, style, name = content or style_content, style or style_words, name or picked.name[:100]
            if len(images) > styledrop.MAX_STYLE_IMAGES:
                raise UserError(f"Style image: {len(images)} with the library style's; at most "
                                f"{styledrop.MAX_STYLE_IMAGES}.")
        round_kw = dict(owner=caller.owner, stop_key=caller.stop_key, rank=rank, metrics=self.ctx.metrics, form=form,
                        lambdas=lambdas, **grid)
        if loop_id is None:
            if not images:
                raise UserError("Upload a style image (or pick a library style) to start a loop.")
            events = styledrop.first_round(self.engine, images, config, content_description=content,
                                           style_descriptor=style, name=name, **round_kw)
        else:
            events = styledrop.train_round(self.engine, loop_id, config, **round_kw)
        yield from self._stream_round(events, caller.owner, loop_id)

    def _stream_round(self, events, owner: str, loop_id: int | None):
        """A round job's events as (status, loss plot, loop view ×6, info) updates; after a Stop,
        the loop as it is now."""
        finished: list[styledrop.RoundOutcome] = []

        def finish(result: Result):
            outcome = styledrop.round_outcome(result)
            finished.append(outcome)
            return _done_line(outcome, len(result.images)), result.info

        # visitor text (a loop's name) in the notices: Markdown shown as text
        events = (Notice(md_text(ev.message, 400)) if isinstance(ev, Notice) else ev for ev in events)
        yield ("**Starting**", None, *self.render(owner, loop_id), gr.skip())
        for status, plot, _samples, info in stream_training(
                events, plot=_loss_plot, row=lambda ev, history: {"step": ev.step, "loss": ev.loss},
                finish=finish, stopped=STOPPED_ROUND):
            view = (self.render(owner, finished[0].loop_id, finished[0].round_id) if finished
                    else (gr.skip(),) * 6)
            yield (status, plot, *view, info)
        if not finished:  # stopped: the loop as it is now (a new loop without a round is gone)
            yield (gr.skip(), gr.skip(), *self.render(owner, loop_id), gr.skip())

    @user_errors
    @gpu(duration=300)
    def generate(self, loop, round, prompts, samples_per_prompt, sample_steps, guidance, grid_seed, options=None,
                 visitor=None, request: gr.Request = None):
        """More candidates for the round, streamed: (status, loop view ×6)."""
        grid = self.grid_settings(prompts, samples_per_prompt, sample_steps, guidance, grid_seed)
        loop_id, round_id = v.record_id(loop, "Feedback loop"), v.record_id(round, "Round")
        _, lambdas = self.sampling_options(options)
        caller = self.caller(request, visitor)
        if round_id is None:
            raise UserError("Pick a round (train one first).")
        events = styledrop.generate_candidates(self.engine, round_id, owner=caller.owner, stop_key=caller.stop_key,
                                               metrics=self.ctx.metrics, lambdas=lambdas, **grid)
        for u in job_updates(events, stopped="**Stopped.** No candidates were added."):
            if isinstance(u.event, Result):
                outcome = styledrop.round_outcome(u.event)
                yield (f"{u.status} {outcome.added} more candidates in round {outcome.round}.",
                       *self.render(caller.owner, loop_id, round_id))
            else:
                yield (u.status, *(gr.skip(),) * 6)

    @user_errors
    def order(self, round, preference, visitor=None, request: gr.Request = None):
        """The round's grid order (owner only): each prompt's candidates best first by CLIP text
        score against DINO style similarity, `preference` 0 .. 1; (counts, grid)."""
        round_id = v.record_id(round, "Round")
        p = v.real(preference, ORDER, 0, 1)
        owner = self.caller(request, visitor).owner
        if round_id is None:
            raise UserError("Pick a round (train one first).")
        styledrop.set_order(self.engine, round_id, owner=owner, preference=p)
        return self.round_parts(round_id, owner)

    # ------------------------------------------------------------------ feedback
    def _rate(self, caller, candidate_id: int, rating: int) -> None:
        """One rating, within the limits for someone else's published loop."""
        lp = styledrop.store_of(self.engine).candidate_loop(candidate_id, caller.owner)
        if lp.owner != caller.owner:
            key = caller.stop_key.client or caller.stop_key
            if not self.rate_throttle.allow(str(key)):
                raise UserError(f"Too many ratings: at most {RATES_PER_MINUTE} a minute. Wait a little.")
            if not self.raters_per_loop.allow(f"{key}|{lp.id}", caller.owner):
                raise UserError("Ratings of this loop from your address already count for "
                                f"{RATERS_PER_LOOP} visitors; more would not be fair to its owner.")
        styledrop.rate(self.engine, candidate_id, caller.owner, rating)

    @user_errors
    def rate_from_grid(self, loop, round, visitor=None, evt: gr.EventData = None, request: gr.Request = None):
        """A thumb from the grid (its click event carries {candidate, rating}): (counts, grid, rounds)."""
        data = getattr(evt, "_data", None)
        data = data if isinstance(data, dict) else {}
        candidate_id = v.record_id(data.get("candidate"), "Candidate")
        rating = v.whole(data.get("rating"), "Rating", -1, 1)
        loop_id, round_id = v.record_id(loop, "Feedback loop"), v.record_id(round, "Round")
        caller = self.caller(request, visitor)
        if candidate_id is None:
            raise UserError("That rating could not be read.")
        self._rate(caller, candidate_id, rating)
        counts, grid = self.round_parts(round_id, caller.owner)
        return counts, grid, self.rounds_text(loop_id, caller.owner)

    @user_errors
    def rate(self, candidate, rating, visitor=None, request: gr.Request = None) -> dict:
        """The API's rating: +1, -1 or 0 (withdraw) on a candidate; its votes after."""
        candidate_id = v.record_id(candidate, "candidate id")
        rating = v.whole(rating, "rating", -1, 1)
        caller = self.caller(request, visitor)
        if candidate_id is None:
            raise UserError("Give a candidate id and a rating (+1, -1 or 0).")
        self._rate(caller, candidate_id, rating)
        return styledrop.candidate_votes(self.engine, candidate_id, caller.owner)

    @user_errors
    def clip_feedback(self, loop, round, mode, k, threshold, text_weight, per_prompt, visitor=None,
                      request: gr.Request = None):
        """CLIP's thumbs up on its picks (owner only); the loop view."""
        k = v.whole(k, "k (best k)", 1, 32)
        threshold = v.real(threshold, "Threshold on the score", -1, 1)
        text_weight = v.real(text_weight, "Score = w · CLIP text + (1 − w) · CLIP style; w =", 0, 1)
        mode = v.choice(mode, "CLIP feedback picks", ["top_k", "threshold"])
        per_prompt = v.flag(per_prompt, "Top-k per content prompt")
        loop_id, round_id = v.record_id(loop, "Feedback loop"), v.record_id(round, "Round")
        owner = self.caller(request, visitor).owner
        if round_id is None:
            raise UserError("Pick a round with candidates first.")
        styledrop.clip_feedback(self.engine, round_id, owner=owner, mode=mode, k=k, threshold=threshold,
                                text_weight=text_weight, per_prompt=per_prompt)
        return self.render(owner, loop_id, round_id)

    # ------------------------------------------------------------------ style + subject
    @staticmethod
    @user_errors
    def mix_of(mode, gamma) -> dict:
        """The page's style + subject mixing, checked (kept in a State for `combine`)."""
        return {"mode": v.choice(mode, "Mix", ["predictions", "weights"]),
                "gamma": v.real(gamma, "γ (subject share)", 0, 1)}

    def mix_options(self, mix, options) -> dict:
        """generate_with_subject's mixing arguments from the States (None: the page's defaults)."""
        mix = dict(DEFAULT_MIX) if mix is None else mix
        if not isinstance(mix, dict):
            raise UserError("The mixing settings could not be read.")
        m = self.mix_of(mix.get("mode"), mix.get("gamma"))
        if m["mode"] == "weights":
            return {"mix": "weights"}
        _, lambdas = self.sampling_options(options)
        return {"mix": "predictions", "gamma": m["gamma"], "lambdas": lambdas or (0.0, 5.0)}

    @user_errors
    @gpu(duration=120)
    def combine(self, style_adapter, style_weight, subject_adapter, subject_weight, prompts, seed, sample_steps,
                guidance, options=None, mix=None, visitor=None, request: gr.Request = None):
        """Style + subject, streamed: (gallery, status). `mix` (the page's State; None: its default)
        {"mode": "predictions" | "weights", "gamma": g}."""
        style_weight = v.real(style_weight, "Style weight", 0, 2)
        subject_weight = v.real(subject_weight, "Subject weight", 0, 2)
        seed = v.seed(seed)
        steps = v.whole(sample_steps, "Sampling steps", 1, 150)
        guidance = v.real(guidance, "Guidance", 0, 30)
        style_id = v.record_id(style_adapter, "Style adapter")
        subject_id = v.record_id(subject_adapter, "Subject adapter")
        prompts = v.text(prompts, "Prompts", 10_000)
        mix_kw = self.mix_options(mix, options)
        caller = self.caller(request, visitor)
        if style_id is None:
            raise UserError("Pick a StyleDrop adapter (train a round first).")
        lines = [ln.strip() for ln in prompts.splitlines() if ln.strip()]
        events = styledrop.generate_with_subject(
            self.engine, style_adapter_id=style_id, subject_adapter_id=subject_id, prompts=lines,
            style_weight=style_weight, subject_weight=subject_weight, owner=caller.owner,
            stop_key=caller.stop_key, seed=seed, steps=steps, guidance=guidance, **mix_kw)

        def finish(result, status):
            used = ", ".join(f"#{i} × {w:g}" for i, w in result.info["adapters"].items())
            if result.info.get("mix") == "predictions":
                used = ", ".join(f"#{i}" for i in result.info["adapters"]) + \
                    f" (predictions mixed, γ = {result.info['gamma']:g})"
            return captioned(result), f"{status} Adapters: {used}."
        yield from image_updates(events, stopped="**Stopped.** The images were not finished.", finish=finish)

    # ------------------------------------------------------------------ layout and wiring
    def build(self) -> None:
        about(SUMMARY, INTRO)
        ui = self.ui = SimpleNamespace()
        with gr.Row():
            with gr.Column(scale=1):
                self._setup_column(ui)
            with gr.Column(scale=2):
                self._loop_column(ui)
        gr.Examples([[[example(f)], content, style] for f, content, style in EXAMPLES],
                    [ui.style_files, ui.content, ui.style], label="Examples: click one, then Start a new loop",
                    examples_per_page=len(EXAMPLES), elem_id="sd-examples")
        with gr.Accordion("Style + subject (StyleDrop + DreamBooth)", open=False):
            self._combine_section(ui)
        with gr.Row(visible=False):  # the API's rating endpoint (the grid's thumbs use its own event)
            ui.rate_candidate = Number(label="candidate id", precision=0)
            ui.rate_value = Number(label="rating (+1, -1, 0)", precision=0)
            ui.rate_button = gr.Button("rate")
            ui.rate_out = gr.JSON()
        ui.info = gr.JSON(visible=False)
        ui.no_loop = gr.State(None)  # the "Start a new loop" button's loop: none
        self._wire(ui)

    def _setup_column(self, ui) -> None:
        p = styledrop.PRESETS[self.default_preset]
        ui.style_files = gr.File(label=f"Style image (1, up to {styledrop.MAX_STYLE_IMAGES})", file_count="multiple",
                                 file_types=["image"], type="filepath", elem_id="sd-style-files")
        ui.style_view = gr.Gallery(label="Style image(s)", columns=4, height=160, object_fit="contain",
                                   elem_id="sd-style-view")
        ui.library_style, = self.library_style_inputs(
            "sd", "Start a new loop from a style in the library (saved in any tab): its images join the uploaded "
                  "ones (none needed) and its words fill the two fields below; then **Start a new loop**.",
            weight=False)
        ui.content = gr.Textbox(label="Content of the style image", value="a house", elem_id="sd-content")
        ui.style = gr.Textbox(label="Style descriptor", value="watercolor painting", elem_id="sd-style")
        ui.text = gr.Markdown(f"Training text: **{styledrop.training_text('a house', 'watercolor painting')}**",
                              elem_id="sd-text")
        ui.name = gr.Textbox(label="Loop name (default: the style descriptor)", value="", elem_id="sd-name")
        ui.preset = Dropdown(list(styledrop.PRESETS), value=self.default_preset, label="Preset", elem_id="sd-preset")
        with gr.Row():
            ui.new = gr.Button("Start a new loop (round 1)", variant="primary", elem_id="sd-new")
            ui.next = gr.Button("Train the next round on the liked images", variant="primary", elem_id="sd-next")
        with gr.Row():
            ui.generate = gr.Button("Generate more candidates for this round", elem_id="sd-generate")
            ui.stop = gr.Button("Stop", variant="stop", elem_id="sd-stop")
        with gr.Accordion("Training settings", open=False):
            with gr.Row():
                ui.steps = Number(label="Steps", value=p["steps"], precision=0, minimum=1, elem_id="sd-steps")
                ui.lr = Number(label="Learning rate", value=p["learning_rate"], elem_id="sd-lr")
                ui.rank = Number(label="Adapter rank r", value=p["rank"], precision=0, minimum=1, maximum=128,
                                 elem_id="sd-rank")
            with gr.Row():
                ui.gc = gr.Checkbox(label="Gradient checkpointing", value=p["gradient_checkpointing"])
                ui.seed = Number(label="Training seed", value=0, precision=0, minimum=0)
            ui.form = Radio([("The paper's adapter: out + U·GELU(D·out)", "gelu"),
                             ("Linear (a LoRA for A1111/ComfyUI)", "linear")], value="gelu", label="Adapter form",
                            elem_id="sd-form")
            gr.Markdown(FORM_NOTE)
        ui.params = gr.Markdown(elem_id="sd-params")
        with gr.Accordion("Candidate grid", open=False):
            ui.prompts = gr.Textbox(label="Content prompts, one per line (sampled as \"[content] in [style] style\")",
                                    lines=5, value="\n".join(styledrop.DEFAULT_CONTENT_PROMPTS[:p["prompts"]]),
                                    elem_id="sd-prompts")
            with gr.Row():
                ui.samples = Number(label="Samples per prompt", value=p["samples_per_prompt"], precision=0,
                                    minimum=1, maximum=16, elem_id="sd-samples")
                ui.sample_steps = Number(label="Sampling steps", value=p["sample_steps"], precision=0, minimum=1,
                                         elem_id="sd-sample-steps")
                ui.guidance = Number(label="Guidance", value=p["guidance"], minimum=0)
                ui.grid_seed = Number(label="Grid seed", value=0, precision=0, minimum=0)
            with gr.Row():
                ui.eq4 = gr.Checkbox(label="Adapter guidance (Eq. 4)", value=True, elem_id="sd-eq4")
                ui.lambda_a = Slider(-1, 5, value=DEFAULT_OPTIONS["lambda_a"], step=0.1, label="λ_A (style adaptation)",
                                     elem_id="sd-lambda-a")
                ui.lambda_b = Slider(0, 15, value=DEFAULT_OPTIONS["lambda_b"], step=0.5, label="λ_B (text guidance)",
                                     elem_id="sd-lambda-b")
            gr.Markdown(GUIDANCE_NOTE)
            ui.options = gr.State(dict(DEFAULT_OPTIONS))

    def _loop_column(self, ui) -> None:
        with gr.Row():
            ui.loop = Dropdown([], value=None, label="Feedback loop", elem_id="sd-loop", scale=3,
                               allow_custom_value=True)
            ui.round = Dropdown([], value=None, label="Round (every round is kept)", elem_id="sd-round", scale=2,
                                allow_custom_value=True)
            ui.publish = gr.Checkbox(label="Shared for rating (others can rate)", value=False, elem_id="sd-publish",
                                     scale=1)
        ui.status = gr.Markdown("", elem_id="sd-status")
        ui.loss = gr.LinePlot(None, x="step", y="loss", title="Training loss", height=180, elem_id="sd-loss",
                              **self.loss_axes(ui.steps.value))
        ui.counts = gr.Markdown("", elem_id="sd-counts")
        ui.order = Slider(0, 1, value=styledrop.DEFAULT_PREFERENCE, step=0.05, label=ORDER, elem_id="sd-order",
                          info="Each prompt's samples best first: 0 by CLIP text score, 1 by DINO similarity to the "
                               "style image (the loop's owner sets it; ratings stay with their image)")
        ui.grid = gr.HTML({"tiles": [], "message": NO_LOOP}, html_template=GRID_TEMPLATE, css_template=GRID_CSS,
                          js_on_load=GRID_JS, elem_id="sd-grid")
        with gr.Group():
            with gr.Row():
                ui.clip_mode = Radio([("Top-k", "top_k"), ("Threshold", "threshold")], value="top_k",
                                     label="CLIP feedback picks", elem_id="sd-clip-mode")
                ui.clip_k = Slider(1, 32, value=1, step=1, label="k (best k)", elem_id="sd-clip-k")
                ui.clip_threshold = Slider(-1, 1, value=0.5, step=0.005, label="Threshold on the score",
                                           elem_id="sd-clip-thr")
            with gr.Row():
                ui.clip_weight = Slider(0, 1, value=1.0, step=0.05,
                                        label="Score = w · CLIP text + (1 − w) · CLIP style; w =", elem_id="sd-clip-w")
                ui.clip_per_prompt = gr.Checkbox(label="Top-k per content prompt (with k = 1, w = 1: the paper's "
                                                       "CLIP feedback, the default)", value=True)
                ui.clip = gr.Button("Apply CLIP feedback", elem_id="sd-clip")
        ui.rounds = gr.Markdown("", elem_id="sd-rounds")
        with gr.Accordion("Export for A1111 / ComfyUI", open=False):
            gr.Markdown(styledrop.EXPORT_NOTE)
            with gr.Row():
                ui.export = gr.Button("Export this round's adapter as a LoRA", elem_id="sd-export")
                ui.export_file = gr.File(label="LoRA file (kohya format)", elem_id="sd-export-file")
            ui.export_note = gr.Markdown("", elem_id="sd-export-note")
        ui.save = self.save_style_inputs("sd", "This round as a style of your own (say, the round you liked): its "
                                               "adapter, the loop's style image(s) and its style words, usable "
                                               "in the other tabs.")

    def _combine_section(self, ui) -> None:
        gr.Markdown("Pick a StyleDrop adapter and a Personalize (DreamBooth) subject, on \"a [V] [class] in [style] "
                    "style\". **Mix predictions** (the paper, Sec. 3.4): (1 − γ)·Eq. 4 of the style adapter on the "
                    "prompt + γ·Eq. 4 of the subject adapter on the prompt without its style phrase (λ_A, λ_B from "
                    "the candidate grid's settings; five UNet passes a step; the paper: γ 0.5–0.7). **Mix weights**: "
                    "both adapters on at once, a weight each (the sliders below).")
        with gr.Row():
            ui.c_mix = Radio([("Mix predictions (the paper)", "predictions"), ("Mix weights", "weights")],
                             value=DEFAULT_MIX["mode"], label="Mix", elem_id="sd-c-mix")
            ui.c_gamma = Slider(0, 1, value=DEFAULT_MIX["gamma"], step=0.05, label="γ (subject share)",
                                elem_id="sd-c-gamma")
            ui.mix = gr.State(dict(DEFAULT_MIX))
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    ui.c_style = Dropdown([], value=None, label="Style adapter (StyleDrop)", elem_id="sd-c-style",
                                          scale=3, allow_custom_value=True)
                    ui.c_style_weight = Slider(0, 2, value=1.0, step=0.05, label="Style weight", scale=1)
                with gr.Row():
                    ui.c_subject = Dropdown([], value=None, label="Subject adapter (DreamBooth)",
                                            elem_id="sd-c-subject", scale=3, allow_custom_value=True)
                    ui.c_subject_weight = Slider(0, 2, value=1.0, step=0.05, label="Subject weight", scale=1)
                ui.c_prompt = gr.Textbox(label="Prompts, one per line", lines=2, elem_id="sd-c-prompt")
                with gr.Row():
                    ui.c_seed = Number(label="Seed", value=0, precision=0, minimum=0)
                    ui.c_generate = gr.Button("Generate with both", variant="primary", elem_id="sd-c-generate")
            with gr.Column():
                ui.c_status = gr.Markdown("", elem_id="sd-c-status")
                ui.c_gallery = gr.Gallery(label="Style + subject", columns=4, height="auto", elem_id="sd-c-gallery")

    def _wire(self, ui) -> None:
        private = dict(api_visibility="private")
        view = [ui.loop, ui.round, ui.publish, ui.counts, ui.grid, ui.rounds]
        ui.style_files.change(self.show_style, ui.style_files, ui.style_view, **private)
        for box in (ui.content, ui.style):
            box.change(self.describe, [ui.content, ui.style], ui.text, queue=False, **private)
        ui.rank.change(self.params_text, ui.rank, ui.params, queue=False, **private)
        ui.steps.change(self.update_loss_axes, ui.steps, ui.loss, queue=False, **private)
        ui.preset.change(self.apply_preset, ui.preset, [ui.steps, ui.lr, ui.rank, ui.gc, ui.samples, ui.sample_steps,
                                                        ui.guidance, ui.params], **private)
        ui.loop.input(self.show_loop, [ui.loop, self.visitor], view, **private)
        ui.round.input(self.show_round, [ui.loop, ui.round, self.visitor], view, **private)
        ui.publish.input(self.publish, [ui.loop, ui.publish, self.visitor], view, api_name="styledrop_publish")

        settings = [ui.form, ui.eq4, ui.lambda_a, ui.lambda_b]
        for box in settings:
            box.change(self.options_of, settings, ui.options, queue=False, **private)
        ui.export.click(self.export, [ui.round, self.visitor], [ui.export_file, ui.export_note], **private)
        ui.save.button.click(self.save_style, [ui.round, ui.save.name, self.visitor], ui.save.status,
                             api_name="styledrop_save_style")
        train_tail = [ui.style_files, ui.content, ui.style, ui.name, ui.steps, ui.lr, ui.rank, ui.gc, ui.seed,
                      ui.prompts, ui.samples, ui.sample_steps, ui.guidance, ui.grid_seed, ui.options, self.visitor,
                      ui.library_style]
        ui.library_style.input(self.style_fields, [ui.library_style, self.visitor], [ui.content, ui.style,
                                                                                       ui.style_view], **private)
        train_out = [ui.status, ui.loss, *view, ui.info]
        for event in (ui.next.click(self.train, [ui.loop, *train_tail], train_out, api_name="styledrop_train", **GPU),
                      ui.new.click(self.train, [ui.no_loop, *train_tail], train_out, **private, **GPU)):
            event.then(self.refresh_adapters, self.visitor, [ui.c_style, ui.c_subject], **private).then(
                self.params_text, ui.rank, ui.params, **private)
        ui.generate.click(self.generate, [ui.loop, ui.round, ui.prompts, ui.samples, ui.sample_steps, ui.guidance,
                                          ui.grid_seed, ui.options, self.visitor],
                          [ui.status, *view], api_name="styledrop_generate", **GPU)
        ui.order.input(self.order, [ui.round, ui.order, self.visitor], [ui.counts, ui.grid],
                       api_name="styledrop_order", trigger_mode="always_last")
        ui.grid.click(self.rate_from_grid, [ui.loop, ui.round, self.visitor], [ui.counts, ui.grid, ui.rounds],
                      trigger_mode="multiple", **private)
        ui.rate_button.click(self.rate, [ui.rate_candidate, ui.rate_value, self.visitor], ui.rate_out,
                             api_name="styledrop_rate")
        ui.clip.click(self.clip_feedback, [ui.loop, ui.round, ui.clip_mode, ui.clip_k, ui.clip_threshold,
                                           ui.clip_weight, ui.clip_per_prompt, self.visitor], view,
                      api_name="styledrop_clip")
        for box in (ui.c_style, ui.c_subject):
            box.change(self.combine_prompt, [ui.c_style, ui.c_subject, self.visitor], ui.c_prompt, queue=False,
                       **private)
        for box in (ui.c_mix, ui.c_gamma):
            box.change(self.mix_of, [ui.c_mix, ui.c_gamma], ui.mix, queue=False, **private)
        ui.c_generate.click(self.combine, [ui.c_style, ui.c_style_weight, ui.c_subject, ui.c_subject_weight,
                                           ui.c_prompt, ui.c_seed, ui.sample_steps, ui.guidance, ui.options, ui.mix,
                                           self.visitor],
                            [ui.c_gallery, ui.c_status], api_name="styledrop_combine", **GPU)
        self.on_page_load(self.page_load, [ui.rank, self.visitor],
                          [*view, ui.params, ui.c_style, ui.c_subject])
        self.wire_stop(ui.stop)


build = StyleDropTab.mount  # the tab module's entry point (tabs/__init__.py)
