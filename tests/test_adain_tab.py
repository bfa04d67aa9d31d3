"""The AdaIN tab's handlers, called directly (no server), in tiny mode on CPU."""
import argparse
import re
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core import adain_runs
from tabs import adain as tab_mod
from tabs.common import AppContext
from tests.tabkit import example_inputs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ctx(tmp_path):
    from core.engine import Engine

    # a real engine (its GPU slot and Stop registry), never loaded: AdaIN has its own network
    engine = Engine("tiny", device="cpu", data_dir=tmp_path / "data")
    return AppContext(engine=engine, data_dir=tmp_path / "data", args=argparse.Namespace())


@pytest.fixture
def tab(ctx):
    return tab_mod.AdaINTab(ctx)


def save_image(path: Path, seed: int, size=(48, 40)) -> str:
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def request():
    return SimpleNamespace(username=None, session_hash="test-session")


def test_transfer_handler_styles_a_batch(tab, tmp_path):
    contents = [save_image(tmp_path / "a.png", 0), save_image(tmp_path / "b.jpg", 1, (30, 60))]
    styles = [save_image(tmp_path / "s1.png", 2), save_image(tmp_path / "s2.png", 3)]
    outs = list(tab.transfer(contents, styles, "0.7, 0.3", 0.8, True, False, None, 64,
                             tab_mod.DEFAULT_DECODER, None))
    images, info = outs[-1]
    assert [im.size for im in images] == [(64, 56), (32, 64)]
    assert info.startswith("Done: 2 image(s)")


def test_bad_upload_gives_gr_error(tab, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"\x89PNG but truncated")
    style = save_image(tmp_path / "s.png", 2)
    with pytest.raises(gr.Error, match="content image 1 could not be read"):
        list(tab.transfer([str(bad)], [style], "", 1.0, False, False, None, 64, "built-in", None))
    with pytest.raises(gr.Error, match="holiday.png"):
        tab.preview([str(bad)])
    with pytest.raises(gr.Error, match="at least one style"):
        list(tab.transfer([style], None, "", 1.0, False, False, None, 64, "built-in", None))
    with pytest.raises(gr.Error, match="one weight per style"):
        list(tab.transfer([style], [style], "1, 2", 1.0, False, False, None, 64, "built-in", None))
    with pytest.raises(gr.Error, match="numbers separated by commas"):
        list(tab.transfer([style], [style], "a lot", 1.0, False, False, None, 64, "built-in", None))
    with pytest.raises(gr.Error, match="Output size must be from 16 to 1024"):
        list(tab.transfer([style], [style], "", 1.0, False, False, None, 4096, "built-in"))
    with pytest.raises(gr.Error, match="nothing is painted"):
        list(tab.transfer([style], [style], "", 1.0, False, True,
                          {"background": None, "layers": [], "composite": None}, 64, "built-in", None))


def test_regions_from_editor_layers():
    layer = np.zeros((20, 30, 4), dtype=np.uint8)
    layer[:, :10, 3] = 255  # painted left third
    masks = tab_mod.masks_from_editor({"background": None, "layers": [layer], "composite": None}, 2)
    assert len(masks) == 2
    assert masks[0][:, :10].all() and not masks[0][:, 10:].any()
    assert masks[1][:, 10:].all() and not masks[1][:, :10].any()  # unpainted -> next style
    with pytest.raises(Exception, match="only 1 style"):
        tab_mod.masks_from_editor({"layers": [layer, layer]}, 1)
    # an empty first layer keeps the numbering: layer 2 is still style 2
    empty = np.zeros_like(layer)
    masks = tab_mod.masks_from_editor({"layers": [empty, layer, empty]}, 3)
    assert not masks[0].any() and masks[1][:, :10].all() and masks[2][:, 10:].all()


def test_region_transfer_runs(tab, tmp_path):
    content = save_image(tmp_path / "c.png", 0, (64, 64))
    styles = [save_image(tmp_path / "s1.png", 1), save_image(tmp_path / "s2.png", 2)]
    layer = np.zeros((64, 64, 4), dtype=np.uint8)
    layer[:32, :, 3] = 255
    images, info = list(tab.transfer([content], styles, "", 1.0, False, True,
                                  {"background": None, "layers": [layer], "composite": None},
                                  64, "built-in", None))[-1]
    assert images[0].size == (64, 64)
    assert info.endswith("Regions: style 1 50%, style 2 50%")


def test_webcam_handler_reports_fps(tab, tmp_path):
    style = save_image(tmp_path / "s.png", 2)
    frame = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    state = {}
    for _ in range(3):
        img, text, state = tab.webcam(frame, [style], "", 1.0, 64, "built-in", state, None)
    assert img.size == (64, 48)
    assert "FPS" in text and "model" in text and len(state["times"]) == 3
    assert tab.webcam(None, [style], "", 1.0, 64, "built-in", {}, None)[0] is None
    with pytest.raises(gr.Error, match="style image"):
        tab.webcam(frame, None, "", 1.0, 64, "built-in", {}, None)


def test_train_panel_streams_and_stops(tab, tmp_path):
    contents = [save_image(tmp_path / f"c{i}.png", i, (48, 48)) for i in range(3)]
    styles = [save_image(tmp_path / f"s{i}.png", 10 + i, (48, 48)) for i in range(2)]
    gen = tab.train(contents, styles, "", "", "myrun", 50, 2, 40, 32, 2, 3, True, None, request())
    first = next(gen)
    second = next(gen)
    frame, samples, status, _ = second
    assert isinstance(frame, pd.DataFrame) and set(frame["term"]) == {"total", "content", "style"}
    assert not isinstance(first[0], pd.DataFrame)  # no empty frame (the plot would break)
    assert len(first[1]) == 3  # the first samples, before training
    assert pd.api.types.is_numeric_dtype(frame["value"]) and frame["step"].dtype == "int64"
    assert len(samples) == 3 and "step 2/50" in status  # sample_every=2: new samples
    while not re.search(r"step ([4-9]|\d\d)/50", status):  # past the first checkpoint (step 3)
        _, _, status, _ = next(gen)
    assert tab.stop(request()).startswith("Stopping")
    *_, last = gen
    frame, samples, status, dropdown = last
    stopped_at = re.match(r"Stopped at step (\d+);", status)  # the job runs on while the page reads
    assert stopped_at and 2 <= int(stopped_at.group(1)) < 50, status
    assert dropdown["choices"] == ["built-in", "myrun"] and dropdown["value"] == "myrun"
    run = adain_runs.runs_root(tab.ctx.data_dir) / "myrun"
    assert (run / "decoder.safetensors").is_file() and (run / "checkpoint.safetensors").is_file()
    assert tab.stop(request()) == "Nothing is running."
    assert tab_mod.AdaINTab(tab.ctx).refresh_decoders("gone", None)["choices"] == ["built-in", "myrun"]
    # the trained decoder is usable in the transfer panel
    images, _ = list(tab.transfer(contents[:1], styles[:1], "", 1.0, False, False, None, 32,
                                  "myrun", None))[-1]
    assert images[0].size == (32, 32)
    with pytest.raises(gr.Error, match="was not found"):
        list(tab.transfer(contents[:1], styles[:1], "", 1.0, False, False, None, 32, "nope", None))
    with pytest.raises(gr.Error, match="not a decoder name"):
        list(tab.transfer(contents[:1], styles[:1], "", 1.0, False, False, None, 32, "../../x", None))


def test_train_panel_bad_input(tab, tmp_path):
    with pytest.raises(gr.Error, match="Upload content images"):
        list(tab.train(None, None, "", "", "r", 5, 2, 40, 32, 2, 3, True, None, request()))
    bad = tmp_path / "x.png"
    bad.write_bytes(b"nope")
    with pytest.raises(gr.Error, match="content image 1"):
        list(tab.train([str(bad)], [str(bad)], "", "", "r", 5, 2, 40, 32, 2, 3, True, None, request()))
    with pytest.raises(gr.Error, match="run name"):
        list(tab.train(None, None, "", "", "../escape", 5, 2, 40, 32, 2, 3, True, None, request()))


def test_build_registers_the_adain_endpoint(ctx):
    with gr.Blocks() as demo:
        with gr.Tab(tab_mod.TITLE):
            tab = tab_mod.build(ctx)
    assert isinstance(tab, tab_mod.AdaINTab)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"adain", "adain_webcam", "adain_train", "adain_stop"} <= names
    stream = next(fn for fn in demo.fns.values() if fn.api_name == "adain_webcam")
    transfer = next(fn for fn in demo.fns.values() if fn.api_name == "adain")
    # frames in a queue group of their own: a backlog of frames never keeps a transfer waiting
    assert transfer.concurrency_id == "gpu" and stream.concurrency_id == "webcam"
    assert stream.concurrency_limit == 2
    # tiny mode starts from the tiny preset (a run in well under a minute), not the paper's recipe
    values = {b.label: b.value for b in demo.blocks.values() if isinstance(b, gr.Number)}
    preset = adain_runs.TINY_PRESET
    assert (values["Steps"], values["Batch"], values["Resize shorter side to"], values["Random crop"],
            values["Samples every N steps"], values["Checkpoint every N steps"]) == \
        (preset.steps, preset.batch_size, preset.resize, preset.crop, preset.sample_every, preset.save_every)
    # at least 40x less pixel work than the old defaults (200 steps of 8 crops of 256 px: 15-25 min)
    assert preset.steps * preset.batch_size * preset.crop ** 2 * 40 < 200 * 8 * 256 ** 2


def test_weights_choice(tmp_path, monkeypatch):
    """The tab hands the app's --adain-weights to core (the order of the choices is tested in
    tests/test_adain_runs.py)."""
    monkeypatch.delenv("STUDIO_ADAIN_WEIGHTS", raising=False)

    def make(family, offline, **args):
        engine = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32, family=family,
                                 offline=offline)
        return tab_mod.AdaINTab(AppContext(engine, tmp_path, argparse.Namespace(**args)))

    assert make("tiny", True).tiny and not make("sdxl", False).tiny
    with pytest.raises(tab_mod.UserError, match="'/w' not found"):  # the flag's folder is what it loads
        make("sdxl", False, adain_weights="/w").model()
    full = make("sdxl-arch", True)  # offline full-size family: the paper's network, random
    assert full.model().width == 1.0


def test_loss_curve_is_thinned():
    hist = [{"step": i, "loss": 1.0, "loss_c": 0.5, "loss_s": 0.05} for i in range(1, 2001)]
    frame = tab_mod.loss_frame(hist, max_points=100)
    steps = sorted(set(frame["step"]))
    assert len(steps) <= 100 and steps[-1] == 2000


def test_stop_before_the_first_step_saves_nothing(tab, tmp_path):
    from core.jobs import Job

    contents = [save_image(tmp_path / "c.png", 0, (48, 48))]
    slot, other = tab.ctx.engine.gpu_lock, Job("someone-else", "generate")
    slot.acquire(other)  # another job holds the accelerator: this run waits in line
    try:
        gen = tab.train(contents, contents, "", "", "early", 50, 2, 40, 32, 2, 3, True, None, request())
        assert "Waiting for the accelerator" in next(gen)[2]
        tab.stop(request())
        *_, last = gen
    finally:
        slot.release(other)
    assert last[2] == "Stopped before the first step; nothing was saved."
    assert tab.decoder_choices() == ["built-in"]


def test_server_folders_are_refused_unless_allowed(tab, tmp_path):
    """Nothing reads a server path typed by a user, unless the operator started the app with
    --allow-server-paths."""
    secret = tmp_path / "secret-folder"
    secret.mkdir()
    with pytest.raises(gr.Error, match="--allow-server-paths"):
        list(tab.train(None, None, str(secret), str(secret), "r", 5, 2, 40, 32, 2, 3, True, None, request()))
    assert not (adain_runs.runs_root(tab.ctx.data_dir) / "r").exists()


def test_shared_instance_keeps_visitors_decoders_apart(tmp_path):
    """On a shared instance (a Space, --multi-user) a decoder belongs to the visitor who trained
    it: only their list shows it, only they can use it, and another visitor's run of the same
    name is a separate run in a separate folder (no resuming or overwriting someone else's)."""
    from core import identity
    from core.engine import Engine

    engine = Engine("tiny", device="cpu", data_dir=tmp_path / "data")
    ctx = AppContext(engine=engine, data_dir=tmp_path / "data",
                     args=argparse.Namespace(multi_user=True))
    assert ctx.shared
    visitor_a, visitor_b = identity.issue(ctx.data_dir), identity.issue(ctx.data_dir)
    tab = tab_mod.AdaINTab(ctx)
    req_a = SimpleNamespace(username=None, session_hash="session-a")
    req_b = SimpleNamespace(username=None, session_hash="session-b")
    contents = [save_image(tmp_path / f"c{i}.png", i, (40, 40)) for i in range(2)]
    styles = [save_image(tmp_path / "s.png", 9, (40, 40))]

    def train(visitor, req):
        return list(tab.train(contents, styles, "", "", "mine", 2, 2, 40, 32, 2, 2, True,
                              visitor, req))

    *_, last = train(visitor_a, req_a)
    assert last[2].startswith("Finished at step 2")
    assert last[3]["choices"] == ["built-in", "mine"]
    owner_a = ctx.owner(req_a, visitor_a)
    run_a = adain_runs.runs_for(ctx.data_dir, owner=owner_a) / "mine"
    decoder_a = run_a / "decoder.safetensors"
    assert decoder_a.is_file() and run_a.parent.parent == adain_runs.runs_root(ctx.data_dir)
    # the owner folder is hashed, path-safe, and no run name can take it
    assert re.fullmatch(r"_visitor-[0-9a-f]{24}", run_a.parent.name)  # a keyed digest, never the id itself
    assert not (adain_runs.runs_root(ctx.data_dir) / "mine").exists()
    before = decoder_a.read_bytes()

    # A lists and uses the decoder; B (and the private instance's "local") does not see it
    assert tab.refresh_decoders(None, visitor_a, req_a)["choices"] == ["built-in", "mine"]
    assert tab.refresh_decoders("mine", visitor_b, req_b) == gr.update(
        choices=["built-in"], value="built-in")
    assert tab.decoder_choices() == ["built-in"]
    images, _ = list(tab.transfer(contents[:1], styles, "", 1.0, False, False, None, 32, "mine",
                                  visitor_a, request=req_a))[-1]
    assert images[0].size == (32, 32)
    with pytest.raises(gr.Error, match="'mine' was not found among your decoders"):
        list(tab.transfer(contents[:1], styles, "", 1.0, False, False, None, 32, "mine",
                          visitor_b, request=req_b))
    with pytest.raises(tab_mod.UserError, match="not found"):
        tab.model("mine", ctx.owner(req_b, visitor_b))
    frame = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(gr.Error, match="not found"):
        tab.webcam(frame, styles, "", 1.0, 32, "mine", {}, visitor_b, req_b)

    # B's run of the same name starts afresh in B's own folder; A's run is untouched
    events = train(visitor_b, req_b)
    assert "resumed" not in events[0][2]
    assert events[-1][2].startswith("Finished at step 2")
    run_b = adain_runs.runs_for(ctx.data_dir, owner=ctx.owner(req_b, visitor_b)) / "mine"
    assert run_b != run_a and (run_b / "decoder.safetensors").is_file()
    assert decoder_a.read_bytes() == before
    assert tab.decoder_choices(owner_a) == ["built-in", "mine"]
    # the same visitor on another page (a reload) still owns the decoder
    req_a2 = SimpleNamespace(username=None, session_hash="session-a2")
    assert tab.refresh_decoders(None, visitor_a, req_a2)["choices"] == ["built-in", "mine"]


def train_kwargs(contents, styles, **over):
    kw = dict(content_files=contents, style_files=styles, content_dir="", style_dir="", run_name="early",
              steps=50, batch_size=2, resize=40, crop=32, sample_every=1, save_every=1000, resume=True)
    kw.update(over)
    return kw


def test_a_stop_before_the_first_checkpoint_keeps_nothing(tab, tmp_path):
    """Stopped at step 1 of a run that checkpoints every 1000 steps: no decoder is added to the
    list, nothing is written in the run folder but the staged images, and the status says so."""
    images = [save_image(tmp_path / f"c{i}.png", i, (48, 48)) for i in range(2)]
    gen = tab.train(**train_kwargs(images, images[:1]), visitor=None, request=request())
    for _, _, status, _ in gen:
        if re.search(r"step \d+/50", status):
            break
    assert tab.stop(request()).startswith("Stopping")
    *_, (_, samples, status, dropdown) = gen
    assert re.match(r"Stopped at step \d+, before the first checkpoint; nothing was saved", status), status
    assert dropdown == gr.update() and len(samples) == 3  # the list is left as it was
    assert tab.decoder_choices() == ["built-in"]
    run = adain_runs.runs_root(tab.ctx.data_dir) / "early"
    assert sorted(p.name for p in run.iterdir()) == ["content", "style"]


def test_the_time_limit_keeps_the_run_to_resume(tab, tmp_path):
    """A job stopped by the instance's time limit (not by the user) keeps its state, even before
    the first checkpoint: the next job resumes it."""
    from core.jobs import JobLimits

    images = [save_image(tmp_path / f"c{i}.png", i, (48, 48)) for i in range(2)]
    tab.engine.limits = JobLimits(time_limit_s=1.5)
    *_, (_, _, status, dropdown) = tab.train(**train_kwargs(images, images, steps=100_000, sample_every=5),
                                             visitor=None, request=request())
    stopped_at = re.search(r"Stopped at step (\d+); decoder saved as run 'early'", status)
    assert status.startswith("**") and "1.5 seconds" in status.split("\n\n")[0], status
    assert stopped_at and int(stopped_at.group(1)) >= 1 and dropdown["choices"] == ["built-in", "early"]
    tab.engine.limits = None
    first, *_ = tab.train(**train_kwargs(images, images, steps=int(stopped_at.group(1)) + 1),
                          visitor=None, request=request())
    assert f"resumed at step {stopped_at.group(1)}" in first[2]


def test_a_stop_while_a_transfer_waits_for_the_accelerator(tab, tmp_path):
    from core.jobs import Job

    image = save_image(tmp_path / "c.png", 0)
    slot, other = tab.engine.gpu_lock, Job("someone-else", "generate")
    slot.acquire(other)
    try:
        gen = tab.transfer(content_files=[image], style_files=[image], weights_text="", alpha=1.0,
                           preserve_color=False, use_regions=False, regions=None, size=64,
                           decoder="built-in", visitor=None, request=request())
        assert "Waiting for the accelerator" in next(gen)[1]
        assert tab.stop(request()).startswith("Stopping")
        *_, last = gen
    finally:
        slot.release(other)
    assert last == (gr.skip(), "Stopped.")
    assert tab.stop(request()) == "Nothing is running."


# --------------------------------------------------------------------------- a newcomer's first run (issue 16)

def test_examples_fill_the_uploads_and_stylize_runs_from_them(ctx, tab):
    """Each Example fills the two uploads with our own images (assets/examples); the first one,
    Stylized with the page's defaults, gives one image per content image."""
    from tabs.common import example

    with gr.Blocks() as demo:
        tab_mod.build(ctx)
    assert example_inputs(demo, "adain-examples") == ["adain-contents", "adain-styles"]
    assert example_inputs(demo, "adain-train-examples")[:2] == ["adain-contents-train",
                                                                                    "adain-styles-train"]
    contents, styles = tab_mod.EXAMPLES[0]
    assert (contents, styles) == (["content-house.png"], ["style-waves.png"])
    images, info = list(tab.transfer([example(n) for n in contents], [example(n) for n in styles], "", 1.0, False,
                                     False, None, 128, tab_mod.DEFAULT_DECODER, None))[-1]
    assert len(images) == 1 and max(images[0].size) == 128 and info.startswith("Done: 1 image(s)")


def test_the_page_says_how_long_training_takes(ctx):
    with gr.Blocks() as demo:
        tab_mod.build(ctx)
    text = " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))
    assert "half a minute on a 2-core CPU" in text          # tiny mode: the measured figure
    assert "About this method" in {b.label for b in demo.blocks.values() if isinstance(b, gr.Accordion)}
    assert "an estimate" in tab_mod.PAPER_TIME               # the paper's recipe: labelled as an estimate


def test_the_loss_plot_spans_the_run_from_zero(ctx, tab):
    """A run stopped at step 1 has readable axes (issue 16 item 9): steps from 0 to the run's
    last, loss from 0; the page's plot starts with the tiny preset's step count."""
    assert tab.loss_axes(100) == {"x_lim": [0, 100], "y_lim": [0, None]}
    assert tab.loss_axes(None) == {"x_lim": [0, None], "y_lim": [0, None]}
    assert tab.update_loss_axes(7)["x_lim"] == [0, 7]
    with gr.Blocks() as demo:
        tab_mod.build(ctx)
    plot = next(b for b in demo.blocks.values() if isinstance(b, gr.LinePlot))
    assert plot.x_lim == [0, adain_runs.TINY_PRESET.steps] and plot.y_lim == [0, None]
