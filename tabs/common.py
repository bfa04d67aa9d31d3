"""What every tab shares: the app context (who is asking, checked), the GPU queue slot, error
translation, and result files handed out safely."""
from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from core import identity
from core.errors import Cancelled, UserError
from core.jobs import JobKey
from core.throttle import Throttle
from core.validate import clip_log

log = logging.getLogger("studio")

# Events that run a model on the accelerator share this queue group. The engine itself runs
# them one at a time, in arrival order, within each owner's share (core.jobs); the group only
# bounds how many such handlers are open at once (the others wait in Gradio's queue).
GPU = dict(concurrency_id="gpu", concurrency_limit=8)
# Webcam frames (AdaIN) have a group of their own: a backlog of frames (a slow machine, a page
# closed while its frames were queued) never fills the group above, where it would keep every
# other visitor's job waiting in Gradio's queue. A frame takes the accelerator only when it is
# free and nobody waits (core.jobs.GpuSlot.try_acquire), so two at a time is plenty.
WEBCAM = dict(concurrency_id="webcam", concurrency_limit=2)

VISITOR_TOKENS_PER_HOUR = 30   # new visitor tokens one client address may get


@dataclass(frozen=True)
class Caller:
    """Who is asking, checked: `owner` owns what the request reads and makes (library entries,
    runs, ratings); `stop_key` is the key this page's Stop reaches its jobs by, carrying the
    owner and the client address for the engine's fair share."""

    owner: str
    stop_key: JobKey


@dataclass
class AppContext:
    engine: Any  # core.engine.Engine
    data_dir: Path
    args: argparse.Namespace
    metrics: Any = None  # core.metrics.Metrics
    visitor: Any = None  # gr.BrowserState holding this browser's visitor token (shared instances)
    token_throttle: Throttle = field(default_factory=lambda: Throttle(VISITOR_TOKENS_PER_HOUR, 3600.0))
    tabs: dict = field(default_factory=dict)  # module name -> its Tab (the handlers), once built

    @property
    def shared(self) -> bool:
        """A shared instance (a Space or --multi-user): visitors' work is kept apart."""
        return bool(getattr(self.args, "multi_user", False))

    @property
    def proxy_hops(self) -> int:
        return int(getattr(self.args, "proxy_hops", 0) or 0)

    def owner(self, request: gr.Request | None, visitor: Any = None) -> str:
        """Whose data a request touches; a forged or malformed visitor token is refused."""
        return owner_key(request, visitor, shared=self.shared, data_dir=self.data_dir)

    def caller(self, request: gr.Request | None, visitor: Any = None) -> Caller:
        owner = self.owner(request, visitor)
        key = JobKey(session_key(request), owner=owner if self.shared else None,
                     client=client_address(request, self.proxy_hops) if self.shared else None)
        return Caller(owner, key)

    def new_visitor_token(self, request: gr.Request | None) -> str:
        """A fresh signed visitor token, at most VISITOR_TOKENS_PER_HOUR per client address."""
        if not self.token_throttle.allow(client_address(request, self.proxy_hops) or "local"):
            raise UserError("Too many new visitor tokens from your address this hour; reuse the one you have.")
        return identity.issue(self.data_dir)

    def assign_visitor(self, current: Any, request: gr.Request | None,
                       profile: Any = None) -> str | None:
        """The token a page keeps (page-load hook): the one it has if it is valid and still
        matches the Hugging Face sign-in, else a new one (for the signed-in account, or a fresh
        anonymous visitor). An unsigned id of an earlier version that owns data is signed once,
        so a visitor keeps their work across the upgrade."""
        user = getattr(profile, "preferred_username", None) or getattr(profile, "username", None) \
            if profile is not None else None
        try:
            ident = identity.verify(self.data_dir, current) if current else None
        except UserError:
            ident = None
        if user:
            if ident is not None and ident.kind == "hf" and ident.subject == user:
                return current
            try:
                return identity.issue(self.data_dir, "hf", str(user))
            except UserError:
                pass  # a name we cannot sign: an anonymous visitor instead
        if ident is not None and ident.kind == "visitor":
            return current
        if identity.is_legacy(current) and self.legacy_owner_exists(f"visitor:{current}"):
            return identity.issue(self.data_dir, "visitor", current)
        try:
            return self.new_visitor_token(request)
        except UserError:
            return None  # this page works as its own session until the hour is over

    def legacy_owner_exists(self, owner: str) -> bool:
        from core import library

        return library.get_store(self.engine).owner_exists(owner)


class Tab:
    """One tab of the app, the pattern every tab follows:

    - handlers are plain methods with named parameters, each validating its inputs at the top
      (core.validate) and taking `visitor` (the browser's visitor token) and `request` last;
      tests call them directly on a tab built with `Tab(ctx)`, no server needed;
    - `build()` only lays out widgets and wires events to the handlers (`wire_stop`,
      `on_page_load`, `self.visitor` do the plumbing every tab shares);
    - long jobs go through `engine.run` in core (GPU slot, Stop, limits) and are rendered with
      `job_updates` / `stream_training`.

    `title` is the tab's label; `api_prefix` names its endpoints and Stop."""

    title: str = ""
    api_prefix: str = ""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    @property
    def engine(self):
        return self.ctx.engine

    def caller(self, request: gr.Request | None, visitor: Any = None) -> Caller:
        """Who is asking (owner) and the key this page's Stop reaches its jobs by."""
        return self.ctx.caller(request, visitor)

    @property
    def visitor(self):
        """The input that carries the browser's visitor token (a per-page placeholder where the
        app has none, as in tests that build one tab alone)."""
        if getattr(self, "_visitor", None) is None:
            self._visitor = self.ctx.visitor if self.ctx.visitor is not None else gr.State(None)
        return self._visitor

    def stop(self, request: gr.Request = None) -> None:
        """Stop this page's running job of any tab: it stops within one step and its own last
        update says what was kept (a reply from here could overwrite that line, so none)."""
        self.engine.cancel(session_key(request))

    def wire_stop(self, button, api_name: str | None = None) -> None:
        button.click(self.stop, None, None, queue=False, api_name=api_name or f"{self.api_prefix}_stop")

    def on_page_load(self, fn: Callable, inputs, outputs) -> None:
        """Run `fn` when a page opens (e.g. to list the visitor's own entries)."""
        root = getattr(gr.context.Context, "root_block", None)
        if root is not None and hasattr(root, "load"):
            root.load(fn, inputs, outputs, queue=False, api_visibility="private")

    # -------------------------------------------------------------- a style from the library
    def library_style_choices(self, visitor=None, request: gr.Request = None):
        """The library styles (core.styles) the visitor may use, for a tab's style picker."""
        from core import styles

        found = styles.library_styles(self.engine, owner=self.caller(request, visitor).owner)
        return gr.update(choices=[("None", "")] + [(s.label, s.key) for s in found])

    def library_style(self, style_id, weight, owner: str):
        """(the picked core.styles.LibraryStyle or None, its weight), validated for `owner`."""
        from core import styles
        from core import validate as v

        key = style_id.strip() if isinstance(style_id, str) else style_id
        entry = isinstance(key, str) and key.startswith(styles.ENTRY_PREFIX)
        picked = v.record_id(key[len(styles.ENTRY_PREFIX):] if entry else key, "Library style")
        weight = v.real(weight, "Style weight", 0, styles.MAX_WEIGHT)
        if picked is None:
            if entry:
                raise UserError("Library style: pick one from the list.")
            return None, weight
        return styles.get_style(self.engine, f"{styles.ENTRY_PREFIX}{picked}" if entry else picked, owner=owner), weight

    def library_style_inputs(self, prefix: str, note: str, *, weight: bool = True) -> list:
        """An accordion with a library-style picker, its weight (unless `weight` is False) and a
        refresh button, listing the visitor's styles when a page opens; returns the [picker,
        weight] inputs ([picker] without the weight)."""
        from core import styles

        from .widgets import Dropdown, Slider

        with gr.Accordion("Style from the library (optional)", open=False, elem_id=f"{prefix}-library"):
            gr.Markdown(note)
            with gr.Row():
                pick = Dropdown(choices=[("None", "")], value="", label="Library style",
                                elem_id=f"{prefix}-library-style", scale=3)
                refresh = gr.Button("Refresh list", size="sm", scale=1, elem_id=f"{prefix}-library-refresh")
            if weight:
                weight = Slider(0, styles.MAX_WEIGHT, value=1.0, step=0.05, label="Style weight",
                                elem_id=f"{prefix}-library-weight")
        refresh.click(self.library_style_choices, [self.visitor], pick, api_visibility="private")
        self.on_page_load(self.library_style_choices, [self.visitor], [pick])
        return [pick, weight] if weight else [pick]

    @staticmethod
    def save_style_inputs(prefix: str, note: str, *, words: bool = False) -> SaveStyleWidgets:
        """An accordion "Save as a library style": a name (and, with `words`, the style's words), a
        button and a status line (the tab wires the button to its own handler, which ends with
        `saved_style_text`)."""
        with gr.Accordion("Save as a library style", open=False, elem_id=f"{prefix}-save-style"):
            gr.Markdown(note)
            with gr.Row():
                name = gr.Textbox(label="Style name", max_lines=1, scale=3, elem_id=f"{prefix}-style-name")
                button = gr.Button("Save as style", scale=1, elem_id=f"{prefix}-save-style-button")
            words_box = gr.Textbox(label="Style words (e.g. watercolor painting)", max_lines=1,
                                   elem_id=f"{prefix}-style-words") if words else None
            status = gr.Markdown(elem_id=f"{prefix}-save-style-status")
        return SaveStyleWidgets(name, button, status, words_box)

    def build(self) -> None:  # pragma: no cover - every tab defines it
        raise NotImplementedError

    @classmethod
    def mount(cls, ctx: AppContext) -> "Tab":
        """The tab's handlers bound to `ctx`, with its widgets laid out in the current Blocks
        context (a tab module's `build`)."""
        tab = cls(ctx)
        tab.build()
        return tab


@dataclass
class SaveStyleWidgets:
    name: Any
    button: Any
    status: Any
    words: Any = None


def saved_style_text(style) -> str:
    """What a tab says after "Save as style" (a core.styles.LibraryStyle)."""
    forms = [f"{len(style.images)} image(s)"] + (["a reference image"] if style.reference else []) + \
            ([f"the adapter #{style.adapter_id}"] if style.adapter_id is not None else [])
    return (f"**Saved** the style **{md_text(style.name)}** ({style.key}: {', '.join(forms)}). Pick it under "
            "*Style from the library* in Style-Aligned Set, AdaIN Transfer, Personalize and Text-to-SVG "
            "(*Refresh list* there).")


@dataclass
class JobUpdate:
    """One step of a job as a tab shows it: the status text so far (notes kept, then the latest
    progress line), the core event that caused it (None after a Stop) and whether the job was
    stopped."""

    status: str
    event: Any = None
    stopped: bool = False


def job_updates(events, *, stopped: str | Callable[[], str], done: str | Callable[[Any], str] = "**Done.**",
                line: Callable[[Any], str | None] | None = None,
                progress: Callable[[Any], str] | None = None):
    """Turn a job's core events into `JobUpdate`s: Notices are kept above the latest progress
    line, a Result closes with `done`, and a Stop (or the time limit) ends with `stopped` (and
    the reason), as the job's own last update so no progress line can overwrite it. `line(event)`
    may give the status line of a method's own events (None: keep the last one).

    `done` may be a function of the Result (the line of an intermediate stage's Result, or a
    closing line that says what was made), `stopped` a function called at the Stop (what was
    kept depends on how far the job got), `progress(event)` the line of a Progress (default
    `status_text`)."""
    from core.events import Notice, Progress, Result

    notes: list[str] = []
    last = ""
    clock = JobClock()

    def text(current: str) -> str:
        return "\n\n".join(notes + [current] if current else notes)

    try:
        for ev in events:
            if isinstance(ev, Notice):
                notes.append(ev.message)
            elif isinstance(ev, Result):
                last = done(ev) if callable(done) else done
            elif isinstance(ev, Progress):
                if progress is None:
                    last = status_text(ev, clock if ev.total else None)
                else:   # a method's own line, with the same elapsed time and time left
                    last = f"{progress(ev)} · {clock.tick(ev)}" if ev.total else progress(ev)
            elif line is not None:
                last = line(ev) or last
            yield JobUpdate(text(last), ev)
    except Cancelled as exc:
        yield JobUpdate(text(stopped_text(exc, stopped() if callable(stopped) else stopped)), None, stopped=True)


def image_updates(events, *, finish: Callable[[Any, str], tuple], rest: tuple = (), **how):
    """The updates (gallery, status, *rest) of a job that makes images: the latest preview while
    it runs, `finish(result, status)` at the end, the status alone otherwise (after a Stop too);
    `rest` is what the other outputs get meanwhile (default: left as they are). `how`: the
    arguments of `job_updates` (stopped, done, ...)."""
    from core.events import Progress, Result

    rest = rest or ()
    for u in job_updates(events, **how):
        if isinstance(u.event, Result):
            yield finish(u.event, u.status)
        elif isinstance(u.event, Progress) and u.event.preview:
            yield (u.event.preview, u.status, *rest)
        else:
            yield (gr.skip(), u.status, *rest)


def captioned(result) -> list[tuple]:
    """A Result's images with their prompts as captions (info["prompts"], one per image)."""
    return list(zip(result.images, result.info["prompts"], strict=True))


CANDIDATES = "Candidates (best of N)"


def best_of_inputs(prefix: str, preference_label: str, towards: str) -> tuple:
    """Best of N's two sliders in a row: N candidates per prompt (label `CANDIDATES`) and the
    preference 0..1 (`preference_label`; `towards` says what 0 and 1 favour); elem_ids
    `<prefix>-candidates`, `<prefix>-preference`."""
    from core import ranking

    from .widgets import Slider

    with gr.Row():
        candidates = Slider(1, ranking.MAX_CANDIDATES, value=1, step=1, label=CANDIDATES,
                            info="N images per prompt in one batch, ranked by CLIP text and DINO scores",
                            elem_id=f"{prefix}-candidates")
        preference = Slider(0, 1, value=0.5, step=0.05, label=preference_label, info=towards,
                            elem_id=f"{prefix}-preference")
    return candidates, preference


def ranked_gallery(result) -> list[tuple]:
    """`captioned`, or for best of N (info["ranking"], core/ranking.py): each prompt's candidates
    best first, captioned with the prompt, their place, seed and scores."""
    if not result.info.get("ranking"):
        return captioned(result)
    return [(im, f"{r['prompt']} — {r['caption']}") for im, r in zip(result.images, result.info["ranking"],
                                                                    strict=True)]


def visitor_handlers(ctx: AppContext) -> tuple[Callable, Callable]:
    """(page-load hook that gives the page its visitor token, the `/visitor` endpoint)."""
    def assign_visitor(current: Any, request: gr.Request, profile: gr.OAuthProfile | None) -> str | None:
        return ctx.assign_visitor(current, request, profile)

    @user_errors
    def visitor(request: gr.Request) -> str:
        """A new visitor token: pass it as the last parameter of the endpoints that keep things
        in the library (a shared instance keeps each token's work apart)."""
        return ctx.new_visitor_token(request)

    return assign_visitor, visitor


_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _session_id(request: gr.Request | None) -> str:
    raw = str(getattr(request, "session_hash", None) or "")
    return raw if _SESSION.fullmatch(raw) else hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:32]


def client_address(request: gr.Request | None, proxy_hops: int = 0) -> str | None:
    """The caller's network address: with `proxy_hops` trusted proxies in front (a Space has
    one), the entry that many places from the right of X-Forwarded-For (what the outermost
    trusted proxy saw), else the connection's own peer."""
    if request is None:
        return None
    if proxy_hops > 0:
        headers = getattr(request, "headers", None) or {}
        forwarded = [p.strip() for p in str(headers.get("x-forwarded-for", "")).split(",") if p.strip()]
        if len(forwarded) >= proxy_hops:
            return forwarded[-proxy_hops][:64]
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return str(host)[:64] if host else None


def status_text(event, clock: "JobClock | None" = None) -> str:
    """One status line for a core event (Progress / Notice / Result); with a `clock`, a progress
    line also says how long the job has run and, from the pace so far, how long is left."""
    from core.events import Notice, Progress

    if isinstance(event, Progress):
        text = f"**{event.message or 'Working'}**"
        if event.total and not _COUNTED.search(event.message or ""):  # "3/8" says it already
            text += f" ({100 * event.fraction:.0f}%)"
        return f"{text} · {clock.tick(event)}" if clock is not None else text
    if isinstance(event, Notice):
        return f"Note: {event.message}"
    return "**Done.**"


_COUNTED = re.compile(r"\b\d+\s*/\s*\d+\b")


def duration_text(seconds: float) -> str:
    """"8 s", "2 min 05 s", "1 h 04 min"."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class JobClock:
    """A job's elapsed time, and the time left in its current phase from the pace so far.

    A phase is a run of progress events with the same message (numbers aside) and total; its
    pace is measured from its first event, so a slow start (loading, a first compiled step)
    counts once and the estimate settles as the phase goes on."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self._now = now
        self.start = now()
        self._phase: tuple | None = None  # (key, first step, its time)

    def tick(self, event) -> str:
        now = self._now()
        key = (re.sub(r"\d+", "#", event.message or ""), event.total)
        if self._phase is None or self._phase[0] != key or event.step < self._phase[1]:
            self._phase = (key, event.step, now)
        _, step0, t0 = self._phase
        text = f"{duration_text(now - self.start)} elapsed"
        if event.total and step0 < event.step < event.total:
            left = (now - t0) / (event.step - step0) * (event.total - event.step)
            text += f" · about {duration_text(left)} left"
        return text


OOM_ADVICE = ("The device ran out of memory. Try a smaller image size, fewer images per "
              "set or a smaller batch; the memory has been released.")


def _translate(exc: BaseException, where: str = "") -> BaseException:
    """The exception that the user sees for `exc`: a `gr.Error` whose message says what to fix,
    logged in one line (a traceback only for what is not the user's to fix), with no paths or
    object reprs in it."""
    import torch

    if isinstance(exc, gr.Error):
        log.info("%s: %s", where, clip_log(str(exc)))
        exc.message = scrub_paths(exc.message)
        exc.print_exception = False
        return exc
    if isinstance(exc, UserError):
        log.info("%s: %s", where, clip_log(str(exc)))
        return gr.Error(scrub_paths(str(exc)), print_exception=False)
    if isinstance(exc, torch.OutOfMemoryError):
        from core.devices import release_memory

        release_memory()
        log.warning("%s: out of memory", where)
        return gr.Error(OOM_ADVICE, print_exception=False)
    if isinstance(exc, Cancelled):
        return gr.Error(exc.reason or "Stopped.", print_exception=False)
    log.error("%s: unexpected %s", where, type(exc).__name__, exc_info=exc)
    return gr.Error(f"Something went wrong on the server ({type(exc).__name__}); it has been logged. "
                    "Try again, or change the inputs.", print_exception=False)


_ABS_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`<>|]+){2,}/?|\b[A-Za-z]:\\[^\s'\"`<>|]+")


def scrub_paths(message: str) -> str:
    """A message without absolute file paths (the last part is kept: "…/decoder.safetensors"),
    so that no error tells a visitor where the server keeps things."""
    def short(m: re.Match) -> str:
        tail = re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1]
        return f"…/{tail}" if tail else "…"
    return _ABS_PATH.sub(short, str(message))


def user_errors(fn: Callable) -> Callable:
    """Wrap an event handler (plain function or generator) so that errors reach the user as
    `gr.Error` with a clear message and the server keeps serving."""
    where = getattr(fn, "__name__", "handler")
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except BaseException as exc:  # everything is reported, as a gr.Error
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise _translate(exc, where) from exc
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _translate(exc, where) from exc
    return wrapper


def stopped_text(exc: Cancelled, text: str) -> str:
    """A tab's closing line after a Stop, or the reason when the job was stopped for one (its
    time limit) with what `text` says was kept."""
    reason = getattr(exc, "reason", None)
    return f"**{reason}**\n\n{text}" if reason else text


def session_key(request: gr.Request | None) -> str:
    """This page load: the key a Stop button uses to reach its own running job."""
    if request is None:
        return "local"
    user = getattr(request, "username", None)
    return f"user:{user}" if user else f"session:{_session_id(request)}"


def owner_key(request: gr.Request | None, visitor: Any = None, *, shared: bool = False,
              data_dir: Path | str | None = None) -> str:
    """Who owns what a job makes (adapters, ratings, outputs).

    A logged-in user owns their work under their name. On a private instance (the default:
    one person on their own machine) everything belongs to "local", so a restart shows it all
    again. On a shared instance (a Space, or --multi-user) each browser is its own owner: the
    visitor token this server issued and signed (kept in the browser's storage, ctx.visitor;
    core.identity) names it, "visitor:<id>" or "hf:<name>"; a token that was not issued here is
    refused (`UserError`). Without a token a request owns only what its own page session
    made; nobody sees another visitor's work unless it is published."""
    user = getattr(request, "username", None) if request is not None else None
    if user:
        return f"user:{user}"
    if not shared:
        return "local"
    if visitor not in (None, ""):
        if data_dir is None:
            raise UserError(identity.INVALID)
        return identity.verify(data_dir, visitor).owner
    return f"session:{_session_id(request)}"


def gpu(duration: int = 60) -> Callable[[Callable], Callable]:
    """Mark an event handler as a GPU job for Hugging Face ZeroGPU Spaces (`spaces.GPU` with
    a duration fitted to the job, in seconds); a no-op where the `spaces` package is absent
    or the Space has no ZeroGPU."""
    def decorate(fn: Callable) -> Callable:
        if not _zero_gpu():
            return fn
        import spaces  # type: ignore[import-not-found]

        return spaces.GPU(duration=duration)(fn)
    return decorate


def _zero_gpu() -> bool:
    import importlib.util
    import os

    return bool(os.environ.get("SPACES_ZERO_GPU")) and importlib.util.find_spec("spaces") is not None


# How often a streamed loss plot is redrawn while a run trains (seconds).
PLOT_EVERY_S = 0.4


def stream_training(events, *, plot: Callable[[list[dict]], Any],
                    row: Callable[[Any, list[dict]], dict],
                    finish: Callable[[Any], tuple[str, Any]], stopped: str):
    """Turn the shared trainer's events into (status, loss plot, samples, info) updates.

    `row(step_event, history)` gives the plot row of a step, `plot(history)` the plot value,
    `finish(result)` the closing status line and the info value, `stopped` the closing status
    line after a Stop (the job's own last update, so no progress line can overwrite it; the
    curve and samples so far stay). Plots are redrawn at most every PLOT_EVERY_S (and at the
    last step); samples are shown newest first."""
    import time

    from core.events import Notice, Progress, Result
    from core.train import Checkpointed, TrainSamples, TrainStep

    history: list[dict] = []
    notes: list[str] = []
    shown: list[tuple] = []
    last_plot, line = 0.0, "**Starting**"
    clock = JobClock()
    try:
        for ev in events:
            if isinstance(ev, TrainStep):
                history.append(row(ev, history))
                line = f"**{ev.message}** · lr {ev.lr:.1e} · {ev.seconds:.2f} s/step · {clock.tick(ev)}"
                now = time.monotonic()
                if now - last_plot >= PLOT_EVERY_S or ev.step == ev.total:
                    last_plot = now
                    yield "\n\n".join(notes + [line]), plot(history), gr.skip(), gr.skip()
            elif isinstance(ev, TrainSamples):
                shown = [(im, f"step {ev.step}: {p}") for im, p in zip(ev.images, ev.prompts)] + shown
                yield gr.skip(), gr.skip(), shown[:24], gr.skip()
            elif isinstance(ev, Checkpointed):
                notes = [n for n in notes if not n.startswith("Checkpoint")] + [f"Checkpoint saved at step {ev.step}."]
            elif isinstance(ev, Notice):
                notes.append(ev.message)
                yield "\n\n".join(notes + [line]), gr.skip(), gr.skip(), gr.skip()
            elif isinstance(ev, Progress):
                status = "\n\n".join(notes + [status_text(ev, clock if ev.total else None)])
                yield status, gr.skip(), gr.skip(), gr.skip()
            elif isinstance(ev, Result):
                message, info = finish(ev)
                yield "\n\n".join(notes + [message]), plot(history), shown[:24], info
    except Cancelled as exc:
        yield ("\n\n".join(notes + [stopped_text(exc, stopped)]), plot(history) if history else gr.skip(),
               shown[:24], gr.skip())


# ------------------------------------------------------------------ result files and markup

DELIVERY_DIR = "studio-results"
DELIVERY_KEEP_S = 3600.0
_DELIVERABLE = {".svg", ".png", ".jpg", ".jpeg", ".webp", ".safetensors", ".json", ".zip"}


def deliver(path: str | os.PathLike | None) -> str | None:
    """A copy of a result file (an SVG, a PNG, an exported adapter) for Gradio to hand out.

    Gradio moves what a handler returns into its own cache and serves it from there, where
    anything but an image, audio or video type goes out as a download (`Content-Disposition:
    attachment`, application/octet-stream): an SVG never runs as a page of this origin. Our own
    folders are never served (no `allowed_paths`); this copy sits in the system's temp folder,
    which Gradio takes from, under a random folder name, and is swept after an hour."""
    if path is None:
        return None
    src = Path(path)
    if src.suffix.lower() not in _DELIVERABLE or not src.is_file():
        raise UserError("That result file is not available any more; run the job again.")
    root = Path(tempfile.gettempdir()) / DELIVERY_DIR
    _sweep_deliveries(root)
    folder = root / secrets.token_hex(12)
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / re.sub(r"[^A-Za-z0-9._-]", "_", src.name)[-120:]
    shutil.copyfile(src, dst)
    return str(dst)


_last_sweep = [0.0]


def _sweep_deliveries(root: Path) -> None:
    now = time.time()
    if now - _last_sweep[0] < 60 or not root.is_dir():
        return
    _last_sweep[0] = now
    for d in root.iterdir():
        try:
            if now - d.stat().st_mtime > DELIVERY_KEEP_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


_HTML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
                 "`": "&#96;", "$": "&#36;", "\\": "&#92;", "{": "&#123;", "}": "&#125;"}


def html_text(value: Any) -> str:
    """Text for a gr.HTML template's triple-stash field (`{{{x}}}`): HTML-escaped, and with the
    characters a JavaScript template literal gives meaning to (`$`, backtick, backslash, braces)
    escaped too: Gradio evaluates a gr.HTML template's rendered output as a template literal,
    so a `${...}` in a visitor's text would otherwise run as script on every viewer's page."""
    return "".join(_HTML_ESCAPES.get(c, c) for c in str(value))


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def md_text(value: Any, limit: int = 200) -> str:
    """A visitor's text (a name, a prompt) inside Markdown: no markup, links or images of its
    own, and at most `limit` characters."""
    s = re.sub(r"\s+", " ", str(value))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", s)


# ------------------------------------------------------------------ a newcomer's view

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"


def example(name: str) -> str:
    """The path of one of our own example images (assets/examples, drawn by its make.py)."""
    path = EXAMPLES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"assets/examples/{name} is missing: run python assets/examples/make.py")
    return str(path)


def about(summary: str, details: str) -> None:
    """A tab's one-line summary in plain words, with the method's details (the paper's terms,
    formulas, deviations) behind an "About this method" accordion."""
    gr.Markdown(summary)
    with gr.Accordion("About this method", open=False):
        gr.Markdown(details)


# ------------------------------------------------------------------ loss plots (issue 16)

def loss_axes(steps: Any, most: int) -> dict:
    """A training loss plot's axes: steps 0 to the run's last (`steps`, if it is a valid step
    count up to `most`), loss from 0. A run stopped at step 1 still has a readable plot (one
    point alone gives each axis an empty range, drawn as a lone "1.000000" tick)."""
    from core import validate

    try:
        last = validate.whole(steps, "Steps", 1, most)
    except UserError:
        last = None
    return dict(x_lim=[0, last], y_lim=[0, None])


class LossPlotAxes:
    """For a Tab with a training loss plot (mixed in before Tab): `loss_axes(steps)` for the plot's
    x_lim/y_lim and `update_loss_axes(steps)`, the page helper that redraws them when the step
    count changes. `max_steps` is the tab's largest step count."""

    max_steps: int = 1_000_000

    @classmethod
    def loss_axes(cls, steps) -> dict:
        return loss_axes(steps, cls.max_steps)

    def update_loss_axes(self, steps):
        return gr.update(**self.loss_axes(steps))
