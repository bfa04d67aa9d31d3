"""The B-LoRA Mix tab: its handlers called directly (no server) on a tiny engine of this module,
then the launched app (`python app.py --model tiny`): gradio_client on the `blora_train` /
`blora_generate` endpoints, and headless Chromium as a user would."""
from __future__ import annotations

import io
import math
import re
import time
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from core import blora, identity
from tabs.blora import CUSTOM, BLoRATab
from tests.browserkit import set_number, wait_for_text
from tests.tabkit import assert_readable_loss_axes, example_inputs, fake_request, last, make_ctx

from .conftest import screenshot, start_app

STYLE_TRANSFER = "Image style transfer"


def picture_file(path, kind: int):
    rng = np.random.default_rng(kind)
    a = np.zeros((96, 80, 3)) + ((200, 40, 40) if kind == 0 else (40, 160, 60))
    a[20:60, 20:60] = (240, 220, 40) if kind == 0 else (250, 250, 250)
    Image.fromarray(np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)).save(path)
    return str(path)


def colored_pixels(png: bytes) -> int:
    """Strongly coloured pixels (plot lines; the axes, grid and text are grey)."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    return int(((a.max(-1) - a.min(-1)) > 80).sum())


# --------------------------------------------------------------------------- handlers, called directly

def train_kwargs(files, steps=2, **over):
    kw = dict(files=files, trigger="", name="", joint=False, steps=steps, learning_rate=3e-3, rank=4,
              sample_every=0, checkpoint_every=0, gradient_checkpointing=False, seed=0, resume=True)
    kw.update(over)
    return kw


def generate_kwargs(**over):
    kw = dict(use=STYLE_TRANSFER, content=None, content_weight=1.0, style=None, style_weight=1.0, prompts="",
              seed=0, steps=2, guidance=5.0)
    kw.update(over)
    return kw


@pytest.fixture(scope="module")
def tab(engine, tmp_path_factory):
    return BLoRATab(make_ctx(engine, tmp_path_factory.mktemp("blora-tab")))


@pytest.fixture(scope="module")
def trained(tab, tmp_path_factory):
    """Two B-LoRAs (one per picture) trained through the handler, with every update it streamed."""
    folder = tmp_path_factory.mktemp("blora-pictures")
    files = [picture_file(folder / f"img{i}.png", i) for i in range(2)]
    final, updates = last(tab.train(**train_kwargs(files), request=fake_request()))
    return dict(final=final, updates=updates, ids=[str(a["adapter_id"]) for a in final[3]["adapters"]],
                files=files)


def test_train_streams_the_curve_and_saves_one_b_lora_per_image(trained):
    status, plot, samples, info = trained["final"]
    assert trained["updates"][0] == ("**Starting**", None, [], None)
    notes, closing = status.split("\n\n")[:-1], status.split("\n\n")[-1]
    assert notes == ["B-LoRA 1 of 2: [v1]", "B-LoRA 2 of 2: [v2]"]     # the notes stay above the last line
    assert closing.startswith("**Done.** Saved ") and closing.count("trigger `") == 2
    made = info["adapters"]
    assert len(made) == 2 and all(a["parts"] == {"content": 32, "style": 32} for a in made)
    assert [a["trigger"] for a in made] == ["[v1]", "[v2]"]
    assert all(math.isfinite(a["loss_before"]) and math.isfinite(a["loss_after"]) for a in made)
    assert isinstance(plot, pd.DataFrame) and list(plot["step"]) == [1, 2]   # the last picture's curve
    assert samples and all(isinstance(im, Image.Image) and cap.startswith("step ") for im, cap in samples)
    lines = [u[0] for u in trained["updates"] if isinstance(u[0], str)]
    assert any("**Training step 2/2: loss " in line for line in lines)
    # the run as the page keeps it reads back as the typed result
    run = blora.BLoRATraining.from_info(info)
    assert [str(a.adapter_id) for a in run.adapters] == trained["ids"] and run.as_info() == info


def test_the_library_lists_thumbnails_and_keeps_only_valid_picks(tab, trained):
    a, b = trained["ids"]
    thumbs, ids, content, style = tab.library(content=None, style=None, request=fake_request())
    # newest first (other tests of the module may have trained more B-LoRAs on the same library)
    assert ids == sorted(ids, key=int, reverse=True) and [i for i in ids if i in (a, b)] == [b, a]
    assert [cap for _, cap in thumbs] == [label for label, _ in content["choices"]]
    assert all(isinstance(im, Image.Image) and max(im.size) <= 256 for im, _ in thumbs)
    assert [val for _, val in content["choices"]] == ids and content["value"] is None
    _, _, content, style = tab.library(content="999999", style=a, request=fake_request())
    assert content["value"] is None and style["value"] == a               # a gone entry is cleared


def test_after_a_run_the_newest_fills_the_empty_pickers(tab, trained):
    a, b = trained["ids"]
    info = trained["final"][3]
    _, _, content, style = tab.after_train(info=info, content=None, style=None, request=fake_request())
    assert content["value"] == b and style["value"] == b
    _, _, content, style = tab.after_train(info=info, content=a, style=None, request=fake_request())
    assert content["value"] == a and style["value"] == b
    _, _, content, style = tab.after_train(info=None, content=None, style=None, request=fake_request())
    assert content["value"] is None and style["value"] is None


def test_generate_mixes_the_two_halves_and_a_use_button_takes_its_own_prompts(tab, trained):
    a, b = trained["ids"]
    triggers = {str(m["adapter_id"]): m["trigger"] for m in trained["final"][3]["adapters"]}
    (gallery, status, used), _ = last(tab.generate(**generate_kwargs(content=a, style=b, style_weight=0.5),
                                                   request=fake_request()))
    assert status == f"**Done.** {STYLE_TRANSFER}: content #{a} × 1, style #{b} × 0.5."
    assert [(h["part"], str(h["adapter_id"]), h["weight"]) for h in used["halves"]] == [
        ("content", a, 1.0), ("style", b, 0.5)]
    assert [cap for _, cap in gallery] == [f"A {triggers[a]} in {triggers[b]} style"]
    use = tab.use_handler("Consistent style")
    kw = generate_kwargs(content=a, style=b, prompts="ignored [s]")
    del kw["use"]
    (gallery, status, used), _ = last(use(**kw, request=fake_request()))
    assert [h["part"] for h in used["halves"]] == ["style"] and len(gallery) == 4
    assert gallery[0][1] == f"A car in {triggers[b]} style"
    (gallery, _, used), _ = last(tab.generate(**generate_kwargs(use=CUSTOM, style=b, prompts="A cat in [s] style\n\n"),
                                              request=fake_request()))
    assert [cap for _, cap in gallery] == [f"A cat in {triggers[b]} style"] and used["use"] == "custom"


@pytest.mark.parametrize("handler, over, field", [
    ("train", dict(steps=0), "Steps"), ("train", dict(learning_rate=math.nan), "Learning rate"),
    ("train", dict(rank=1000), "LoRA rank"), ("train", dict(seed=-1), "Seed"),
    ("train", dict(joint="yes"), "One B-LoRA from all images"), ("train", dict(trigger="x" * 51), "Trigger word"),
    ("train", dict(files=[]), "Upload between 1 and"),
    ("generate", dict(content="abc"), "Content half"), ("generate", dict(style=-3), "Style half"),
    ("generate", dict(style_weight=5), "Style weight"), ("generate", dict(use="Teleport"), "Use"),
    ("generate", dict(steps=0), "Steps"), ("generate", dict(guidance="lots"), "Guidance"),
    ("generate", dict(use=STYLE_TRANSFER, content=None, style=None), "needs a content B-LoRA"),
    ("generate", dict(candidates=0), r"Candidates \(best of N\)"),
    ("generate", dict(candidates=9), r"Candidates \(best of N\)"),
    ("generate", dict(candidates=2.5), r"Candidates \(best of N\)"),
    ("generate", dict(preference=1.5), "Preference"), ("generate", dict(preference="style"), "Preference"),
    ("generate", dict(preference=math.inf), "Preference"),
])
def test_bad_values_are_refused_naming_the_field(tab, trained, handler, over, field):
    kwargs = train_kwargs(**{"files": trained["files"], **over}) if handler == "train" else generate_kwargs(**over)
    with pytest.raises(gr.Error, match=field):
        list(getattr(tab, handler)(**kwargs, request=fake_request()))
    assert tab.engine.jobs.running() == []


def test_best_of_n_shows_candidates_best_first_and_a_picked_seed_regenerates_it(tab, trained):
    """Issue 18: N candidates ranked (CLIP text, DINO to the content and style images), best first
    with their seed and scores; a click on one puts its seed in the Seed box with N = 1, and
    Generate then gives that image again (8-bit images, a batch of 3 against one alone)."""
    a, b = trained["ids"]
    kw = generate_kwargs(content=a, style=b, seed=30)
    (gallery, status, used), _ = last(tab.generate(**kw, candidates=3, preference=0.75, request=fake_request()))
    assert "Best of 3 (preference 0.75" in status and len(gallery) == 3
    ranking = used["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3] and sorted(r["seed"] for r in ranking) == [30, 31, 32]
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
    for (_, caption), r in zip(gallery, ranking):
        assert caption.startswith(f"{used['prompts'][0]} — #{r['rank']} · seed {r['seed']} · text ")
        assert " · content " in caption and " · style " in caption and " · score " in caption
    assert tab.use_seed(used, SimpleNamespace(index=1)) == (ranking[1]["seed"], 1)
    for info, evt in ((used, None), (used, SimpleNamespace(index=3)), (None, SimpleNamespace(index=0)),
                      ({"ranking": []}, SimpleNamespace(index=0))):
        assert tab.use_seed(info, evt) == (gr.skip(), gr.skip())
    seed, n = tab.use_seed(used, SimpleNamespace(index=1))
    (again, _, used_again), _ = last(tab.generate(**{**kw, "seed": seed}, candidates=n, request=fake_request()))
    assert used_again["ranking"] == [] and len(again) == 1
    assert np.allclose(np.asarray(again[0][0], dtype=np.float64), np.asarray(gallery[1][0], dtype=np.float64),
                       atol=2.0)
    (same, _, _), _ = last(tab.generate(**kw, candidates=3, preference=0.75, request=fake_request()))
    assert same[0][1] == gallery[0][1]                                  # the same seed: the same top candidate
    assert np.allclose(np.asarray(same[0][0], dtype=np.float64), np.asarray(gallery[0][0], dtype=np.float64),
                       atol=1.0)


def test_library_pickers_refuse_what_is_not_an_id(tab):
    with pytest.raises(gr.Error, match="Content half"):
        tab.library(content="1; DROP TABLE", style=None, request=fake_request())
    with pytest.raises(gr.Error, match="Style half"):
        tab.after_train(info=None, content=None, style=[1], request=fake_request())


def test_stop_ends_training_with_its_own_last_word(tab, trained):
    mine, other = fake_request("page-a"), fake_request("page-b")
    updates, asked = [], False
    for u in tab.train(**train_kwargs(trained["files"][:1], steps=200, trigger="stopme"), request=mine):
        updates.append(u)
        if isinstance(u[1], pd.DataFrame) and not asked:    # a step's point: the job is training
            tab.stop(other)                         # another page's Stop: no effect
            assert tab.engine.jobs.running()
            tab.stop(mine)
            asked = True
    status, plot, samples, info = updates[-1]
    assert "Stopped" in status and "Resume" in status
    assert isinstance(plot, pd.DataFrame) and 1 <= len(plot) < 200     # the curve so far stays
    assert tab.engine.jobs.running() == [] and not tab.engine.gpu_lock.locked()
    labels = [label for label, _ in tab.library(content=None, style=None, request=fake_request())[2]["choices"]]
    assert not any("stopme" in label for label in labels)               # nothing unfinished was listed


def test_stop_ends_generating(tab, trained):
    a, b = trained["ids"]
    updates, asked = [], False
    for u in tab.generate(**generate_kwargs(content=a, style=b, steps=60), request=fake_request("page-g")):
        updates.append(u)
        if isinstance(u[0], list) and not asked:    # a preview: denoising
            tab.stop(fake_request("page-g"))
            asked = True
    gallery, status, used = updates[-1]
    assert "Stopped" in status and "not finished" in status and used == gr.skip()   # no halves-used record
    assert tab.engine.jobs.running() == []


def test_stop_ends_a_best_of_n_run(tab, trained):
    a, b = trained["ids"]
    updates, asked = [], False
    kw = generate_kwargs(content=a, style=b, steps=60, candidates=4)
    for u in tab.generate(**kw, request=fake_request("page-n")):
        updates.append(u)
        if isinstance(u[0], list) and not asked:    # a preview: denoising the four candidates
            assert len(u[0]) == 4
            tab.stop(fake_request("page-n"))
            asked = True
    gallery, status, used = updates[-1]
    assert asked and "Stopped" in status and used == gr.skip()
    assert tab.engine.jobs.running() == [] and not tab.engine.gpu_lock.locked()


def test_each_visitor_sees_and_uses_only_their_own_b_loras(engine, trained, tmp_path):
    data = tmp_path / "shared"
    shared = BLoRATab(make_ctx(engine, data, shared=True, metrics=False))
    carol, dave = identity.issue(data), identity.issue(data)
    (_, _, _, info), _ = last(shared.train(**train_kwargs(trained["files"][:1], steps=1), visitor=carol,
                                           request=fake_request("carol-1")))
    mine = str(info["adapters"][0]["adapter_id"])
    thumbs, ids, _, _ = shared.library(content=None, style=None, visitor=carol, request=fake_request("carol-2"))
    assert ids == [mine] and len(thumbs) == 1                       # a new page of carol's finds it
    assert shared.library(content=None, style=None, visitor=dave, request=fake_request("dave"))[1] == []
    with pytest.raises(gr.Error, match="not found"):
        list(shared.generate(**generate_kwargs(content=mine, style=mine), visitor=dave, request=fake_request("dave")))
    with pytest.raises(gr.Error, match="visitor|token|sign"):
        shared.library(content=None, style=None, visitor="forged", request=fake_request("x"))


def test_a_click_on_a_thumbnail_picks_it_as_the_chosen_half():
    ids = ["7", "3"]
    assert BLoRATab.pick(ids, "content", SimpleNamespace(index=1)) == ("3", gr.skip())
    assert BLoRATab.pick(ids, "style", SimpleNamespace(index=0)) == (gr.skip(), "7")
    for evt in (None, SimpleNamespace(index=2), SimpleNamespace(index=-1), SimpleNamespace(index="0")):
        assert BLoRATab.pick(ids, "content", evt) == (gr.skip(), gr.skip())


def test_presets_fill_the_settings_and_the_plot_spans_the_run(tab):
    for name, preset in blora.PRESETS.items():
        assert tab.apply_preset(name) == (preset["steps"], preset["learning_rate"], preset["rank"],
                                          preset["sample_every"], preset["checkpoint_every"],
                                          preset["gradient_checkpointing"])
    assert tab.apply_preset("no such preset") == tab.apply_preset("Quick test (tiny models)")   # tiny engine
    # both axes from 0, steps up to the run's last: one point alone has readable axes
    assert tab.loss_axes(30) == {"x_lim": [0, 30], "y_lim": [0, None]}
    assert tab.loss_axes("") == {"x_lim": [0, None], "y_lim": [0, None]}
    assert tab.update_loss_axes(1000)["x_lim"] == [0, 1000]


# --------------------------------------------------------------------------- the launched app

def train_args(files, steps=3, **kw):
    a = dict(paths=files, trig="", name_v="", joint_v=False, steps_v=steps, lr_v=3e-3, rank_v=4, sample_every_v=0,
             ckpt_v=0, gc_v=False, seed_v=0, resume_v=True, visitor_v="alice")
    a.update(kw)
    return list(a.values())


@pytest.fixture(scope="module")
def client(live_app):
    return Client(live_app.url, verbose=False)


def test_api_train_then_the_four_uses(client, live_app, tmp_path):
    from gradio_client.exceptions import AppError

    files = [handle_file(picture_file(tmp_path / f"img{i}.png", i)) for i in range(2)]
    status, plot, samples, info = client.predict(*train_args(files), api_name="/blora_train")
    assert "Done" in status, status
    made = info["adapters"]
    assert len(made) == 2 and all(a["parts"] == {"content": 32, "style": 32} for a in made)
    assert [r[0] for r in plot["data"]] == [1, 2, 3]  # the last B-LoRA's curve
    assert samples  # samples while training
    thumbs, content, style = client.predict(None, None, "alice", api_name="/blora_library")
    assert len(thumbs) >= 2  # one thumbnail per B-LoRA
    a, b = (str(m["adapter_id"]) for m in made)
    gallery, status, used = client.predict(STYLE_TRANSFER, a, 1.0, b, 0.5, "", 0, 2, 5.0, "alice",
                                           api_name="/blora_generate")
    assert len(gallery) == 1 and "Done" in status
    assert [(h["part"], str(h["adapter_id"]), h["weight"], h["block"]) for h in used["halves"]] == [
        ("content", a, 1.0, "up_blocks.0.attentions.0"), ("style", b, 0.5, "up_blocks.0.attentions.1")]
    trig = {str(m["adapter_id"]): m["trigger"] for m in made}
    assert used["prompts"] == [f"A {trig[a]} in {trig[b]} style"]
    for use, parts, n in (("Text-based stylization", ["content"], 4), ("Consistent style", ["style"], 4),
                          ("Style-content mixing", ["content", "style"], 1)):
        gallery, _, used = client.predict(use, a, 1.0, b, 1.0, "", 0, 2, 5.0, "alice", api_name="/blora_generate")
        assert [h["part"] for h in used["halves"]] == parts and len(gallery) == n
    # custom prompts, the style half alone
    gallery, _, used = client.predict("Custom prompts", None, 1.0, b, 1.0, "A cat in [s] style\nA tree in [s] style",
                                      0, 2, 5.0, "alice", api_name="/blora_generate")
    assert len(gallery) == 2 and used["prompts"][0] == f"A cat in {trig[b]} style"
    with pytest.raises(AppError, match="needs a style B-LoRA"):
        client.predict(STYLE_TRANSFER, a, 1.0, None, 1.0, "", 0, 2, 5.0, "alice", api_name="/blora_generate")
    with pytest.raises(AppError, match="Upload between 1 and"):
        client.predict(*train_args([]), api_name="/blora_train")
    assert live_app.alive()


def test_shared_instance_keeps_each_visitors_b_loras(tmp_path_factory, tmp_path):
    """--multi-user: a B-LoRA belongs to the visitor id that trained it (kept in the browser, so
    a reload finds it), not to the page session; another visitor neither lists nor uses it."""
    from gradio_client.exceptions import AppError

    app = start_app(tmp_path_factory.mktemp("blora-shared"), "--multi-user")
    try:
        files = [handle_file(picture_file(tmp_path / "img.png", 0))]
        carol, dave = (Client(app.url, verbose=False).predict(api_name="/visitor") for _ in range(2))
        _, _, _, info = Client(app.url, verbose=False).predict(*train_args(files, steps=1, visitor_v=carol),
                                                               api_name="/blora_train")
        aid = str(info["adapters"][0]["adapter_id"])
        later = Client(app.url, verbose=False)  # carol again, from a new page session
        thumbs, _, _ = later.predict(None, None, carol, api_name="/blora_library")
        assert len(thumbs) == 1
        _, status, _ = later.predict(STYLE_TRANSFER, aid, 1.0, aid, 1.0, "", 0, 2, 5.0, carol,
                                     api_name="/blora_generate")
        assert "Done" in status
        thumbs, _, _ = Client(app.url, verbose=False).predict(None, None, dave, api_name="/blora_library")
        assert not thumbs
        with pytest.raises(AppError, match="not found|not in the list of choices"):
            Client(app.url, verbose=False).predict(STYLE_TRANSFER, aid, 1.0, aid, 1.0, "", 0, 2, 5.0, dave,
                                                   api_name="/blora_generate")
        assert app.alive()
    finally:
        app.stop()


@pytest.mark.browser
def test_browser_train_pick_and_transfer(live_app, page, tmp_path):
    page.goto(live_app.url)
    page.get_by_role("tab", name="B-LoRA Mix").click()
    page.locator("#bl-files input[type=file]").set_input_files(
        [picture_file(tmp_path / "a.png", 0), picture_file(tmp_path / "b.png", 1)])
    page.wait_for_function("() => document.querySelectorAll('#bl-crops img').length >= 2", timeout=60_000)
    page.get_by_text("Training settings").click()
    for elem, value in (("#bl-steps", "4"), ("#bl-sample-every", "2")):
        box = page.locator(f"{elem} input")
        box.fill(value)
        box.press("Tab")
    page.locator("#bl-train").click()
    wait_for_text(page, "#bl-status", "Done")
    assert page.locator("#bl-samples img").count() >= 1
    # the loss curves are drawn, not just the axes: coloured pixels in the plot
    deadline = time.monotonic() + 15
    while colored_pixels(page.locator("#bl-loss").screenshot()) < 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert colored_pixels(page.locator("#bl-loss").screenshot()) >= 200
    page.wait_for_function("() => document.querySelectorAll('#bl-library img').length >= 2", timeout=30_000)
    # pick the newest as content, the other as style, from the gallery
    page.locator("#bl-library .thumbnail-item").nth(0).click()
    page.locator("#bl-pick-as label", has_text="style").click()
    page.locator("#bl-library .thumbnail-item").nth(1).click()
    page.wait_for_function(
        "() => document.querySelector('#bl-content input').value.startsWith('#')"
        " && document.querySelector('#bl-style input').value.startsWith('#')"
        " && document.querySelector('#bl-content input').value !== document.querySelector('#bl-style input').value",
        timeout=15_000)
    assert "Linear" in page.locator("#bl-content-w").inner_text()
    assert "linearly" in page.locator("#bl-weight-note").inner_text()
    assert "No negative prompt" in page.locator("#bl-negative-note").inner_text()
    page.locator("#bl-use-0").click()  # Image style transfer, one click
    wait_for_text(page, "#bl-gen-status", "Done", timeout=60_000)
    assert page.locator("#bl-gallery img").count() >= 1
    assert "content #" in page.locator("#bl-gen-status").inner_text()
    screenshot(page, "blora-mix")
    # best of 3 (issue 18): candidates best first, captioned with seed and scores; a click uses one's seed
    set_number(page, "bl-candidates", 3)
    page.locator("#bl-use-0").click()
    wait_for_text(page, "#bl-gen-status", "Best of 3", timeout=60_000)
    assert page.locator("#bl-gallery .thumbnail-item").count() == 3
    caption = page.locator("#bl-gallery").inner_text()
    assert "#1 · seed " in caption and "score " in caption, caption
    seeds = re.findall(r"#\d · seed (\d+)", caption)                     # in the gallery's order
    page.locator("#bl-gallery .thumbnail-item").nth(1).click()
    page.wait_for_function("() => document.querySelector('#bl-candidates input[type=number]').value === '1'",
                           timeout=15_000)
    page.get_by_text("Sampling: seed, steps, guidance").click()
    seed = page.locator("#bl-seed input").input_value()
    assert sorted(seeds) == ["0", "1", "2"] and seed == seeds[1], (seed, seeds)   # the one clicked
    screenshot(page, "blora-best-of-n")


@pytest.mark.browser
def test_browser_a_run_stopped_at_its_first_step_has_a_readable_plot(live_app, page, tmp_path):
    """Issue 16 item 9: one point alone used to give each axis an empty range, drawn as a lone
    "1.000000" tick; the axes now run from 0 (steps up to the run's last)."""
    page.goto(live_app.url)
    page.get_by_role("tab", name="B-LoRA Mix").click()
    page.locator("#bl-files input[type=file]").set_input_files([picture_file(tmp_path / "one.png", 0)])
    page.wait_for_function("() => document.querySelectorAll('#bl-crops img').length >= 1", timeout=60_000)
    page.get_by_text("Training settings").click()
    box = page.locator("#bl-steps input")
    box.fill("1")
    box.press("Tab")
    page.locator("#bl-train").click()
    wait_for_text(page, "#bl-status", "Done")
    assert_readable_loss_axes(page, "#bl-loss")


# --------------------------------------------------------------------------- a newcomer's first run (issue 16)

def test_the_example_trains_a_content_and_a_style_b_lora(tab):
    """The Example fills the uploads with the cat (content) and the mosaic (style); Train makes
    one B-LoRA of each (the tiny preset, shortened here); each preset says how long it takes."""
    from tabs import blora as blora_tab
    from tabs.common import example

    with gr.Blocks() as demo:
        BLoRATab(tab.ctx).build()
    assert example_inputs(demo, "bl-examples") == ["bl-files"]
    (files,) = blora_tab.EXAMPLES[0]
    assert files == ["content-cat.png", "style-mosaic.png"]
    status, _, _, info = last(tab.train(**train_kwargs([example(n) for n in files]), request=fake_request()))[0]
    assert status.split("\n\n")[-1].startswith("**Done.**") and len(info["adapters"]) == 2
    for name in blora.PRESETS:
        note = tab.describe_preset(name)
        assert note.startswith("<small>Takes ") and ("(measured)" in note) == (name == "Quick test (tiny models)")
        assert "(measured)" in note or "estimate" in note
    assert tab.describe_preset("no such preset") == "" and tab.describe_preset(None) == ""
