"""What every tab shares: the app context, the GPU queue slot and error translation."""
from __future__ import annotations

import argparse
import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from core.errors import Cancelled, UserError

log = logging.getLogger("studio")

# Events that run a model on the accelerator share this queue slot: one at a time.
# CPU-only events use the default slot and are not blocked by a running GPU job.
GPU = dict(concurrency_id="gpu", concurrency_limit=1)


@dataclass
class AppContext:
    engine: Any  # core.engine.Engine
    data_dir: Path
    args: argparse.Namespace
    metrics: Any = None  # core.metrics.Metrics
    visitor: Any = None  # gr.BrowserState holding this browser's visitor id (shared instances)

    @property
    def shared(self) -> bool:
        """A shared instance (a Space or --multi-user): visitors' work is kept apart."""
        return bool(getattr(self.args, "multi_user", False))

    def owner(self, request: gr.Request | None, visitor: str | None = None) -> str:
        return owner_key(request, visitor, shared=self.shared)


def status_text(event) -> str:
    """One status line for a core event (Progress / Notice / Result)."""
    from core.events import Notice, Progress

    if isinstance(event, Progress):
        if event.total:
            return f"**{event.message or 'Working'}** ({100 * event.fraction:.0f}%)"
        return f"**{event.message or 'Working'}**"
    if isinstance(event, Notice):
        return f"Note: {event.message}"
    return "**Done.**"


OOM_ADVICE = ("The device ran out of memory. Try a smaller image size, fewer images per "
              "set or a smaller batch; the memory has been released.")


def _translate(exc: BaseException) -> BaseException:
    """The exception that the user sees for `exc`."""
    import torch

    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, UserError):
        return gr.Error(str(exc))
    if isinstance(exc, torch.OutOfMemoryError):
        from core.devices import release_memory

        release_memory()
        return gr.Error(OOM_ADVICE)
    if isinstance(exc, Cancelled):
        return gr.Error("Stopped.")
    log.exception("unexpected error", exc_info=exc)
    return gr.Error(f"Something went wrong: {type(exc).__name__}: {exc}")


def user_errors(fn: Callable) -> Callable:
    """Wrap an event handler (plain function or generator) so that errors reach the user as
    `gr.Error` with a clear message and the server keeps serving."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - everything is reported
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise _translate(exc) from exc
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _translate(exc) from exc
    return wrapper


def session_key(request: gr.Request | None) -> str:
    """This page load: the key a Stop button uses to reach its own running job."""
    if request is None:
        return "local"
    user = getattr(request, "username", None)
    return f"user:{user}" if user else f"session:{request.session_hash}"


def owner_key(request: gr.Request | None, visitor: str | None = None, *, shared: bool = False) -> str:
    """Who owns what a job makes (adapters, ratings, outputs).

    A logged-in user owns their work under their name. On a private instance (the default:
    one person on their own machine) everything belongs to "local", so a restart shows it all
    again. On a shared instance (a Space, or --multi-user) each browser is its own owner: the
    `visitor` id kept in the browser's localStorage (ctx.visitor), else the page session;
    nobody sees another visitor's work unless it is published."""
    user = getattr(request, "username", None) if request is not None else None
    if user:
        return f"user:{user}"
    if not shared:
        return "local"
    if visitor:
        return f"visitor:{visitor}"
    return session_key(request)


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
    try:
        for ev in events:
            if isinstance(ev, TrainStep):
                history.append(row(ev, history))
                line = f"**{ev.message}** · lr {ev.lr:.1e} · {ev.seconds:.2f} s/step"
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
                yield "\n\n".join(notes + [status_text(ev)]), gr.skip(), gr.skip(), gr.skip()
            elif isinstance(ev, Result):
                message, info = finish(ev)
                yield "\n\n".join(notes + [message]), plot(history), shown[:24], info
    except Cancelled:
        yield "\n\n".join(notes + [stopped]), plot(history) if history else gr.skip(), shown[:24], gr.skip()
