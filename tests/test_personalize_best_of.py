"""Best of N in Personalize generation (issue 18, core/best_of.py): a DreamBooth subject with a
library StyleDrop style, N candidates per prompt in one batch, ranked by CLIP text score and DINO
similarity to the subject's images (its adapter's samples of "a [V] [class]": the library keeps
no training photos) and to the style's image. The order against the documented formula
recomputed here in float64 from the returned images with core.metrics.Metrics called directly;
every candidate is the ordinary run with its recorded seed; bad N / preference refused."""
from __future__ import annotations

import re
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from core import best_of, dreambooth, library, styledrop, styles
from core.errors import UserError
from core.metrics import Metrics
from core.train import TrainSettings
from tabs.personalize import PersonalizeTab
from tests.browserkit import set_number, wait_for_text
from tests.tabkit import as_array, fake_request, final, last, make_ctx
from tests.test_ranking import expected_scores
from tests.test_styledrop import style_image

pytestmark = pytest.mark.usefixtures("one_thread")

OWNER = "local"  # the owner of everything on a private instance (the tab's caller too)
INSTANCE = "a sks dog"


def subject_photos() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [Image.fromarray(np.clip(np.array([210, 50, 40]) + rng.normal(0, 25, (64, 64, 3)), 0, 255)
                            .astype(np.uint8)) for _ in range(2)]


@pytest.fixture(scope="module")
def metrics():
    return Metrics(tiny=True)


@pytest.fixture(scope="module")
def made(engine):
    """The DreamBooth subject (its samples: "a sks dog" and "... on the beach") and her
    StyleDrop round on one style image, trained through core (a few steps)."""
    recipe = dreambooth.make_recipe(engine, subject_photos(), identifier="sks", class_noun="dog", prior=False,
                                    rank=4, name="bo dog")
    subject = final(dreambooth.train_dreambooth(engine, recipe, TrainSettings(steps=2, learning_rate=1e-3,
                                                                              sample_steps=2), owner=OWNER))
    loop = styledrop.create_loop(engine, [style_image(2)], owner=OWNER, content_description="a gradient square",
                                 style_descriptor="glow gradient")
    sd = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=4, learning_rate=5e-2), owner=OWNER,
                                     contents=["a cat"], sample_steps=2))
    return dict(subject=int(subject.info["adapter_id"]), style=int(sd.info["adapter_id"]))


def run(engine, made, metrics, *, prompts=(f"{INSTANCE} on the beach",), seed=5, n=3, p=0.5, with_style=True):
    style = styles.get_style(engine, made["style"], owner=OWNER) if with_style else None
    return final(best_of.generate(engine, list(prompts), {made["subject"]: 1.0}, style=style, style_weight=1.0,
                                  owner=OWNER, seed=seed, steps=2, guidance=5.0, candidates=n, preference=p,
                                  metrics=metrics))


def subject_samples(engine, made) -> list[Image.Image]:
    """The oracle's subject images, read from the store here: the adapter's samples of its instance prompt."""
    a = library.get_store(engine).get_adapter(made["subject"], OWNER)
    return [Image.open(s.file.path).convert("RGB") for s in a.samples if s.prompt == INSTANCE]


def test_the_subjects_images_are_its_samples_of_the_instance_prompt(engine, made):
    refs = best_of.subject_references(engine, [made["subject"]], OWNER)
    want = subject_samples(engine, made)
    assert len(refs) == len(want) == 1
    assert np.array_equal(as_array(refs[0]), as_array(want[0]))
    style = best_of.style_references(engine, styles.get_style(engine, made["style"], owner=OWNER), OWNER)
    assert len(style) == 1 and np.abs(as_array(style[0]) - as_array(style_image(2))).max() == 0
    assert best_of.style_references(engine, None, OWNER) == []


def test_order_equals_a_recomputation_from_the_returned_images(engine, made, metrics):
    result = run(engine, made, metrics, prompts=(f"{INSTANCE} on the beach", f"{INSTANCE} in a bucket"), seed=9,
                 n=3, p=0.3)
    records = result.info["ranking"]
    assert len(result.images) == len(records) == 6 and result.info["candidates"] == 3
    assert result.info["preference"] == 0.3 and result.info["references"] == {"content": 1, "style": 1}
    content_refs, style_refs = subject_samples(engine, made), [style_image(2)]
    for k, prompt in enumerate(result.info["prompts"]):
        assert "glow gradient" in prompt                                 # the style's phrase joined the prompt
        rows = [i for i, r in enumerate(records) if r["prompt_index"] == k]
        assert rows == list(range(3 * k, 3 * k + 3))                     # prompt by prompt
        images = [result.images[i] for i in rows]
        text = metrics.clip_text_scores(images, [prompt] * 3)
        content = metrics.dino_similarity(images, content_refs)
        style = metrics.dino_similarity(images, style_refs)
        want = expected_scores(text, content, style, 0.3)
        assert all(a >= b - 1e-9 for a, b in zip(want, want[1:])), want  # returned best first
        assert np.allclose([records[i]["score"] for i in rows], want, atol=1e-5)
        assert np.allclose([records[i]["content"] for i in rows], content, atol=1e-4)
        assert np.allclose([records[i]["style"] for i in rows], style, atol=1e-4)
        assert sorted(records[i]["seed"] for i in rows) == [9, 10, 11]
        assert [records[i]["rank"] for i in rows] == [1, 2, 3]


def test_each_candidate_is_the_ordinary_run_with_its_seed(engine, made, metrics):
    """Candidate i of a run with seed s is the ordinary run (N = 1) with seed s + i: the top
    one's seed regenerates it (8-bit images, a batch against one alone: within 2/255)."""
    result = run(engine, made, metrics, seed=20, n=3, p=0.8)
    assert sorted(r["seed"] for r in result.info["ranking"]) == [20, 21, 22]
    for r, img in zip(result.info["ranking"], result.images):
        alone = run(engine, made, None, seed=r["seed"], n=1)
        assert alone.info.get("ranking") is None and len(alone.images) == 1
        assert np.abs(as_array(img) - as_array(alone.images[0])).max() <= 2.0, r
    again = run(engine, made, metrics, seed=20, n=3, p=0.8)
    assert again.info["ranking"][0]["seed"] == result.info["ranking"][0]["seed"]


def test_without_a_style_the_style_measure_is_absent(engine, made, metrics):
    result = run(engine, made, metrics, seed=3, n=2, p=1.0, with_style=False)
    assert result.info["references"] == {"content": 1}
    assert all(r["style"] is None and r["content"] is not None for r in result.info["ranking"])
    text = metrics.clip_text_scores(result.images, result.info["prompts"] * 2)
    content = metrics.dino_similarity(result.images, subject_samples(engine, made))
    want = expected_scores(text, content, None, 1.0)                     # p = 1: content counts 0
    assert want[0] >= want[1] - 1e-9


def test_bad_requests_are_refused_before_any_job(engine, made, metrics):
    for kw, field in ((dict(n=0), r"Candidates \(best of N\)"), (dict(n=9), r"Candidates \(best of N\)"),
                      (dict(p=1.5), "Preference"), (dict(p=-0.1), "Preference"),
                      (dict(n=4, prompts=["a {v}"] * 5), "at most 16")):
        with pytest.raises(UserError, match=field):
            run(engine, made, metrics, **kw)
    with pytest.raises(UserError, match="scoring models"):
        run(engine, made, None, n=2)
    with pytest.raises(UserError, match="not found"):                    # Bob may not use the owner's subject
        list(best_of.generate(engine, ["a dog"], {made["subject"]: 1.0}, style=None, owner="bob", candidates=2,
                              metrics=metrics, steps=2))
    assert engine.jobs.running() == []


# --------------------------------------------------------------------------- the tab's handler

@pytest.fixture(scope="module")
def tab(engine, tmp_path_factory):
    return PersonalizeTab(make_ctx(engine, tmp_path_factory.mktemp("pz-best-of")))


def gen_kwargs(made, **over):
    kw = dict(prompts="a {v} {c} on the beach", seed=4, steps=2, guidance=5.0, adapter_1=str(made["subject"]),
              weight_1=1.0, adapter_2=None, weight_2=1.0, adapter_3=None, weight_3=1.0, visitor=None,
              library_style=str(made["style"]), style_weight=1.0)
    kw.update(over)
    return kw


def test_the_tab_shows_candidates_best_first_with_seed_and_scores(tab, made):
    (gallery, status), _ = last(tab.generate(**gen_kwargs(made), candidates=3, preference=0.25,
                                             request=fake_request()))
    assert "Best of 3 (preference 0.25" in status and len(gallery) == 3
    seeds = []
    for place, (_, caption) in enumerate(gallery, 1):
        assert caption.startswith(f"a sks dog on the beach, in glow gradient style — #{place} · seed "), caption
        assert " · text " in caption and " · content " in caption and " · style " in caption
        seeds.append(int(caption.split(" · seed ")[1].split(" ")[0]))
    assert sorted(seeds) == [4, 5, 6]
    scores = [float(c.rsplit("score ", 1)[1]) for _, c in gallery]
    assert scores == sorted(scores, reverse=True)
    seed, n = tab.use_seed(SimpleNamespace(value={"image": {}, "caption": gallery[1][1]}))  # a click on #2
    assert (seed, n) == (seeds[1], 1)
    for evt in (None, SimpleNamespace(value={"caption": "a dog — no seed"}), SimpleNamespace(value="x"),
                SimpleNamespace(value={"caption": "a #1 · seed 9 · dog"})):  # a plain image's caption is its prompt
        assert tab.use_seed(evt) == (gr.skip(), gr.skip())
    (alone, status1), _ = last(tab.generate(**gen_kwargs(made, seed=seeds[0]), request=fake_request()))
    assert len(alone) == 1 and "Best of" not in status1                # N = 1 by default: the ordinary run
    assert np.abs(as_array(alone[0][0]) - as_array(gallery[0][0])).max() <= 2.0


def test_stop_ends_a_best_of_n_run(tab, made):
    updates, asked = [], False
    for u in tab.generate(**gen_kwargs(made, steps=60), candidates=4, request=fake_request("page-n")):
        updates.append(u)
        if isinstance(u[0], list) and u[0] and not asked:    # a preview: denoising the four candidates
            assert len(u[0]) == 4
            tab.stop(fake_request("page-n"))
            asked = True
    gallery, status = updates[-1]
    assert asked and "Stopped" in status
    assert tab.engine.jobs.running() == [] and not tab.engine.gpu_lock.locked()


@pytest.mark.parametrize("over, field", [
    (dict(candidates=0), r"Candidates \(best of N\)"), (dict(candidates=9), r"Candidates \(best of N\)"),
    (dict(candidates=2.5), r"Candidates \(best of N\)"), (dict(candidates="many"), r"Candidates \(best of N\)"),
    (dict(preference=1.5), "Preference: subject ↔ style"), (dict(preference="style"), "Preference: subject ↔ style"),
    (dict(preference=float("nan")), "Preference: subject ↔ style"),
])
def test_bad_values_are_refused_naming_the_field(tab, made, over, field):
    with pytest.raises(gr.Error, match=field):
        list(tab.generate(**gen_kwargs(made, adapter_1=None, library_style=None), **over, request=fake_request()))
    assert tab.engine.jobs.running() == []


def test_no_scoring_models_is_a_clear_error_for_n_above_1(engine, tmp_path):
    bare = PersonalizeTab(make_ctx(engine, tmp_path, metrics=False))
    with pytest.raises(gr.Error, match="scoring models"):
        list(bare.generate(prompts="a cat", seed=0, steps=2, guidance=5.0, candidates=2, request=fake_request()))
    (gallery, status), _ = last(bare.generate(prompts="a cat", seed=0, steps=2, guidance=5.0, request=fake_request()))
    assert len(gallery) == 1 and "Done" in status


# --------------------------------------------------------------------------- in the browser

@pytest.mark.browser
def test_browser_best_of_n_with_a_subject(live_app, page, tmp_path):
    """A subject trained through the API; on the page: pick it, 3 candidates, Generate: three
    images best first, each captioned with its place, seed and scores."""
    from gradio_client import Client, handle_file

    from .conftest import screenshot

    photo = tmp_path / "subject.png"
    subject_photos()[0].save(photo)
    status, _, _, info = Client(live_app.url, verbose=False).predict(
        [handle_file(str(photo))], "sks", "teapot", "LoRA", 2, 1e-3, 4, False, 1.0, 1, 1, 1, False, 0, 0, 0, False,
        0, "best of teapot", 0, None, api_name="/personalize_train")
    assert "Done" in status
    page.goto(live_app.url)
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-refresh").click()
    page.locator("#pz-adapter-1 input").click()
    option = page.locator("ul[role=listbox] li, [role=option]").filter(has_text=f"#{info['adapter_id']}")
    option.first.click()
    page.wait_for_function("() => document.querySelector('#pz-adapter-1 input').value.includes('best of teapot')",
                           timeout=30_000)
    page.locator("#pz-prompts textarea").fill("a {v} {c} on a table")
    set_number(page, "pz-candidates", 3)
    page.locator("#pz-generate").click()
    wait_for_text(page, "#pz-gen-status", "Best of 3")
    page.wait_for_function("() => document.querySelectorAll('#pz-gallery .thumbnail-item').length === 3",
                           timeout=30_000)
    caption = page.locator("#pz-gallery").inner_text()
    places = re.findall(r"#(\d) · seed (\d+) · text [-\d.]+ · content [-\d.]+ · score [-\d.]+", caption)
    assert [p for p, _ in places] == ["1", "2", "3"], caption
    assert sorted(s for _, s in places) == ["0", "1", "2"], caption
    screenshot(page, "personalize-best-of-n")
    page.locator("#pz-gallery .thumbnail-item").nth(1).click()          # use the second one's seed
    page.wait_for_function("() => document.querySelector('#pz-candidates input[type=number]').value === '1'",
                           timeout=15_000)
    assert page.locator("#pz-seed input").input_value() == places[1][1]
