"""Best of N in StyleDrop's candidate grid (issue 18, core.styledrop.grid_order): each content
prompt's samples are its N candidates, shown best first by (1 - p) n(CLIP text score) + p n(DINO
similarity to the style image), p the round's preference. The order against that formula
recomputed here in float64 from the stored images with core.metrics.Metrics called directly and
by hand on made-up scores; each candidate's kept seed regenerates it; ratings stay with their
candidate (by id) in any order; bad input refused naming the field."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from core import styledrop
from core.errors import UserError
from core.metrics import Metrics
from core.train import TrainSettings
from tabs.styledrop import StyleDropTab
from tests.browserkit import set_number, wait_for_text
from tests.tabkit import as_array, fake_request, final, make_ctx
from tests.test_ranking import expected_scores
from tests.test_styledrop import style_image

pytestmark = pytest.mark.usefixtures("one_thread")

OWNER = "local"  # the owner of everything on a private instance (the tab's caller too)
FIELD = "Grid order: prompt ↔ style"


@pytest.fixture(scope="module")
def metrics():
    return Metrics(tiny=True)


def new_round(engine, metrics, *, contents=("a cat", "a tree"), samples=3, seed=10):
    loop = styledrop.create_loop(engine, [style_image(2)], owner=OWNER, content_description="a gradient square",
                                 style_descriptor="glow gradient")
    out = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=3, learning_rate=5e-2), owner=OWNER,
                                      contents=list(contents), samples_per_prompt=samples, seed=seed, sample_steps=2,
                                      guidance=5.0, metrics=metrics))
    return out.info


@pytest.fixture(scope="module")
def rnd(engine, metrics):
    """A round whose grid is 3 samples of "a cat" and 3 of "a tree", grid seed 10."""
    return new_round(engine, metrics)


@pytest.fixture
def preference(engine, rnd):
    """Set the round's preference in a test; the default again afterwards."""
    def set_to(p):
        styledrop.set_order(engine, rnd["round_id"], owner=OWNER, preference=p)
    yield set_to
    set_to(styledrop.DEFAULT_PREFERENCE)


def by_prompt(tiles) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in tiles:
        out.setdefault(t.content, []).append(t)
    return out


# --------------------------------------------------------------------------- the order

def cand(i, prompt, text, style, seed=None):
    scores = {} if text is None else {"clip_text": text, "clip_style": 0.0, "dino_style": style}
    return SimpleNamespace(id=100 + i, position=i, prompt=prompt, seed=seed if seed is not None else i, scores=scores)


def test_grid_order_by_hand():
    """Made-up scores: n(text) = [0, 1, 0.5], n(style) = [1, 0, 0.5]; p = 0.25 gives
    0.75 n(text) + 0.25 n(style) = [0.25, 0.75, 0.5] (order 1, 2, 0), p = 0.75 gives
    [0.75, 0.25, 0.5] (order 0, 2, 1); prompts stay in the grid's order."""
    cands = [cand(0, "b", 0.1, 0.9), cand(1, "b", 0.3, 0.1), cand(2, "b", 0.2, 0.5), cand(3, "a", 0.5, 0.5)]
    shown = styledrop.grid_order(list(reversed(cands)), 0.25)
    assert [c.id for c, _ in shown] == [101, 102, 100, 103]
    assert [r.rank for _, r in shown] == [1, 2, 3, 1]
    assert np.allclose([r.score for _, r in shown[:3]], [0.75, 0.5, 0.25])
    assert [c.id for c, _ in styledrop.grid_order(cands, 0.75)][:3] == [100, 102, 101]
    assert [c.id for c, _ in styledrop.grid_order(cands, 0.0)][:3] == [101, 102, 100]   # text alone


def test_unscored_candidates_keep_their_stored_order():
    cands = [cand(0, "a", None, None), cand(1, "a", None, None), cand(2, "b", 0.2, 0.1), cand(3, "b", 0.1, 0.9)]
    shown = styledrop.grid_order(cands, 0.75)   # prompt b: 0.25 n(text) + 0.75 n(style) = [0.25, 0.75]
    assert [(c.id, r) for c, r in shown[:2]] == [(100, None), (101, None)]
    assert [c.id for c, _ in shown[2:]] == [103, 102]
    assert [c.id for c, _ in styledrop.grid_order(cands, 0.5)[2:]] == [102, 103]   # a tie keeps the stored order


def test_the_grid_order_equals_a_recomputation_from_the_stored_images(engine, metrics, rnd, preference):
    for p in (0.3, 0.9):
        preference(p)
        view = styledrop.round_view(engine, rnd["round_id"], OWNER)
        assert view["preference"] == p
        groups = by_prompt(view["tiles"])
        assert list(groups) == ["a cat", "a tree"]                       # prompts in the grid's order
        for content, tiles in groups.items():
            images = [Image.open(t.path).convert("RGB") for t in tiles]
            text = metrics.clip_text_scores(images, [content] * len(images))
            style = metrics.dino_similarity(images, [style_image(2)])
            want = expected_scores(text, None, style, p, text_weight=1 - p)
            assert all(a >= b - 1e-9 for a, b in zip(want, want[1:])), (p, want)   # best first
            assert np.allclose([t.score for t in tiles], want, atol=1e-5)
            assert np.allclose([t.dino_style for t in tiles], style, atol=1e-4)
            assert [t.rank for t in tiles] == [1, 2, 3] and sorted(t.seed for t in tiles) == [10, 11, 12]


def test_each_candidates_seed_regenerates_it(engine, metrics):
    """A candidate's kept seed, one sample of its prompt: the same image (8-bit, within 2/255)."""
    info = new_round(engine, metrics, contents=("a cat",), samples=3, seed=30)
    tiles = styledrop.round_view(engine, info["round_id"], OWNER)["tiles"]
    assert sorted(t.seed for t in tiles) == [30, 31, 32] and tiles[0].rank == 1
    for t in tiles:
        again = final(styledrop.generate_candidates(engine, info["round_id"], owner=OWNER, contents=["a cat"],
                                                    samples_per_prompt=1, seed=t.seed, sample_steps=2, guidance=5.0))
        assert np.abs(as_array(again.images[0]) - as_array(Image.open(t.path).convert("RGB"))).max() <= 2.0, t


def test_a_new_round_keeps_the_loops_order(engine, metrics, rnd, preference):
    preference(0.8)
    store = styledrop.store_of(engine)
    loop_id = store.get_round(rnd["round_id"], OWNER).loop_id
    ids = [t.id for t in styledrop.round_view(engine, rnd["round_id"], OWNER)["tiles"]]
    styledrop.rate(engine, ids[0], OWNER, 1)
    try:
        info = final(styledrop.train_round(engine, loop_id, TrainSettings(steps=1, learning_rate=1e-2), owner=OWNER,
                                           contents=["a cat"], sample_steps=1, metrics=metrics)).info
        assert styledrop.round_view(engine, info["round_id"], OWNER)["preference"] == 0.8
    finally:
        styledrop.rate(engine, ids[0], OWNER, 0)


def test_bad_orders_are_refused(engine, rnd):
    for p in (-0.1, 1.5, float("nan"), "0.5", None):
        with pytest.raises(UserError, match=FIELD):
            styledrop.set_order(engine, rnd["round_id"], owner=OWNER, preference=p)
    with pytest.raises(UserError, match="not found"):                 # someone else's unshared loop
        styledrop.set_order(engine, rnd["round_id"], owner="bob", preference=0.5)
    store = styledrop.store_of(engine)
    loop_id = store.get_round(rnd["round_id"], OWNER).loop_id
    styledrop.set_published(engine, loop_id, OWNER, True)
    try:
        with pytest.raises(UserError, match="Only the loop's owner"):  # a rater may not reorder it
            styledrop.set_order(engine, rnd["round_id"], owner="bob", preference=0.5)
    finally:
        styledrop.set_published(engine, loop_id, OWNER, False)


# --------------------------------------------------------------------------- the tab

@pytest.fixture(scope="module")
def tab(engine, tmp_path_factory):
    return StyleDropTab(make_ctx(engine, tmp_path_factory.mktemp("sd-best-of")))


def test_the_tab_orders_the_grid_and_ratings_stay_with_their_image(tab, rnd, preference):
    """The grid after a reorder: tiles best first with place, seed and scores; a thumb on the
    first tile (its id, as the page sends it) lands on the candidate whose image that tile shows."""
    store = styledrop.store_of(tab.engine)
    loop_id, round_id = str(store.get_round(rnd["round_id"], OWNER).loop_id), str(rnd["round_id"])
    try:
        for p in (0.0, 1.0):
            counts, grid = tab.order(round=round_id, preference=p, request=fake_request())
            assert f"grid order {p:g}" in counts and "best first" in counts
            tiles = grid["tiles"]
            assert [t["ranking"].split(" · ")[0] for t in tiles] == ["#1", "#2", "#3"] * 2
            assert all(" · seed 1" in t["ranking"] and " · DINO " in t["ranking"] for t in tiles)
            first = tiles[0]
            counts, grid, _ = tab.rate_from_grid(loop=loop_id, round=round_id,
                                                 evt=gr.EventData(None, {"candidate": first["id"], "rating": 1}),
                                                 request=fake_request())
            rated = [c for c in store.candidates(rnd["round_id"], OWNER)
                     if store.my_ratings(rnd["round_id"], OWNER).get(c.id) == 1]
            assert len(rated) == 1 and styledrop.tile_thumbnail(rated[0].path) == first["src"]
            shown = next(t for t in grid["tiles"] if t["id"] == first["id"])
            assert shown["mine_up"] and shown["src"] == first["src"]
            styledrop.rate(tab.engine, rated[0].id, OWNER, 0)
    finally:
        for c in store.candidates(rnd["round_id"], OWNER):
            styledrop.rate(tab.engine, c.id, OWNER, 0)


@pytest.mark.parametrize("over, field", [
    (dict(preference=1.5), FIELD), (dict(preference="style"), FIELD), (dict(preference=float("inf")), FIELD),
    (dict(round=None), "Pick a round"), (dict(round="1; DROP TABLE"), "Round"),
])
def test_bad_values_are_refused_naming_the_field(tab, rnd, over, field):
    kw = dict(round=str(rnd["round_id"]), preference=0.5, **{})
    kw.update(over)
    with pytest.raises(gr.Error, match=field):
        tab.order(**kw, request=fake_request())


# --------------------------------------------------------------------------- in the browser

@pytest.mark.browser
def test_browser_the_grid_best_first_and_a_thumb_stays_with_its_image(live_app, page, tmp_path):
    """A round of 3 samples of one prompt trained through the API; on the page: the grid shows
    them best first with place and seed; the order slider reorders them; a thumbs up on the
    first tile stays on that image (by id) whatever the order."""
    from gradio_client import Client, handle_file

    from .conftest import screenshot

    path = tmp_path / "style.png"
    style_image(2).save(path)
    status, *_ = Client(live_app.url, verbose=False).predict(
        None, [handle_file(str(path))], "a gradient", "best of glow", "best of glow", 2, 1e-2, 4, False, 0, "a cat",
        3, 2, 5.0, 0, None, api_name="/styledrop_train")
    assert "Done: round 1" in status
    page.goto(live_app.url)
    page.get_by_role("tab", name="StyleDrop Loop").click()
    page.wait_for_function("() => document.querySelectorAll('#sd-grid .sd-rank').length === 3", timeout=60_000)
    assert "best of glow" in page.locator("#sd-loop input").input_value()
    ranks = page.locator("#sd-grid .sd-rank").all_inner_texts()
    assert [r.split(" · ")[0] for r in ranks] == ["#1", "#2", "#3"], ranks
    assert sorted(r.split(" · seed ")[1].split(" ")[0] for r in ranks) == ["0", "1", "2"], ranks
    set_number(page, "sd-order", 1)
    wait_for_text(page, "#sd-counts", "grid order 1:", timeout=30_000)
    first = page.locator("#sd-grid .sd-tile").nth(0)
    cid, src = first.get_attribute("data-id"), first.locator("img").get_attribute("src")
    first.locator("button.sd-up").click()
    wait_for_text(page, "#sd-counts", "liked (net ≥ 1): 1", timeout=30_000, show=("#sd-status",))
    liked = page.locator("#sd-grid .sd-mine-up")
    assert liked.count() == 1 and liked.get_attribute("data-id") == cid
    assert liked.locator("img").get_attribute("src") == src
    set_number(page, "sd-order", 0)
    wait_for_text(page, "#sd-counts", "grid order 0:", timeout=30_000, show=("#sd-status",))
    liked = page.locator("#sd-grid .sd-mine-up")
    assert liked.count() == 1 and liked.get_attribute("data-id") == cid
    assert liked.locator("img").get_attribute("src") == src
    screenshot(page, "styledrop-grid-best-first")
