"""What tab tests share: an app context around an engine, and a stand-in for the request Gradio
passes to a handler. Tab tests build a tab class (`XTab(ctx)`) and call its handlers directly,
with named arguments; no server runs. Also for tests of core jobs: `final` (the Result a job's
events end with) and `as_array` (an image's pixels in float64)."""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core.events import Result
from tabs.common import AppContext


def make_ctx(engine, data_dir: Path | None = None, *, shared: bool = False, metrics: bool = True,
             **args) -> AppContext:
    """An AppContext as app.build_app makes it (`shared`: a multi-user instance)."""
    from core.metrics import Metrics

    data_dir = Path(data_dir or engine.data_dir)
    ns = argparse.Namespace(multi_user=shared, proxy_hops=0, allow_server_paths=False, **args)
    return AppContext(engine=engine, data_dir=data_dir, args=ns,
                      metrics=Metrics(tiny=engine.offline, device=engine.device) if metrics else None)


def fake_request(session: str = "test-session", host: str = "127.0.0.1", username: str | None = None):
    """What a handler reads of a gr.Request: the page session, the client, a login name."""
    return SimpleNamespace(username=username, session_hash=session, client=SimpleNamespace(host=host),
                           headers={})


def last(updates):
    """The last of a streaming handler's updates (and all of them)."""
    updates = list(updates)
    assert updates, "the handler yielded nothing"
    return updates[-1], updates


def final(events) -> Result:
    """The Result a core job's events end with (failing when they end with anything else)."""
    seen = list(events)
    assert seen and isinstance(seen[-1], Result), seen[-1:] or "no events"
    return seen[-1]


def as_array(img) -> np.ndarray:
    """An image's pixels, float64 (0..255)."""
    return np.asarray(img, dtype=np.float64)


def example_inputs(demo, elem_id: str) -> list[str]:
    """The elem_ids of the inputs a click on the gr.Examples with this elem_id fills."""
    import gradio as gr

    dataset = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataset) and b.elem_id == elem_id)
    fn = next(f for f in demo.fns.values() if any(t[0] == dataset._id for t in f.targets))
    return [o.elem_id for o in fn.outputs]


def assert_readable_loss_axes(page, selector: str) -> None:
    """A loss plot after a one-step run (issue 16 item 9): no lone "1.000000" tick (one point
    alone gives each axis an empty range); both axes from 0, with a range."""
    page.wait_for_selector(f"{selector} svg text", timeout=30_000)
    labels = page.eval_on_selector_all(f"{selector} svg text", "els => els.map(e => e.textContent)")
    assert "1.000000" not in labels and "step" in labels and "loss" in labels
    ticks = [float(t) for t in labels if t.replace(".", "", 1).isdigit()]
    assert min(ticks) == 0 and 1 in ticks and len(ticks) >= 4
