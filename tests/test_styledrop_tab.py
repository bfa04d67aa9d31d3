"""The StyleDrop Loop tab's handlers, called directly (no server) on a tiny engine of the module's
own, on a shared instance with two visitors; and the core functions the tab reads."""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import math
import os

import gradio as gr
import pandas as pd
import pytest
import torch
from PIL import Image

from core import identity, library, styledrop
from core.events import Result
from tabs.styledrop import NO_LOOP, RATERS_PER_LOOP, StyleDropTab
from tests.tabkit import fake_request, last, make_ctx
from tests.test_styledrop import style_image

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = "a cat\na tree\na boat"
# the tiny UNet's transformer blocks: the width d (ff.net.2's out_features) of each, by hand
# from its config (8 blocks of 64, feed-forward 4 d = 256)
TINY_BLOCK_WIDTHS = [64] * 8


@pytest.fixture(scope="module")
def setup(engine, tmp_path_factory):
    """A shared instance: the tab, two visitors' tokens and pages, and a style image file."""
    data_dir = tmp_path_factory.mktemp("styledrop-tab")
    tab = StyleDropTab(make_ctx(engine, data_dir, shared=True))
    style = data_dir / "style.png"
    style_image().save(style)
    return dict(tab=tab, alice=identity.issue(data_dir), bob=identity.issue(data_dir), style=str(style),
                alice_page=fake_request("page-alice", "10.0.0.1"), bob_page=fake_request("page-bob", "10.0.0.2"))


def train_kw(setup, loop=None, *, who="alice", prompts=PROMPTS, steps=3, **over):
    kw = dict(loop=loop, style_files=[setup["style"]] if loop is None else [], content="a gradient", style="neon",
              name="", steps=steps, learning_rate=1e-2, rank=4, gradient_checkpointing=False, seed=0,
              prompts=prompts, samples_per_prompt=1, sample_steps=2, guidance=5.0, grid_seed=0,
              visitor=setup[who], request=setup[f"{who}_page"])
    kw.update(over)
    return kw


@pytest.fixture(scope="module")
def round1(setup):
    """Alice's loop with round 1 trained (3 candidates), through the tab."""
    final, updates = last(setup["tab"].train(**train_kw(setup)))
    return dict(final=final, updates=updates, info=final[-1])


def view_of(updates):
    """The loop view (loop, round, publish, counts, grid, rounds) of a handler's 6 view outputs."""
    loop, rnd, publish, counts, grid, rounds = updates
    return dict(loop=loop, round=rnd, publish=publish, counts=counts, grid=grid, rounds=rounds)


def tile_ids(grid):
    return [t["id"] for t in grid["tiles"]]


# ------------------------------------------------------------------ rounds

def test_a_new_loop_streams_its_loss_then_shows_round_1(setup, round1):
    status, plot, *view, info = round1["final"]
    assert "Done: round 1" in status and "4,096 trained parameters" in status and "3 candidates" in status
    assert info["round"] == 1 and info["trained_on"] == {"style_images": 1, "liked_candidates": []}
    assert info["trainable_params"] == sum(2 * 4 * d for d in TINY_BLOCK_WIDTHS) == 4096
    assert isinstance(plot, pd.DataFrame) and list(plot["step"]) == [1, 2, 3]
    assert all(math.isfinite(x) for x in plot["loss"])
    v = view_of(view)
    assert v["loop"]["value"] == str(info["loop_id"]) and v["round"]["value"] == str(info["round_id"])
    assert v["round"]["choices"] == [("Round 1", str(info["round_id"]))]
    assert [t["content"] for t in v["grid"]["tiles"]] == ["a cat", "a tree", "a boat"]
    assert "**Round 1** · 3 candidates" in v["counts"] and "your ratings: 0" in v["counts"]
    assert "| 1 |" in v["rounds"] and "1 style + 0 liked" in v["rounds"]
    first = round1["updates"][0]
    assert first[0] == "**Starting**" and first[1] is None   # no empty frame: the plot's domain stays free
    steps = [u[0] for u in round1["updates"] if isinstance(u[0], str) and "lr " in u[0]]
    assert steps and "s/step" in steps[-1]


def test_tiles_are_small_jpegs_and_the_text_is_escaped(setup, round1):
    grid = view_of(round1["final"][2:8])["grid"]
    for t in grid["tiles"]:
        assert t["src"].startswith("data:image/jpeg;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(t["src"].split(",", 1)[1])))
        assert im.format == "JPEG" and max(im.size) <= styledrop.TILE_SIDE
        assert t["prompt"] == f"{t['content']} in neon style"
    evil = "${x}<b>"
    carol = identity.issue(setup["tab"].ctx.data_dir)
    _, updates = last(setup["tab"].train(**train_kw(setup, prompts=evil, steps=1, visitor=carol)))
    shown = updates[-1][6]["tiles"][0]
    assert "<" not in shown["content"] and "${" not in shown["content"] and "&lt;b&gt;" in shown["content"]


def test_the_next_round_trains_on_the_liked_candidates(setup, round1):
    tab, info = setup["tab"], round1["info"]
    ids = tile_ids(view_of(round1["final"][2:8])["grid"])
    tab.rate(candidate=ids[0], rating=1, visitor=setup["alice"], request=setup["alice_page"])
    # what the round's ratings like now, by the store (other tests of the module may have liked more)
    alice = tab.caller(setup["alice_page"], setup["alice"]).owner
    liked = sorted(c.id for c in styledrop.store_of(tab.engine).liked(info["round_id"], alice))
    assert ids[0] in liked
    status, plot, *view, info2 = last(tab.train(**train_kw(setup, loop=str(info["loop_id"]), steps=2)))[0]
    assert "Done: round 2" in status and f"1 style + {len(liked)} liked" in status
    assert info2["round"] == 2 and sorted(info2["trained_on"]["liked_candidates"]) == liked
    assert info2["adapter_id"] != info["adapter_id"] and list(plot["step"]) == [1, 2]
    v = view_of(view)
    assert [c[0] for c in v["round"]["choices"]][:2] == ["Round 1", "Round 2"]
    assert f"1 style + {len(liked)} liked" in v["rounds"] and "| 2 |" in v["rounds"]


def test_more_candidates_for_a_round(setup, round1):
    tab, info = setup["tab"], round1["info"]
    before = len(tab.round_parts(info["round_id"], tab.caller(setup["alice_page"], setup["alice"]).owner)[1]["tiles"])
    (status, *view), _ = last(tab.generate(loop=str(info["loop_id"]), round=str(info["round_id"]), prompts="a fish",
                                           samples_per_prompt=2, sample_steps=2, guidance=5.0, grid_seed=7,
                                           visitor=setup["alice"], request=setup["alice_page"]))
    assert status.endswith("**Done.** 2 more candidates in round 1.")
    grid = view_of(view)["grid"]
    assert len(grid["tiles"]) == before + 2 and [t["content"] for t in grid["tiles"][-2:]] == ["a fish"] * 2


# ------------------------------------------------------------------ feedback

def test_ratings_from_the_grid_toggle_and_count(setup, round1):
    tab, info = setup["tab"], round1["info"]
    loop, rnd = str(info["loop_id"]), str(info["round_id"])
    cid = tile_ids(view_of(round1["final"][2:8])["grid"])[1]

    def click(rating):
        evt = gr.EventData(None, {"candidate": cid, "rating": rating})
        return tab.rate_from_grid(loop=loop, round=rnd, visitor=setup["alice"], evt=evt,
                                  request=setup["alice_page"])

    counts, grid, rounds = click(-1)
    tile = next(t for t in grid["tiles"] if t["id"] == cid)
    assert (tile["mine"], tile["mine_down"], tile["down"]) == (-1, True, 1)
    # the round's line counts every tile's thumbs (other tests of the module may have rated others)
    assert f"thumbs down {sum(t['down'] for t in grid['tiles'])}" in counts
    counts, grid, _ = click(0)   # withdrawn
    tile = next(t for t in grid["tiles"] if t["id"] == cid)
    assert (tile["mine"], tile["down"]) == (0, 0)
    assert "Rounds side by side" in rounds
    with pytest.raises(gr.Error, match="Rating"):
        tab.rate_from_grid(loop=loop, round=rnd, visitor=setup["alice"],
                           evt=gr.EventData(None, {"candidate": cid, "rating": 5}), request=setup["alice_page"])


def test_clip_feedback_picks_the_best_by_style_score(setup, round1):
    tab, info = setup["tab"], round1["info"]
    view = view_of(tab.clip_feedback(loop=str(info["loop_id"]), round=str(info["round_id"]), mode="top_k", k=1,
                                     threshold=0.5, text_weight=0.0, per_prompt=False, visitor=setup["alice"],
                                     request=setup["alice_page"]))
    tiles = view["grid"]["tiles"]
    style_of = {t["id"]: float(t["scores"].split("style ")[1]) for t in tiles}
    assert [t["id"] for t in tiles if t["clip"]] == [max(style_of, key=style_of.get)]
    assert "CLIP picked 1" in view["counts"] and "top 1" in view["counts"] and "w = 0.00" in view["counts"]


def test_owners_are_kept_apart_and_raters_are_limited(setup, round1):
    """A visitor of this test's own (a fresh token from an address no other test uses): other tests
    in the module give Bob loops and ratings of his own, which must not change what this one sees."""
    tab, info = setup["tab"], round1["info"]
    loop = str(info["loop_id"])
    cid = tile_ids(view_of(round1["final"][2:8])["grid"])[2]
    bob, bob_page = identity.issue(tab.ctx.data_dir), fake_request("page-carol", "10.0.0.3")
    v = view_of(tab.page_load(rank=4, visitor=bob, request=bob_page)[:6])
    assert v["loop"]["value"] is None and v["grid"]["message"] == NO_LOOP   # a private loop: not Bob's to see
    with pytest.raises(gr.Error, match="not found"):
        tab.rate(candidate=cid, rating=1, visitor=bob, request=bob_page)
    raters = []
    try:
        v = view_of(tab.publish(loop=loop, shared=True, visitor=setup["alice"], request=setup["alice_page"]))
        assert v["publish"]["value"] is True and v["publish"]["interactive"] is True
        v = view_of(tab.show_loop(loop=loop, visitor=bob, request=bob_page))
        assert v["publish"]["interactive"] is False and "shared by its owner" in v["rounds"]
        assert tab.publish(loop=loop, shared=False, visitor=bob, request=bob_page)[2]["value"] is True  # not his
        votes = tab.rate(candidate=cid, rating=1, visitor=bob, request=bob_page)
        assert (votes["up"], votes["mine"], votes["candidate"]) == (1, 1, cid)
        with pytest.raises(gr.Error, match="owner"):
            list(tab.train(**train_kw(setup, loop=loop, visitor=bob, request=bob_page)))
        # more visitor tokens from Bob's address than RATERS_PER_LOOP: refused, his own still counts
        for _ in range(RATERS_PER_LOOP - 1):
            raters.append(identity.issue(tab.ctx.data_dir))
            tab.rate(candidate=cid, rating=1, visitor=raters[-1], request=bob_page)
        with pytest.raises(gr.Error, match=f"{RATERS_PER_LOOP} visitors"):
            tab.rate(candidate=cid, rating=1, visitor=identity.issue(tab.ctx.data_dir), request=bob_page)
        assert tab.rate(candidate=cid, rating=-1, visitor=bob, request=bob_page)["mine"] == -1
    finally:  # the module's loop as it was: no votes of this test's, private again
        for who in (bob, *raters):
            with contextlib.suppress(gr.Error):  # (refused where the loop was never shared)
                tab.rate(candidate=cid, rating=0, visitor=who, request=bob_page)
        tab.publish(loop=loop, shared=False, visitor=setup["alice"], request=setup["alice_page"])


def test_page_load_shows_the_loop_where_it_was(setup, round1):
    tab = setup["tab"]
    out = tab.page_load(rank=4, visitor=setup["alice"], request=fake_request("a-new-page", "10.0.0.1"))
    v, params, c_style, c_subject = view_of(out[:6]), out[6], out[7], out[8]
    assert v["loop"]["value"] == str(round1["info"]["loop_id"])
    assert "4,096 trained parameters" in params and "8 transformer blocks" in params
    assert str(round1["info"]["adapter_id"]) in [c[1] for c in c_style["choices"]]
    assert c_subject["choices"] == []
    shown = view_of(tab.show_round(loop=v["loop"]["value"], round=str(round1["info"]["round_id"]),
                                   visitor=setup["alice"], request=setup["alice_page"]))
    assert shown["counts"].startswith("**Round 1**")


def test_style_and_subject_generate_with_the_rounds_adapter(setup, round1):
    tab, info = setup["tab"], round1["info"]
    (gallery, status), _ = last(tab.combine(style_adapter=str(info["adapter_id"]), style_weight=1.0,
                                            subject_adapter=None, subject_weight=1.0, prompts="a dog in neon style",
                                            seed=3, sample_steps=2, guidance=5.0, visitor=setup["alice"],
                                            request=setup["alice_page"]))
    assert len(gallery) == 1 and gallery[0][1] == "a dog in neon style"
    assert status.endswith(f"**Done.** Adapters: #{info['adapter_id']} × 1.")
    assert tab.combine_prompt(style_adapter=str(info["adapter_id"]), subject_adapter=None,
                              visitor=setup["alice"], request=setup["alice_page"]) == gr.skip()


# ------------------------------------------------------------------ inputs, Stop, small views

@pytest.mark.parametrize("over, field", [
    (dict(steps=0), "Steps"), (dict(learning_rate=math.nan), "Learning rate"), (dict(rank=129), "Adapter rank"),
    (dict(seed=-1), "Training seed"), (dict(grid_seed=-1), "Grid seed"), (dict(grid_seed=None), "Grid seed"),
    (dict(loop="new"), "Feedback loop"), (dict(samples_per_prompt=17), "Samples per prompt"),
    (dict(gradient_checkpointing="yes"), "Gradient checkpointing"), (dict(name="x" * 101), "Loop name"),
    (dict(style_files=[]), "Upload a style image"),
])
def test_bad_training_values_are_refused_naming_the_field(setup, over, field):
    loops_before = len(setup["tab"].loop_choices(setup["tab"].caller(setup["bob_page"], setup["bob"]).owner))
    with pytest.raises(gr.Error, match=field):
        list(setup["tab"].train(**train_kw(setup, who="bob", **over)))
    assert setup["tab"].engine.jobs.running() == []
    assert len(setup["tab"].loop_choices(setup["tab"].caller(setup["bob_page"], setup["bob"]).owner)) == loops_before


def test_bad_values_of_the_other_handlers_name_the_field(setup):
    tab, kw = setup["tab"], dict(visitor=setup["alice"], request=setup["alice_page"])
    with pytest.raises(gr.Error, match="Round"):
        list(tab.generate(loop=None, round="r1", prompts="a cat", samples_per_prompt=1, sample_steps=2,
                          guidance=5.0, grid_seed=0, **kw))
    with pytest.raises(gr.Error, match="Pick a round"):
        list(tab.generate(loop=None, round=None, prompts="a cat", samples_per_prompt=1, sample_steps=2,
                          guidance=5.0, grid_seed=0, **kw))
    with pytest.raises(gr.Error, match="candidate id"):
        tab.rate(candidate="1; drop", rating=1, **kw)
    with pytest.raises(gr.Error, match=r"k \(best k\)"):
        tab.clip_feedback(loop=None, round="1", mode="top_k", k=0, threshold=0.5, text_weight=0.5,
                          per_prompt=False, **kw)
    with pytest.raises(gr.Error, match="CLIP feedback picks"):
        tab.clip_feedback(loop=None, round="1", mode="best", k=1, threshold=0.5, text_weight=0.5,
                          per_prompt=False, **kw)
    with pytest.raises(gr.Error, match="Seed"):
        list(tab.combine(style_adapter="1", style_weight=1.0, subject_adapter=None, subject_weight=1.0,
                         prompts="a dog", seed=-1, sample_steps=2, guidance=5.0, **kw))
    with pytest.raises(gr.Error, match="Style weight"):
        list(tab.combine(style_adapter="1", style_weight=3.0, subject_adapter=None, subject_weight=1.0,
                         prompts="a dog", seed=0, sample_steps=2, guidance=5.0, **kw))
    with pytest.raises(gr.Error, match="Shared for rating"):
        tab.publish(loop="1", shared="maybe", **kw)
    with pytest.raises(gr.Error, match="Feedback loop"):
        tab.show_loop(loop="#1", **kw)


def test_stop_keeps_no_half_made_loop(setup):
    tab = setup["tab"]
    page, other = fake_request("stop-page", "10.0.0.9"), fake_request("other-page", "10.0.0.9")
    token = identity.issue(tab.ctx.data_dir)
    kw = train_kw(setup, steps=60, visitor=token, request=page)
    updates = []
    for u in tab.train(**kw):
        updates.append(u)
        if isinstance(u[0], str) and "lr " in u[0]:   # a training step: the job runs
            tab.stop(other)                            # another page's Stop: no effect
            assert tab.engine.jobs.running()
            tab.stop(page)
    stopped = [u for u in updates if isinstance(u[0], str) and "Stopped" in u[0]]
    assert stopped and "last finished round stays" in stopped[-1][0]
    assert not isinstance(updates[-1][0], str)        # the last update only redraws the loop view
    assert view_of(updates[-1][2:8])["grid"]["message"] == NO_LOOP  # the new loop is gone
    owner = tab.caller(page, token).owner
    assert styledrop.store_of(tab.engine).list_loops(owner) == []
    assert tab.engine.jobs.running() == [] and not tab.engine.gpu_lock.locked()
    trained = [u for u in updates if isinstance(u[0], str) and "lr " in u[0]]
    assert 1 <= len(trained) < 60


def test_small_views(setup, tmp_path):
    tab = setup["tab"]
    assert tab.describe("a cat", "oil") == "Training text: **a cat in oil style**"
    assert tab.describe("a cat", " ").startswith("**Warning:**")
    assert tab.describe("a *cat*", "oil") == "Training text: **a \\*cat\\* in oil style**"
    assert tab.params_text("x").startswith("**Warning:**") and "Adapter rank r" in tab.params_text("x")
    assert "2,048 trained parameters" in tab.params_text(2) and "8 transformer blocks" in tab.params_text(2)
    preset = tab.apply_preset("SD 1.5 (400 steps)")
    assert preset[:7] == (400, 1e-4, 4, False, 1, 30, 7.0) and "4,096 trained parameters" in preset[7]
    assert tab.apply_preset(None)[0] == styledrop.PRESETS[tab.default_preset]["steps"]
    shown = tab.show_style([setup["style"]])
    assert [im.size for im in shown] == [(64, 64)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="style image"):
        tab.show_style([str(bad)])


# ------------------------------------------------------------------ core functions the tab reads

def test_round_outcome_is_typed_and_info_keeps_the_api_keys(round1):
    info = round1["info"]
    assert set(info) == {"loop_id", "round_id", "round", "adapter_id", "adapter_name", "trainable_params",
                         "lora_numbers", "loss_before", "loss_after", "metrics", "trained_on", "seconds"}
    outcome = styledrop.RoundOutcome(**{**{k: info[k] for k in info if k != "trained_on"},
                                        "style_images": 1, "liked_candidates": ()})
    assert outcome.info() == info
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.round = 2
    assert styledrop.round_outcome(styledrop.RoundResult(outcome=outcome)) is outcome
    with pytest.raises(TypeError):
        styledrop.round_outcome(Result())


def test_tile_thumbnail_is_cached_by_file_version(tmp_path):
    path = tmp_path / "c.png"
    Image.new("RGB", (300, 150), (200, 10, 10)).save(path)
    first = styledrop.tile_thumbnail(path)
    im = Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1])))
    assert im.size == (256, 128) and abs(im.getpixel((10, 10))[0] - 200) <= 8
    assert styledrop.tile_thumbnail(path) is first
    Image.new("RGB", (20, 20), (0, 0, 200)).save(path)
    os.utime(path, (1, 1))
    again = styledrop.tile_thumbnail(path)
    assert Image.open(io.BytesIO(base64.b64decode(again.split(",", 1)[1]))).size == (20, 20)
    assert styledrop.tile_thumbnail(tmp_path / "gone.png") == ""


def test_adapter_size_by_hand_and_none_before_loading(engine, tmp_path):
    from core.engine import Engine

    size = styledrop.adapter_size(engine, 3)
    assert size.blocks == len(TINY_BLOCK_WIDTHS)
    assert size.trainable_params == sum(2 * 3 * d for d in TINY_BLOCK_WIDTHS)
    assert size.lora_numbers == sum(3 * (4 * d + d) for d in TINY_BLOCK_WIDTHS)   # d_ff = 4 d
    assert styledrop.adapter_size(Engine("tiny", data_dir=tmp_path), 3) is None


# ------------------------------------------------------------------ issue 17: form, Eq. 4, export, CLIP default

def test_adapter_settings_are_checked_and_default_to_the_papers(setup):
    tab = setup["tab"]
    from tabs.styledrop import DEFAULT_OPTIONS

    assert tab.sampling_options(None) == ("gelu", (1.0, 5.0))  # no State (a REST call): the page's defaults
    assert tab.sampling_options(dict(DEFAULT_OPTIONS)) == ("gelu", (1.0, 5.0))  # the page: Eq. 4, lambda_B = 5
    assert tab.sampling_options({**DEFAULT_OPTIONS, "form": "linear", "adapter_guidance": False}) == ("linear", None)
    assert tab.options_of("linear", True, 2.0, 4.0) == {"form": "linear", "adapter_guidance": True, "lambda_a": 2.0,
                                                         "lambda_b": 4.0}
    with pytest.raises(gr.Error, match="Adapter form"):
        tab.options_of("lora", True, 1.0, 5.0)
    with pytest.raises(gr.Error, match="λ_B"):
        tab.options_of("gelu", True, 1.0, 99.0)
    with pytest.raises(gr.Error, match="λ_A"):
        list(tab.generate(loop=None, round="1", prompts="a cat", samples_per_prompt=1, sample_steps=2, guidance=5.0,
                          grid_seed=0, options={**DEFAULT_OPTIONS, "lambda_a": "x"}, visitor=setup["alice"],
                          request=setup["alice_page"]))


def test_rounds_train_in_the_chosen_form_with_eq4_grids_and_export(setup, round1):
    """Round 1 through the tab is the paper's GELU adapter; a round trained in the linear form
    exports exactly, the GELU one as its linearisation: lora_down = D W2 / 2, lora_up = U (by
    hand from the stored D, U and the UNet's W2); grids by Eq. 4 are added."""
    from safetensors.torch import load_file

    from core.styledrop_adapter import FORM

    tab, store = setup["tab"], styledrop.store_of(setup["tab"].engine)
    info = round1["info"]
    alice = tab.caller(setup["alice_page"], setup["alice"]).owner
    bob = tab.caller(setup["bob_page"], setup["bob"]).owner
    gelu = store.get_adapter(info["adapter_id"], alice)
    assert gelu.extra["adapter_form"] == FORM
    (status, *view), _ = last(tab.generate(loop=str(info["loop_id"]), round=str(info["round_id"]), prompts="a fish",
                                           samples_per_prompt=1, sample_steps=2, guidance=5.0, grid_seed=1,
                                           options={"form": "gelu", "adapter_guidance": True, "lambda_a": 2.0,
                                                    "lambda_b": 5.0}, visitor=setup["alice"],
                                           request=setup["alice_page"]))
    assert "1 more candidates" in status
    path, note = tab.export(round=str(info["round_id"]), visitor=setup["alice"], request=setup["alice_page"])
    assert "Linearised" in note and os.path.exists(path)
    kohya = load_file(path)
    stored = load_file(str(gelu.path))
    unet = tab.engine.pipe.unet
    block = "down_blocks.1.attentions.0.transformer_blocks.0"
    D = stored[f"unet.{block}.ff.styledrop_gelu.lora_A.weight"]
    U = stored[f"unet.{block}.ff.styledrop_gelu.lora_B.weight"]
    W2 = unet.get_submodule(f"{block}.ff.net.2")
    W2 = (W2.get_base_layer() if hasattr(W2, "get_base_layer") else W2).weight.detach().float()
    key = "lora_unet_" + block.replace(".", "_") + "_ff_net_2"
    torch.testing.assert_close(kohya[f"{key}.lora_down.weight"], 0.5 * D @ W2)
    torch.testing.assert_close(kohya[f"{key}.lora_up.weight"], U)
    assert len([k for k in kohya if k.endswith(".lora_down.weight")]) == 8
    with pytest.raises(gr.Error, match="not found"):  # another visitor: not theirs
        tab.export(round=str(info["round_id"]), visitor=setup["bob"], request=setup["bob_page"])
    final, _ = last(tab.train(**train_kw(setup, who="bob", steps=1, prompts="a cat",
                                         options={"form": "linear", "adapter_guidance": False, "lambda_a": 0.0,
                                                  "lambda_b": 5.0})))
    try:
        linear = store.get_adapter(final[-1]["adapter_id"], bob)
        assert linear.extra["adapter_form"] == "linear"
        path, note = tab.export(round=str(final[-1]["round_id"]), visitor=setup["bob"], request=setup["bob_page"])
        assert note.startswith("Exact") and any(k.endswith("ff_net_2.lora_down.weight") for k in load_file(path))
    finally:  # Bob without a loop again (other tests look at his page)
        library.adapters(tab.engine).remove(final[-1]["adapter_id"])
        store.delete_loop(final[-1]["loop_id"], bob, delete_adapters=True)


def test_style_and_subject_by_mixing_predictions(setup, round1):
    from core import dreambooth
    from core.train import TrainSettings, train
    from tests.test_styledrop import last as last_event

    tab, info = setup["tab"], round1["info"]
    alice = tab.caller(setup["alice_page"], setup["alice"]).owner
    recipe = dreambooth.make_recipe(tab.engine, [style_image(3)], identifier="sks", class_noun="dog", prior=False,
                                    rank=4, sample_prompts=[])
    subject = last_event(train(tab.engine, recipe, TrainSettings(steps=1, learning_rate=1e-3), owner=alice))
    try:
        _mix_predictions_through_the_tab(tab, setup, info, subject)
    finally:  # Alice's library as it was: the subject goes (other tests list her adapters)
        library.adapters(tab.engine).remove(subject.info["adapter_id"])
        styledrop.store_of(tab.engine).delete_adapter(subject.info["adapter_id"], alice)


def _mix_predictions_through_the_tab(tab, setup, info, subject):
    from tabs.styledrop import DEFAULT_MIX, DEFAULT_OPTIONS

    kw = dict(style_adapter=str(info["adapter_id"]), style_weight=1.0, subject_adapter=str(subject.info["adapter_id"]),
              subject_weight=1.0, prompts="a sks dog in neon style", seed=3, sample_steps=2, guidance=5.0,
              options=dict(DEFAULT_OPTIONS), visitor=setup["alice"], request=setup["alice_page"])
    assert DEFAULT_MIX == {"mode": "predictions", "gamma": 0.6}  # the page's default: the paper's way
    (gallery, status), _ = last(tab.combine(mix=dict(DEFAULT_MIX), **kw))
    assert len(gallery) == 1 and "predictions mixed, γ = 0.6" in status
    (gallery, status), _ = last(tab.combine(mix={"mode": "weights", "gamma": 0.6}, **kw))
    assert len(gallery) == 1 and status.endswith(f"#{subject.info['adapter_id']} × 1.")
    with pytest.raises(gr.Error, match="Mix"):
        list(tab.combine(mix={"mode": "both", "gamma": 0.6}, **kw))
    (gallery, status), _ = last(tab.combine(mix=dict(DEFAULT_MIX), **{**kw, "subject_adapter": None}))
    assert len(gallery) == 1 and status.endswith(f"Adapters: #{info['adapter_id']} × 1.")  # the style's Eq. 4


def test_the_loss_plot_reads_at_one_step_too(engine, tmp_path):
    """Axes from 0 to the run's steps (a run stopped at step 1 is not a lone '1.000000' tick)."""
    import gradio as gr

    with gr.Blocks():
        tab = StyleDropTab.mount(make_ctx(engine, tmp_path))
    steps = tab.ui.steps.value
    assert tab.ui.loss.x_lim == [0, steps] and tab.ui.loss.y_lim == [0, None]
    assert tab.update_loss_axes(1)["x_lim"] == [0, 1]
    assert tab.update_loss_axes("lots")["x_lim"] == [0, None]     # not a step count: no fixed end
