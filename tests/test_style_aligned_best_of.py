"""Best of N Style-Aligned sets (issue 18): N sets in one batch, each with its own reference and
sharing group, ranked by the paper's two measures; checked against Metrics called directly and
the formula written out here, and against the ordinary run with the best set's seed."""
from __future__ import annotations

import numpy as np
import pytest

from core import ranking
from core.errors import UserError
from core.metrics import Metrics
from core.style_aligned import SharingOptions, candidate_seeds, style_aligned_set
from tests.tabkit import final
from tests.browserkit import set_number, wait_for_text

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a cat", "a tree", "a boat"]


@pytest.fixture(scope="module")
def metrics():
    return Metrics(tiny=True)


def arrays(images):
    return [np.asarray(im.convert("RGB"), np.float64) for im in images]


def sets_of(tiny_engine, metrics, **kw):
    return final(style_aligned_set(tiny_engine, PROMPTS, "flat", options=SharingOptions(), steps=2, guidance=5.0,
                                   metrics=metrics, **kw))


def test_seeds_of_candidate_sets_never_overlap():
    assert candidate_seeds(10, 3, 4) == [10, 14, 18]   # images 10-13, 14-17, 18-21
    assert candidate_seeds(0, 1, 5) == [0]


@pytest.mark.parametrize("preference", [0.0, 0.5, 1.0])
def test_sets_come_best_first_by_a_recomputation_of_the_scores(tiny_engine, metrics, preference):
    r = sets_of(tiny_engine, metrics, seed=3, candidates=3, preference=preference)
    recs = r.info["sets"]
    assert len(recs) == 3 and len(r.images) == 9 and [x["rank"] for x in recs] == [1, 2, 3]
    assert sorted(x["seed"] for x in recs) == [3, 6, 9]
    # from the returned images, with a fresh scorer and the formula written out here (float64)
    fresh = Metrics(tiny=True)
    sets = [r.images[3 * i:3 * i + 3] for i in range(3)]
    text = np.array([np.mean(fresh.clip_text_scores(s, r.info["prompts"])) for s in sets], np.float64)
    cons = np.array([fresh.dino_consistency(s) for s in sets], np.float64)

    def n(x):
        return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)
    score = (1 - preference) * n(text) + preference * n(cons)
    assert np.all(np.diff(score) <= 1e-6)                       # the order returned is best first
    assert [x["score"] for x in recs] == pytest.approx(list(score), abs=1e-4)
    assert [x["text"] for x in recs] == pytest.approx(list(text), abs=1e-4)
    # the info's single-set keys describe the best set
    assert r.info["style_consistency"] == pytest.approx(cons[0], abs=1e-4)


def test_the_best_sets_seed_regenerates_it(tiny_engine, metrics):
    r = sets_of(tiny_engine, metrics, seed=5, candidates=3, preference=0.5)
    best = r.info["sets"][0]
    again = sets_of(tiny_engine, metrics, seed=best["seed"])
    assert "sets" not in again.info
    for a, b in zip(arrays(r.images[:3]), arrays(again.images)):
        assert np.abs(a - b).max() <= 2.0     # a batch of sets vs one set: the same up to float rounding
    # and each other candidate is its own set too (not the best one's images shifted)
    second = sets_of(tiny_engine, metrics, seed=r.info["sets"][1]["seed"])
    for a, b in zip(arrays(r.images[3:6]), arrays(second.images)):
        assert np.abs(a - b).max() <= 2.0


def test_bad_best_of_n_values_are_refused(tiny_engine, metrics):
    with pytest.raises(UserError, match="best of N"):
        sets_of(tiny_engine, metrics, candidates=9)
    with pytest.raises(UserError, match="at most 16"):
        final(style_aligned_set(tiny_engine, PROMPTS * 2, "", candidates=3, metrics=metrics, steps=2))
    with pytest.raises(UserError, match="scoring models"):
        final(style_aligned_set(tiny_engine, PROMPTS, "", candidates=2, steps=2))
    with pytest.raises(UserError, match="prompts ↔ consistency"):
        sets_of(tiny_engine, metrics, candidates=2, preference=1.5)


def test_rank_sets_by_hand():
    """Three sets: text means 0.1, 0.3, 0.2 and consistencies 0.9, 0.5, 0.7 -> normalised text
    0, 1, 0.5 and consistency 1, 0, 0.5; p = 0.25: scores 0.25, 0.75, 0.5 (set 2 first)."""
    r = ranking.rank_sets([0.1, 0.3, 0.2], [0.9, 0.5, 0.7], [0, 4, 8], preference=0.25)
    assert [x.seed for x in r] == [4, 8, 0] and [x.score for x in r] == pytest.approx([0.75, 0.5, 0.25])
    r = ranking.rank_sets([0.1, 0.3, 0.2], [0.9, 0.5, 0.7], [0, 4, 8], preference=1.0)
    assert [x.seed for x in r] == [0, 8, 4]
    assert ranking.rank_sets([0.2], [None], [7])[0].caption() == "set #1 · seed 7 · text 0.200 · score 0.00"


def test_the_tab_shows_sets_best_first_and_hands_the_best_one_over(tiny_engine, tmp_path):
    from tabs.style_aligned import StyleAlignedTab
    from tests.tabkit import fake_request, last, make_ctx

    tab = StyleAlignedTab(make_ctx(tiny_engine, tmp_path))
    kw = dict(prompts="a cat\na tree", style="", seed=2, steps=2, guidance=5.0, width=64, height=64, negative="",
              reference_file=None, reference_prompt="", adain_queries=True, adain_keys=True, adain_values=False,
              share_group_norm=False, full_attention_share=False, shared_score_shift=0.0, shared_score_scale=1.0,
              share_fraction=1.0)
    (gallery, status, table, info), _ = last(tab.generate(**kw, candidates=3, preference=0.5,
                                                          request=fake_request()))
    assert len(gallery) == 6 and "Done" in status
    assert gallery[0][1] == info["sets"][0]["caption"] and gallery[0][1].startswith("set #1 · seed ")
    assert [g[1] for g in gallery[1:3]] == ["set #1", info["sets"][1]["caption"]]
    assert "Candidate sets, best first" in table and f"| 1 | {info['sets'][0]['seed']} |" in table
    paths = []
    for i, (img, caption) in enumerate(gallery):
        paths.append((str(tmp_path / f"g{i}.png"), caption))
        img.save(paths[-1][0])
    files, content, descriptor, _ = tab.set_for_styledrop(gallery=paths, prompts=kw["prompts"], style="in flat style")
    assert files == [p for p, _ in paths[:2]] and content == "a cat" and descriptor == "flat"
    import gradio as gr

    with pytest.raises(gr.Error, match="Candidate sets"):
        list(tab.generate(**kw, candidates=0, request=fake_request()))
    with pytest.raises(gr.Error, match="prompts ↔ consistency"):
        list(tab.generate(**kw, candidates=2, preference="x", request=fake_request()))


@pytest.mark.browser
def test_browser_best_of_two_sets(live_app, page):
    page.goto(live_app.url)
    page.locator("#sa-prompts textarea").fill("A guitar\nA sailboat")
    page.locator("#sa-best-of").get_by_text("Best of N sets (optional)").click()
    set_number(page, "sa-candidates", 2)
    page.locator("#sa-generate").click()
    wait_for_text(page, "#sa-metrics", "Candidate sets, best first", show=("#sa-status",))
    assert page.locator("#sa-gallery img").count() >= 4
    rows = page.locator("#sa-metrics table").first.locator("tbody tr")
    assert rows.count() == 2                                   # one row per candidate set
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(2)] == ["1", "2"]
