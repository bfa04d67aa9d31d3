"""Best-of-N ranking (issue 18, core/ranking.py) and B-LoRA's best-of-N generation on the tiny
family: the order against the documented formula recomputed here in float64 from the returned
images with core.metrics.Metrics, the preference's direction on hand-made images, the seeds
(candidate i = the ordinary run with seed base + i), and bad N / preference refused."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core import blora, ranking
from core.errors import UserError
from core.events import Result
from core.metrics import Metrics
from core.train import TrainSettings
from tests.tabkit import as_array
from tests.test_blora import picture as blora_picture

pytestmark = pytest.mark.usefixtures("one_thread")


def picture(kind: int, size: int = 64) -> Image.Image:
    """Hand-made pictures far apart: test_blora's two (a yellow square on a ramp, stripes on
    green) and, from 2 on, noise fields."""
    if kind < 2:
        return blora_picture(kind, size)
    rng = np.random.default_rng(kind)
    return Image.fromarray(rng.uniform(0, 255, (size, size, 3)).astype(np.uint8))


def blend(a: Image.Image, b: Image.Image, t: float) -> Image.Image:
    return Image.blend(a, b, t)


def expected_scores(text, content, style, p, text_weight=1.0):
    """The documented formula, written out here in float64: each present measure min-max
    normalised over the candidates (all 0 when equal), text_weight * text + (1 - p) * content
    + p * style."""
    def norm(x):
        x = np.asarray(x, dtype=np.float64)
        span = x.max() - x.min()
        return np.zeros_like(x) if span <= 0 else (x - x.min()) / span
    total = text_weight * norm(text)
    if content is not None:
        total = total + (1 - p) * norm(content)
    if style is not None:
        total = total + p * norm(style)
    return total


@pytest.fixture(scope="module")
def metrics():
    return Metrics(tiny=True)


# --------------------------------------------------------------------------- the ranking alone

def test_dino_similarity_is_the_cosine_with_the_mean_reference(metrics):
    images = [picture(0), picture(1), picture(2)]
    refs = [picture(1), blend(picture(0), picture(1), 0.5)]
    emb = metrics.dino_embeddings(images).double().numpy()
    ref = metrics.dino_embeddings(refs).double().numpy()
    mean = ref.mean(0) / np.linalg.norm(ref.mean(0))
    assert np.allclose(metrics.dino_similarity(images, refs), emb @ mean, atol=1e-4)
    one = metrics.dino_similarity(images, [picture(1)])
    assert one[1] == pytest.approx(1.0, abs=1e-4) and max(one[0], one[2]) < 0.9999  # itself: 1


def test_rank_orders_by_the_documented_formula(metrics):
    content, style = picture(0), picture(1)
    images = [blend(content, style, t) for t in (0.1, 0.5, 0.9)] + [picture(2)]
    seeds = [40, 41, 42, 43]
    for p in (0.0, 0.3, 1.0):
        ranked = ranking.rank(metrics, images, seeds, "a cat", content_images=[content], style_images=[style],
                              preference=p)
        text = metrics.clip_text_scores(images, ["a cat"] * 4)
        c, s = metrics.dino_similarity(images, [content]), metrics.dino_similarity(images, [style])
        want = expected_scores(text, c, s, p)
        got = [r.index for r in ranked]
        assert sorted(got) == [0, 1, 2, 3] and [r.rank for r in ranked] == [1, 2, 3, 4]
        assert all(want[a] >= want[b] - 1e-9 for a, b in zip(got, got[1:])), (p, want, got)  # best first
        assert np.allclose([r.score for r in ranked], want[got], atol=1e-5)
        assert [r.seed for r in ranked] == [seeds[i] for i in got]
        assert [(r.text, r.content, r.style) for r in ranked] == [(text[i], c[i], s[i]) for i in got]


def test_the_preference_moves_the_order_from_content_to_style(metrics):
    """Hand-made: candidate 1 is the content image itself, candidate 0 the style image itself,
    the others noise; with the text term off, preference 0 puts the content one first and
    preference 1 the style one, and raising p never lowers the style one's score against the
    content one's."""
    content, style = picture(0), picture(1)
    images = [style, content, picture(2), picture(3)]
    kw = dict(content_images=[content], style_images=[style], text_weight=0.0)
    first = {p: ranking.rank(metrics, images, [0, 1, 2, 3], "a thing", preference=p, **kw)[0].index
             for p in (0.0, 1.0)}
    assert first == {0.0: 1, 1.0: 0}
    gaps = []
    for p in np.linspace(0, 1, 5):
        by_index = {r.index: r.score for r in ranking.rank(metrics, images, [0, 1, 2, 3], "a thing",
                                                            preference=float(p), content_images=[content],
                                                            style_images=[style])}
        gaps.append(by_index[0] - by_index[1])                   # style one minus content one
    assert all(b > a for a, b in zip(gaps, gaps[1:])), gaps


def test_measures_without_a_reference_are_absent_and_count_nothing(metrics):
    images = [picture(0), picture(1), picture(2)]
    ranked = ranking.rank(metrics, images, [5, 6, 7], "a dog", preference=0.0)
    text = metrics.clip_text_scores(images, ["a dog"] * 3)
    assert all(r.content is None and r.style is None for r in ranked)
    assert [r.index for r in ranked] == list(np.argsort(-np.asarray(text), kind="stable"))
    assert "content" not in ranked[0].caption() and ranked[0].caption().startswith("#1 · seed ")
    single = ranking.rank(metrics, images[:1], [9], "a dog", content_images=[picture(1)])
    assert single[0].score == 0.0 and single[0].seed == 9       # one candidate: nothing to normalise


@pytest.mark.parametrize("value", [0, 9, -1, 2.5, "3", None, True])
def test_bad_numbers_of_candidates_are_refused_naming_the_field(value):
    with pytest.raises(UserError, match=r"Candidates \(best of N\)"):
        ranking.check_candidates(value)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", None, False])
def test_bad_preferences_are_refused_naming_the_field(metrics, value):
    with pytest.raises(UserError, match="Preference"):
        ranking.rank(metrics, [picture(0)], [0], "a cat", preference=value)


# --------------------------------------------------------------------------- B-LoRA's best of N

@pytest.fixture(scope="module")
def halves(engine):
    """Two B-LoRAs: picture 0's content, picture 1's style (a few steps; the tiny numbers mean
    nothing, the code path is the real one)."""
    events = list(blora.train_blora(engine, [picture(0), picture(1)], TrainSettings(steps=2, learning_rate=1e-2,
                                                                                    sample_steps=1), rank=4))
    made = events[-1].info["adapters"]
    return int(made[0]["adapter_id"]), int(made[1]["adapter_id"])


def best_of(engine, halves, metrics, *, seed=3, n=4, p=0.5, prompts=("A [c] in [s] style",), **kw):
    events = list(blora.generate(engine, content=(halves[0], 1.0), style=(halves[1], 1.0), prompts=list(prompts),
                                 seed=seed, steps=2, guidance=5.0, candidates=n, preference=p, metrics=metrics, **kw))
    assert isinstance(events[-1], Result)
    return events[-1]


def test_best_of_n_order_equals_a_recomputation_from_the_returned_images(engine, halves, metrics):
    result = best_of(engine, halves, metrics, seed=11, n=4, p=0.25, prompts=("A [c] in [s] style", "A [c]"))
    records = result.info["ranking"]
    assert len(result.images) == len(records) == 8 and result.info["candidates"] == 4
    for k, prompt in enumerate(result.info["prompts"]):
        rows = [i for i, r in enumerate(records) if r["prompt_index"] == k]
        assert rows == list(range(4 * k, 4 * k + 4))                # prompt by prompt
        images = [result.images[i] for i in rows]
        text = metrics.clip_text_scores(images, [prompt] * 4)
        content = metrics.dino_similarity(images, [picture(0)])      # the images the halves learned
        style = metrics.dino_similarity(images, [picture(1)])
        want = expected_scores(text, content, style, 0.25)
        assert all(a >= b - 1e-9 for a, b in zip(want, want[1:])), want   # returned best first
        assert np.allclose([records[i]["score"] for i in rows], want, atol=1e-5)
        assert sorted(records[i]["seed"] for i in rows) == [11, 12, 13, 14]
        assert [records[i]["rank"] for i in rows] == [1, 2, 3, 4]


def test_candidate_i_of_a_batch_is_the_single_run_with_seed_base_plus_i(engine, halves, metrics):
    prompts = ("A [c] in [s] style", "A [c] made of gold")
    result = best_of(engine, halves, metrics, seed=20, n=3, prompts=prompts)
    for r, img in zip(result.info["ranking"], result.images):
        alone = best_of(engine, halves, None, seed=r["seed"], n=1, prompts=prompts).images[r["prompt_index"]]
        assert np.allclose(as_array(img), as_array(alone), atol=2.0), r   # 8-bit images, batch vs alone
    assert sorted({r["seed"] for r in result.info["ranking"]}) == [20, 21, 22]


def test_the_same_seed_regenerates_the_same_top_candidate(engine, halves, metrics):
    one = best_of(engine, halves, metrics, seed=7, n=4, p=0.8)
    two = best_of(engine, halves, metrics, seed=7, n=4, p=0.8)
    top = one.info["ranking"][0]
    assert two.info["ranking"][0]["seed"] == top["seed"]
    assert np.allclose(as_array(one.images[0]), as_array(two.images[0]), atol=1.0)
    again = best_of(engine, halves, None, seed=top["seed"], n=1)          # "use seed": N = 1
    assert again.info["ranking"] == [] and len(again.images) == 1
    assert np.allclose(as_array(again.images[0]), as_array(one.images[0]), atol=2.0)


def test_bad_best_of_n_requests_are_refused_before_any_job(engine, halves, metrics):
    for kw, field in ((dict(n=0), "Candidates"), (dict(n=9), "Candidates"), (dict(p=1.2), "Preference"),
                      (dict(n=3, prompts=["a"] * 6), "at most 16")):
        with pytest.raises(UserError, match=field):
            best_of(engine, halves, metrics, **kw)
    with pytest.raises(UserError, match="scoring models"):
        best_of(engine, halves, None, n=2)
    assert engine.jobs.running() == []
