"""Library styles used by another method (issue 18): a StyleDrop adapter and a B-LoRA's style
half, trained here on the tiny family, listed per owner and used by a Style-Aligned set; the
set changes, the resident UNet computes afterwards what it computed before, owners are kept."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from core import blora, library, styledrop, styles
from core.errors import UserError
from core.events import Result
from core.style_aligned import SharingOptions, style_aligned_set
from core.train import TrainSettings
from tabs.style_aligned import StyleAlignedTab
from tests.browserkit import pick_library_style, styledrop_round_one, wait_for_text
from tests.tabkit import fake_request, final, last, make_ctx
from tests.test_blora import picture
from tests.test_styledrop import style_image

pytestmark = pytest.mark.usefixtures("one_thread")

# the paper's style block, written out (a swap of core.blora's constants must fail here)
STYLE_BLOCK = "up_blocks.0.attentions.1"
PROMPTS = ["a cat", "a tree"]


def as_array(result):
    return np.stack([np.asarray(i, dtype=np.float32) for i in result.images])


@pytest.fixture(scope="module")
def made(engine):
    """Alice's StyleDrop round (the paper's GELU adapter) and B-LoRA, trained through core."""
    loop = styledrop.create_loop(engine, [style_image(2)], owner="alice", content_description="a gradient square",
                                 style_descriptor="glow gradient")
    sd = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=10, learning_rate=5e-2), owner="alice",
                                     contents=["a cat"], sample_steps=2))
    bl = final(blora.train_blora(engine, [picture(1)], TrainSettings(steps=3, learning_rate=1e-2, sample_steps=2),
                                 owner="alice", rank=4, sample_prompts=[]))
    return dict(styledrop=sd.info["adapter_id"], blora=bl.info["adapters"][0]["adapter_id"])


def a_set(engine, style=None, weight=1.0, owner="alice", seed=3):
    return final(style_aligned_set(engine, PROMPTS, "", options=SharingOptions(), seed=seed, steps=2,
                                   guidance=5.0, library_style=style, style_weight=weight, owner=owner,
                                   stop_key=owner))


def base_weights(snapshot: dict) -> dict:
    """A UNet snapshot's own weights (no LoRA matrices; a peft wrapper's base layer by its plain name)."""
    return {k.replace(".base_layer", ""): v for k, v in snapshot.items() if ".lora_" not in k}


def plain(engine):
    """One ordinary generation (no sharing, no style): what the UNet computes."""
    return as_array(final(engine.generate(["a lighthouse"], seed=5, steps=2)))


def test_styles_are_listed_per_owner_with_their_phrase(engine, made):
    found = {s.adapter_id: s for s in styles.library_styles(engine, owner="alice")}
    assert set(found) == {made["styledrop"], made["blora"]}
    sd, bl = found[made["styledrop"]], found[made["blora"]]
    assert sd.method == "styledrop" and sd.phrase == "in glow gradient style" and "StyleDrop" in sd.label
    assert bl.method == "b-lora" and bl.phrase.startswith("in ") and bl.phrase.endswith(" style")
    assert "style half" in bl.label
    assert styles.library_styles(engine, owner="bob") == []
    with pytest.raises(UserError, match="not found"):
        styles.get_style(engine, made["styledrop"], owner="bob")
    assert styles.styled_prompts(["a cat", "a dog, in glow gradient style"], sd) == \
        ["a cat, in glow gradient style", "a dog, in glow gradient style"]
    assert styles.styled_prompts(["a cat"], None) == ["a cat"]


@pytest.mark.parametrize("kind", ["styledrop", "blora"])
def test_a_style_aligned_set_with_a_library_style(engine, made, kind):
    st = styles.get_style(engine, made[kind], owner="alice")
    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)
    without = a_set(engine)
    styled = a_set(engine, st)
    assert styled.info["prompts"] == [f"{p}, {st.phrase}" for p in PROMPTS]
    assert styled.info["library_style"] == {"key": str(made[kind]), "entry_id": None, "adapter_id": made[kind],
                                            "name": st.name, "weight": 1.0}
    assert np.abs(as_array(styled) - as_array(without)).max() > 2.0    # the style changes the set
    # the phrase alone does not explain it: the same prompts, weight 0, are the set without the adapter
    zero = a_set(engine, st, weight=0.0)
    assert zero.info["prompts"] == styled.info["prompts"]
    explicit = final(style_aligned_set(engine, styled.info["prompts"], "", options=SharingOptions(), seed=3,
                                       steps=2, guidance=5.0))
    assert np.abs(as_array(zero) - as_array(explicit)).max() <= 1.0
    assert np.abs(as_array(styled) - as_array(explicit)).max() > 2.0
    # afterwards the UNet is as it was: same parameters, same output
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)
    assert np.array_equal(before_image, plain(engine))


def test_only_the_style_half_of_a_blora_is_on(engine, made):
    """Inside the block: LoRA weights of the B-LoRA in its style block only (never the content half)."""
    st = styles.get_style(engine, made["blora"], owner="alice")

    def work(ctx):
        with styles.style_active(engine, st, 1.0, owner="alice"):
            active = list(engine.pipe.unet.active_adapters())
            mods = [m for n in active for m in blora.adapter_modules(engine.pipe.unet, n)]
        return Result(images=[], info={"active": active, "modules": mods})

    info = final(engine.run(work, kind="test")).info
    assert len(info["active"]) == 1       # the half alone (the trained B-LoRA stays resident, off)
    assert info["modules"] and all(m.startswith(STYLE_BLOCK + ".") for m in info["modules"])


def test_owners_and_values_are_checked(engine, made):
    for kind, method in (("blora", "b-lora"), ("styledrop", "styledrop")):   # ids Bob read somewhere
        with pytest.raises(UserError, match="not found"):
            a_set(engine, styles.LibraryStyle(made[kind], "x", method, ""), owner="bob")
    with pytest.raises(UserError, match="weight"):
        styles.check_weight(2.5)
    with pytest.raises(UserError, match="weight"):
        a_set(engine, styles.get_style(engine, made["styledrop"], owner="alice"), weight=-1.0)


def test_the_tab_lists_and_uses_the_visitors_styles(engine, made, tmp_path):
    from core import identity

    tab = StyleAlignedTab(make_ctx(engine, tmp_path, shared=True))
    alice_token, bob_token = identity.issue(tmp_path), identity.issue(tmp_path)
    alice = tab.caller(fake_request("a", "10.0.0.1"), alice_token).owner
    # a style of the visitor's own (trained for the owner their token stands for)
    loop = styledrop.create_loop(engine, [style_image(3)], owner=alice, content_description="a square",
                                 style_descriptor="neon")
    own = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=2, learning_rate=1e-2), owner=alice,
                                      contents=["a cat"], sample_steps=2)).info["adapter_id"]
    choices = tab.library_style_choices(visitor=alice_token, request=fake_request("a", "10.0.0.1"))["choices"]
    assert choices == [("None", ""), (f"{styles.get_style(engine, own, owner=alice).label}", str(own))]
    bobs = tab.library_style_choices(visitor=bob_token, request=fake_request("b", "10.0.0.2"))["choices"]
    assert bobs == [("None", "")]
    kw = dict(prompts="a cat\na tree", style="", seed=3, steps=2, guidance=5.0, width=64, height=64, negative="",
              reference_file=None, reference_prompt="", adain_queries=True, adain_keys=True, adain_values=False,
              share_group_norm=False, full_attention_share=False, shared_score_shift=0.0, shared_score_scale=1.0,
              share_fraction=1.0)
    (gallery, status, _, info), _ = last(tab.generate(**kw, library_style=str(own), style_weight=1.0,
                                                      visitor=alice_token, request=fake_request("a", "10.0.0.1")))
    assert len(gallery) == 2 and info["library_style"]["adapter_id"] == own
    assert all(p.endswith("in neon style") for p in info["prompts"])
    with pytest.raises(gr.Error, match="not found"):     # not Bob's to use
        list(tab.generate(**kw, library_style=str(own), visitor=bob_token, request=fake_request("b", "10.0.0.2")))
    with pytest.raises(gr.Error, match="Library style"):
        list(tab.generate(**kw, library_style="1; drop", visitor=alice_token, request=fake_request("a", "10.0.0.1")))
    with pytest.raises(gr.Error, match="Style weight"):
        list(tab.generate(**kw, library_style=str(own), style_weight=9, visitor=alice_token,
                          request=fake_request("a", "10.0.0.1")))


@pytest.mark.browser
def test_browser_a_set_in_a_library_style(live_app, page, tmp_path):
    """A StyleDrop round trained through the API, then, in the Style-Aligned tab as a user would:
    refresh the list, pick that style, generate; the set names the style it used."""
    from gradio_client import Client, handle_file

    style_png = tmp_path / "style.png"
    style_image(4).save(style_png)
    c = Client(live_app.url, verbose=False)
    out = c.predict("", [handle_file(str(style_png))], "a gradient", "lagoon", "", 2, 1e-2, 4, False, 0, "a cat",
                    1, 2, 5.0, 0, None, api_name="/styledrop_train")
    adapter_id = out[-1]["adapter_id"]
    page.goto(live_app.url)
    pick_library_style(page, "sa", f"#{adapter_id}")
    page.locator("#sa-prompts textarea").fill("A guitar\nA sailboat")
    page.locator("#sa-generate").click()
    wait_for_text(page, "#sa-metrics", "Library style", show=("#sa-status",))
    shown = page.locator("#sa-metrics").inner_text()
    assert f"(#{adapter_id}) × 1" in shown and "lagoon" in shown
    assert "Done" in page.locator("#sa-status").inner_text()
    assert page.locator("#sa-gallery img").count() >= 2


# ----------------------------------------------------------------------------- Text-to-SVG

def svg_run(engine, tmp_path, style=None, weight=1.0, prompt="a cup", owner="alice"):
    from core import vectorfusion as vf

    o = vf.VFOptions(num_paths=4, steps=3, preview_every=3, seed=2)
    return final(vf.text_to_svg(engine, prompt, o, init="scratch", data_dir=tmp_path, owner=owner,
                                library_style=style, style_weight=weight))


@pytest.mark.parametrize("kind", ["styledrop", "blora"])
def test_score_distillation_in_a_library_style(engine, made, kind, tmp_path):
    """The style's adapter is on during SDS: the losses (the UNet's noise predictions) differ from
    the same styled prompt without it, and at weight 0 they are those of the plain prompt."""
    st = styles.get_style(engine, made[kind], owner="alice")
    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)
    styled = svg_run(engine, tmp_path, st)
    assert styled.info["prompt"] == f"a cup, {st.phrase}"
    assert styled.info["library_style"]["adapter_id"] == made[kind]
    explicit = svg_run(engine, tmp_path, prompt=f"a cup, {st.phrase}")
    zero = svg_run(engine, tmp_path, st, weight=0.0)
    assert zero.info["losses"] == pytest.approx(explicit.info["losses"], rel=1e-3, abs=1e-6)
    assert styled.info["losses"] != pytest.approx(explicit.info["losses"], rel=1e-2)
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)
    assert np.array_equal(before_image, plain(engine))
    forged = styles.LibraryStyle(made[kind], "x", st.method, "")
    with pytest.raises(UserError, match="not found"):
        svg_run(engine, tmp_path, forged, owner="bob")


def test_the_svg_tab_runs_in_a_library_style(engine, made, tmp_path):
    from tabs.svg import SvgTab

    tab = SvgTab(make_ctx(engine, tmp_path))      # a private instance: everything is "local"'s
    loop = styledrop.create_loop(engine, [style_image(5)], owner="local", content_description="a square",
                                 style_descriptor="ember")
    own = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=2, learning_rate=1e-2), owner="local",
                                      contents=["a cat"], sample_steps=2)).info["adapter_id"]
    kw = dict(prompt="a cup", style="iconographic", start="scratch", paths=4, k=1, steps=2, guidance=100,
              seed=0, sample_steps=2, live_steps=4, negative="", preset="fast")
    (_, _, status, _, _, details), _ = last(tab.generate(**kw, library_style=str(own), style_weight=0.5,
                                                         request=fake_request()))
    shown = status.replace("\\", "")          # as Markdown renders it (the name's markup escaped)
    assert "Library style: ember" in shown and f"(#{own}) × 0.5" in shown
    assert details["prompt"] == "a cup, in ember style"
    with pytest.raises(gr.Error, match="Style weight"):
        list(tab.generate(**kw, library_style=str(own), style_weight=3, request=fake_request()))
    with pytest.raises(gr.Error, match="not a style|not found"):
        list(tab.generate(**kw, library_style="999999", request=fake_request()))


# ----------------------------------------------------------------------------- subject + style

@pytest.fixture(scope="module")
def subject(engine, made):
    """Alice's DreamBooth subject ("sks dog"): enough to change an image, not so much that it
    saturates it (a saturated image hides any style)."""
    from core import dreambooth
    from core.train import train

    recipe = dreambooth.make_recipe(engine, [picture(0)], identifier="sks", class_noun="dog", prior=False, rank=4,
                                    sample_prompts=[])
    return final(train(engine, recipe, TrainSettings(steps=4, learning_rate=1e-2), owner="alice")).info["adapter_id"]


def pictures(engine, weights, style=None, style_weight=1.0, prompt="a sks dog"):
    return final(styles.generate(engine, [prompt], weights, style=style, style_weight=style_weight, owner="alice",
                                 seed=4, steps=2, guidance=5.0))


@pytest.mark.parametrize("kind", ["styledrop", "blora"])
def test_subject_and_library_style_in_one_generation(engine, made, subject, kind):
    st = styles.get_style(engine, made[kind], owner="alice")
    with pytest.raises(UserError, match="not a style"):     # a DreamBooth subject is no style
        styles.get_style(engine, subject, owner="alice")
    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)
    both = pictures(engine, {subject: 1.0}, st)
    styled_prompt = f"a sks dog, {st.phrase}"
    assert both.info["prompts"] == [styled_prompt] and both.info["library_style"]["adapter_id"] == made[kind]
    subject_only = pictures(engine, {subject: 1.0}, prompt=styled_prompt)
    style_only = pictures(engine, {}, st)
    zero = pictures(engine, {subject: 1.0}, st, style_weight=0.0)
    a = {k: as_array(r) for k, r in dict(both=both, subject=subject_only, style=style_only, zero=zero).items()}
    assert np.abs(a["both"] - a["subject"]).max() > 2.0     # the style is on
    assert np.abs(a["both"] - a["style"]).max() > 2.0       # and so is the subject
    assert np.abs(a["zero"] - a["subject"]).max() <= 1.0    # weight 0: the subject alone
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)
    assert np.array_equal(before_image, plain(engine))


def test_a_blora_style_half_beside_a_subject_keeps_both_active(engine, made, subject):
    st = styles.get_style(engine, made["blora"], owner="alice")
    half = blora.Half(made["blora"], "style").peft_name

    def work(ctx):
        with styles.style_active(engine, st, 0.5, owner="alice", adapters={subject: 1.0}):
            active = list(engine.pipe.unet.active_adapters())
            mods = blora.adapter_modules(engine.pipe.unet, half)
        return Result(images=[], info={"active": active, "modules": mods})

    info = final(engine.run(work, kind="test")).info
    assert half in info["active"] and len(info["active"]) == 2      # the subject's adapter and the half
    assert info["modules"] and all(m.startswith(STYLE_BLOCK + ".") for m in info["modules"])


def test_the_personalize_tab_adds_a_library_style(engine, made, subject, tmp_path):
    from tabs.personalize import PersonalizeTab

    tab = PersonalizeTab(make_ctx(engine, tmp_path))          # private: "local" owns what this test makes
    loop = styledrop.create_loop(engine, [style_image(6)], owner="local", content_description="a square",
                                 style_descriptor="ink wash")
    own = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=2, learning_rate=1e-2), owner="local",
                                      contents=["a cat"], sample_steps=2)).info["adapter_id"]
    (gallery, status), _ = last(tab.generate(prompts="a cat", seed=1, steps=2, guidance=5.0, library_style=str(own),
                                             style_weight=0.8, request=fake_request()))
    assert len(gallery) == 1 and gallery[0][1] == "a cat, in ink wash style"
    assert "library style ink wash" in status.replace("\\", "") and f"(#{own}) × 0.8" in status.replace("\\", "")
    with pytest.raises(gr.Error, match="not found"):
        list(tab.generate(prompts="a cat", seed=1, steps=2, guidance=5.0, library_style="999999",
                          request=fake_request()))


# ----------------------------------------------------------------------------- a set becomes a StyleDrop style

def test_style_descriptor_from_a_style_text():
    from tabs.style_aligned import style_descriptor

    assert style_descriptor("in minimal flat design illustration") == "minimal flat design illustration"
    assert style_descriptor("in the style of the reference") == "the reference"
    assert style_descriptor("In Watercolor Painting style.") == "Watercolor Painting"
    assert style_descriptor("neon") == "neon" and style_descriptor("") == ""


def test_styledrop_round_1_trains_on_a_style_aligned_set(engine, tmp_path):
    """The set's images as the loop's style images (through the tab's hand-over): round 1 trains on
    all of them, with the reference's prompt as content and the style text as descriptor."""
    tab = StyleAlignedTab(make_ctx(engine, tmp_path))
    s = a_set(engine)
    files = []
    for i, img in enumerate(s.images):
        files.append(str(tmp_path / f"set{i}.png"))
        img.save(files[-1])
    paths, content, descriptor, shown = tab.set_for_styledrop(gallery=[(f, None) for f in files],
                                                              prompts="a cat\na tree", style="in glow style")
    assert paths == files and content == "a cat" and descriptor == "glow"
    assert shown.selected == "tabs.styledrop"
    with pytest.raises(gr.Error, match="Generate a set first"):
        tab.set_for_styledrop(gallery=[], prompts="a cat", style="")
    from PIL import Image

    loop = styledrop.create_loop(engine, [Image.open(p) for p in paths], owner="carol", content_description=content,
                                 style_descriptor=descriptor)
    r = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=2, learning_rate=1e-2), owner="carol",
                                    contents=["a boat"], sample_steps=2))
    assert r.info["trained_on"]["style_images"] == len(PROMPTS) == 2
    shown = [np.asarray(im.convert("RGB"), np.float32) for im in styledrop.style_images(
        styledrop.store_of(engine), styledrop.store_of(engine).get_loop(loop.id, "carol"), "carol")]
    assert len(shown) == 2 and all(np.abs(a - np.asarray(b, np.float32)).max() <= 1 for a, b in zip(shown, s.images))


@pytest.mark.browser
def test_browser_a_set_becomes_a_styledrop_loop(live_app, page):
    page.goto(live_app.url)
    page.locator("#sa-prompts textarea").fill("A guitar\nA sailboat\nA mountain")
    page.locator("#sa-style textarea, #sa-style input").first.fill("in ember glow style")
    page.locator("#sa-generate").click()
    page.wait_for_function("() => document.querySelectorAll('#sa-gallery img').length >= 3"
                           " && document.querySelector('#sa-status').innerText.includes('Done')", timeout=120_000)
    page.locator("#sa-to-styledrop").click()
    status = styledrop_round_one(page, images=3, style="ember glow", content="A guitar")
    assert "trained on 3 style" in status


@pytest.mark.browser
@pytest.mark.parametrize("where", ["personalize", "svg"])
def test_browser_subject_and_vector_art_in_a_library_style(live_app, page, tmp_path, where):
    """A StyleDrop style trained through the API, picked under "Style from the library" in
    Personalize (a subject in that style) and in Text-to-SVG (vector art in that style)."""
    from gradio_client import Client, handle_file

    style_png = tmp_path / "style.png"
    style_image(7).save(style_png)
    out = Client(live_app.url, verbose=False).predict(
        "", [handle_file(str(style_png))], "a gradient", "pine", "", 2, 1e-2, 4, False, 0, "a cat", 1, 2, 5.0, 0,
        None, api_name="/styledrop_train")
    adapter_id = out[-1]["adapter_id"]
    tab, prefix, button, status = dict(personalize=("Personalize", "pz", "#pz-generate", "#pz-gen-status"),
                                       svg=("Text-to-SVG", "svg", "#svg-generate", "#svg-status"))[where]
    page.goto(live_app.url)
    page.get_by_role("tab", name=tab, exact=True).click()
    pick_library_style(page, prefix, f"#{adapter_id}")
    page.locator(button).click()
    wait_for_text(page, status, "Done", timeout=180_000)
    text = page.locator(status).inner_text()
    assert "pine" in text and f"(#{adapter_id}) × 1" in text


# ----------------------------------------------------------------------------- a kohya LoRA as a style

def test_a_kohya_lora_imported_as_a_style_is_listed_and_used(engine, made, subject, tmp_path):
    """A kohya/A1111 file (here: the subject's export, a real kohya layout) imported through the
    Personalize tab "as a style" with its trigger words is a library style; imported as a subject
    it is not."""
    from tabs.personalize import PersonalizeTab

    path = library.get_store(engine).export(subject, "alice", fmt="kohya")
    tab = PersonalizeTab(make_ctx(engine, tmp_path))     # private: "local" owns the imports
    note = tab.import_lora(file=str(path), use_as="style", trigger_words="inkwash style", request=fake_request())
    assert "as a style" in note
    tab.import_lora(file=str(path), use_as="subject", request=fake_request())
    found = [s for s in styles.library_styles(engine, owner="local") if s.method == "imported"]
    assert len(found) == 1 and found[0].phrase == "inkwash style" and "imported LoRA" in found[0].label
    st = found[0]
    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)
    styled = a_set(engine, st, owner="local")
    assert styled.info["prompts"] == [f"{p}, inkwash style" for p in PROMPTS]
    explicit = final(style_aligned_set(engine, styled.info["prompts"], "", options=SharingOptions(), seed=3,
                                       steps=2, guidance=5.0))
    zero = a_set(engine, st, weight=0.0, owner="local")
    assert np.abs(as_array(styled) - as_array(explicit)).max() > 2.0
    assert np.abs(as_array(zero) - as_array(explicit)).max() <= 1.0
    # the imported LoRA stays resident (switched off), as library adapters do: the base weights
    # are those of before, and the UNet computes exactly what it computed before
    base_before, base_after = base_weights(before_unet), base_weights(library.snapshot(engine.pipe.unet))
    assert base_after.keys() == base_before.keys()
    assert all(np.array_equal(base_before[k], base_after[k]) for k in base_after)
    assert np.array_equal(before_image, plain(engine))
    with pytest.raises(gr.Error, match="Use it as"):
        tab.import_lora(file=str(path), use_as="both", request=fake_request())
