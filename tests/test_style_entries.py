"""Styles of their own in the library (issue 18): saved from StyleDrop, B-LoRA, Style-Aligned
and AdaIN, listed for their owner, and used by the other methods (a Style-Aligned set from a
style's image with its inversion cached, AdaIN from its images, an icon set aligned to it).

The oracle for every use is the same method given the style's forms by hand: a set with the
entry equals the set with its image uploaded as the reference (and its adapter picked alone);
AdaIN with the entry equals AdaIN with its images uploaded."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from core import best_of, blora, library, styledrop, styles
from core.errors import UserError
from core.events import Progress, Result
from core.store import Store
from core.style_aligned import SharingOptions, style_aligned_set
from core.train import TrainSettings
from tests.browserkit import pick_library_style, styledrop_round_one, wait_for_text
from tests.tabkit import fake_request, final, last, make_ctx
from tests.test_blora import picture
from tests.test_styledrop import style_image

pytestmark = pytest.mark.usefixtures("one_thread")

OWNER = "carol"
PROMPTS = ["a cat", "a tree"]


def as_array(images):
    return np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) for i in images])


def ink(seed: int = 0) -> Image.Image:
    """A style image of our own: dark strokes on paper."""
    rng = np.random.default_rng(seed)
    a = np.full((64, 64, 3), 235, np.float32)
    for _ in range(6):
        r = rng.integers(4, 60)
        a[r:r + 3, :, :] = 20
    return Image.fromarray(np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- the store

def test_the_store_keeps_style_entries_per_owner(tmp_path):
    with Store(tmp_path / "lib") as store:
        e = store.save_style(owner="a", name="  ink   wash ", images=[ink(0), ink(1)], descriptor="ink wash",
                             base_model="m", source="adain", reference=ink(2), reference_prompt="strokes")
        assert (e.name, e.descriptor, e.source, e.adapter_id, e.reference_prompt) == \
            ("ink wash", "ink wash", "adain", None, "strokes")
        assert len(e.images) == 2 and e.reference is not None
        assert np.abs(as_array([Image.open(e.images[1])]) - as_array([ink(1)])).max() == 0   # PNG: lossless
        again = store.save_style(owner="a", name="ink wash", images=[ink(3)], base_model="m")
        assert again.name == "ink wash (2)"
        assert [s.id for s in store.list_styles("a")] == [again.id, e.id]
        assert store.list_styles("b") == [] and store.list_styles("a", base_model="other") == []
        with pytest.raises(UserError, match="not found"):
            store.get_style(e.id, "b")
        store.publish_style(e.id, "a")
        assert store.get_style(e.id, "b").published                      # published: b sees it ...
        with pytest.raises(UserError, match="owner"):
            store.delete_style(e.id, "b")                                # ... and cannot delete it
        store.publish_style(e.id, "a", published=False)
        with pytest.raises(UserError, match="not found"):
            store.get_style(e.id, "b")
        for bad, match in (([], "1 to 8"), ([ink()] * 9, "1 to 8")):
            with pytest.raises(UserError, match=match):
                store.save_style(owner="a", name="x", images=bad)
        with pytest.raises(UserError, match="name"):
            store.save_style(owner="a", name="   ", images=[ink()])
        assert store.check() == []
        store.delete_style(e.id, "a")
        assert [s.id for s in store.list_styles("a")] == [again.id]
        assert store.check() == []                                        # its files went with it
        assert store.stats()["style_files"] == 1


def test_a_style_keeps_only_adapters_its_owner_may_use(tmp_path):
    import torch

    with Store(tmp_path / "lib") as store:
        sd = {"unet.down.lora_A.weight": torch.zeros(2, 4), "unet.down.lora_B.weight": torch.zeros(4, 2)}
        cfg = {"unet": {"r": 2, "lora_alpha": 2, "target_modules": ["down"]}}
        theirs = store.save_adapter(owner="b", name="b's", method="styledrop", base_model="m", state_dict=sd,
                                    configs=cfg)
        with pytest.raises(UserError, match="not found"):
            store.save_style(owner="a", name="x", images=[ink()], adapter_id=theirs.id)
        store.publish_adapter(theirs.id, "b")
        ok = store.save_style(owner="a", name="x", images=[ink()], adapter_id=theirs.id)
        assert ok.adapter_id == theirs.id
        store.delete_adapter(theirs.id, "b")
        assert store.get_style(ok.id, "a").adapter_id is None            # the entry stays, without it


def test_the_inversion_cache_is_bounded_and_per_key(tmp_path):
    import torch

    from core.store_styles import MAX_STYLE_CACHE

    with Store(tmp_path / "lib") as store:
        e = store.save_style(owner="a", name="x", images=[ink()])
        for i in range(MAX_STYLE_CACHE + 2):
            store.style_cache_put(e.id, f"k{i}", {"z0": torch.full((1, 2), float(i))}, "a")
        assert store.style_cache_get(e.id, "k0", "a") is None                      # the oldest went first
        assert store.style_cache_get(e.id, "k1", "a") is None
        got = store.style_cache_get(e.id, f"k{MAX_STYLE_CACHE + 1}", "a")
        assert float(got["z0"][0, 0]) == MAX_STYLE_CACHE + 1
        assert store.stats()["style_files"] == 1 + MAX_STYLE_CACHE
        with pytest.raises(UserError, match="not found"):
            store.style_cache_put(e.id, "k", {"z0": torch.zeros(1)}, "b")          # not b's style
        assert store.check() == []


# ----------------------------------------------------------------------------- saved from each tab

@pytest.fixture(scope="module")
def made(engine):
    """Carol's StyleDrop round and B-LoRA (trained through core), and a style saved from each
    source: the round, the B-LoRA, a Style-Aligned set (its images and reference) and AdaIN's
    uploaded style image."""
    loop = styledrop.create_loop(engine, [style_image(2)], owner=OWNER, content_description="a gradient square",
                                 style_descriptor="glow gradient")
    rnd = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=10, learning_rate=5e-2), owner=OWNER,
                                      contents=["a cat"], sample_steps=2)).info
    bl = final(blora.train_blora(engine, [picture(1)], TrainSettings(steps=3, learning_rate=1e-2, sample_steps=2),
                                 owner=OWNER, rank=4, sample_prompts=[])).info["adapters"][0]["adapter_id"]
    the_set = final(style_aligned_set(engine, ["a house", "a boat"], "in pastel style", seed=7, steps=2,
                                      guidance=5.0))
    out = {"styledrop": styles.save_styledrop_round(engine, rnd["round_id"], owner=OWNER),
           "blora": styles.save_blora(engine, bl, owner=OWNER, name="stripes"),
           "style_aligned": styles.save_style(engine, owner=OWNER, name="pastel set", images=the_set.images,
                                              source="style_aligned", descriptor="pastel",
                                              reference=the_set.images[0],
                                              reference_prompt=the_set.info["prompts"][0]),
           "adain": styles.save_style(engine, owner=OWNER, name="ink", images=[ink(4)], source="adain",
                                      descriptor="ink wash")}
    return dict(out, round_adapter=rnd["adapter_id"], round_id=rnd["round_id"], blora_id=bl)


SOURCES = ["styledrop", "blora", "style_aligned", "adain"]


def test_styles_saved_from_each_tab_are_listed_with_their_forms(engine, made):
    found = {s.key: s for s in styles.library_styles(engine, owner=OWNER)}
    for src in SOURCES:
        assert made[src].key in found and found[made[src].key] == made[src]
    sd, bl, sa, ad = (made[s] for s in SOURCES)
    assert (sd.adapter_id, sd.method, sd.descriptor, sd.phrase) == \
        (made["round_adapter"], "styledrop", "glow gradient", "in glow gradient style")
    assert len(sd.images) == 1 and sd.reference is None
    assert (bl.adapter_id, bl.method, bl.name) == (made["blora_id"], "b-lora", "stripes")
    assert sa.adapter_id is None and len(sa.images) == 2 and sa.reference is not None
    assert sa.reference_prompt == "a house, in pastel style"
    assert (ad.adapter_id, ad.phrase, len(ad.images)) == (None, "in ink wash style", 1)
    # the adapters a saved style carries are not listed twice
    assert str(made["round_adapter"]) not in found and str(made["blora_id"]) not in found
    assert styles.reference_of(ad) == (ad.images[0], "an image in ink wash style")
    assert styles.reference_of(sa) == (sa.reference, "a house, in pastel style")
    assert styles.reference_of(styles.get_style(engine, made["round_adapter"], owner=OWNER)) is None


def test_what_a_new_styledrop_loop_takes_from_each_saved_style(engine, made):
    """(images, content, style words) for each source: the words a loop's training text needs,
    never a B-LoRA's trigger."""
    got = {src: styles.styledrop_start(engine, made[src], owner=OWNER) for src in SOURCES}
    assert {src: g[1:] for src, g in got.items()} == {
        "styledrop": ("an image", "glow gradient"), "blora": ("an image", "stripes"),
        "style_aligned": ("a house", "pastel"), "adain": ("an image", "ink wash")}
    assert [len(got[src][0]) for src in SOURCES] == [1, 1, 2, 1]
    for src in SOURCES:
        for image in got[src][0]:
            assert Image.open(image).size[0] > 0


def test_other_visitors_neither_list_nor_use_them(engine, made):
    assert styles.library_styles(engine, owner="dave") == []
    for src in SOURCES:
        with pytest.raises(UserError, match="not found"):
            styles.get_style(engine, made[src].key, owner="dave")
    store = library.get_store(engine)
    store.publish_style(made["adain"].entry_id, OWNER)
    try:
        seen = styles.get_style(engine, made["adain"].key, owner="dave")
        assert seen.images == made["adain"].images
        shared_sd = store.publish_style(made["styledrop"].entry_id, OWNER)
        # a published style whose adapter is private: dave gets its images, not the adapter
        assert shared_sd.adapter_id is not None
        assert styles.get_style(engine, made["styledrop"].key, owner="dave").adapter_id is None
    finally:
        store.publish_style(made["adain"].entry_id, OWNER, published=False)
        store.publish_style(made["styledrop"].entry_id, OWNER, published=False)
    with pytest.raises(UserError, match="not found"):                   # carol's round and B-LoRA are private
        styles.save_styledrop_round(engine, made["round_id"], owner="dave")
    with pytest.raises(UserError, match="not found"):
        styles.save_blora(engine, made["blora_id"], owner="dave")


def plain(engine):
    return as_array(final(engine.generate(["a lighthouse"], seed=5, steps=2)).images)


def a_set(engine, style, **kw):
    return final(style_aligned_set(engine, PROMPTS, "", options=SharingOptions(), seed=3, steps=2, guidance=5.0,
                                   library_style=style, owner=OWNER, stop_key=OWNER, **kw))


@pytest.mark.parametrize("src", SOURCES)
def test_a_set_from_each_saved_style_is_the_set_from_its_forms(engine, made, src):
    st = made[src]
    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)
    with_style = a_set(engine, st)
    without = a_set(engine, None)
    assert with_style.info["reference"] == "the library style's image"
    assert len(with_style.images) == len(PROMPTS) + 1 and len(without.images) == len(PROMPTS)
    assert np.abs(as_array(with_style.images[1:]) - as_array(without.images)).max() > 2.0
    # the oracle: the same set given the style's forms by hand (its image uploaded as the reference,
    # described as the style describes it, and its adapter picked alone)
    image, prompt = styles.reference_of(st)
    adapter = None if st.adapter_id is None else styles.get_style(engine, st.adapter_id, owner=OWNER)
    by_hand = final(style_aligned_set(
        engine, styles.styled_prompts(PROMPTS, st), "", options=SharingOptions(), seed=3, steps=2, guidance=5.0,
        reference_image=Image.open(image).convert("RGB"), reference_prompt=prompt, library_style=adapter,
        owner=OWNER, stop_key=OWNER))
    assert with_style.info["prompts"] == by_hand.info["prompts"]
    assert np.abs(as_array(with_style.images) - as_array(by_hand.images)).max() <= 2.0
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)
    assert np.array_equal(before_image, plain(engine))


def inverting(events) -> tuple[bool, Result]:
    seen = list(events)
    return any(isinstance(e, Progress) and "Invert" in (e.message or "") for e in seen), seen[-1]


def test_the_reference_inversion_is_cached_with_the_style(engine, made, tmp_path):
    store = Store(tmp_path / "fresh")             # a store of its own: the cache starts empty
    entry = store.save_style(owner=OWNER, name="c", images=[ink(9)], descriptor="ink",
                             base_model=library.base_model_id(engine))
    keep = engine.store
    engine._store = store
    try:
        st = styles.get_style(engine, f"s{entry.id}", owner=OWNER)

        def run(**kw):
            return inverting(style_aligned_set(engine, PROMPTS, "", seed=3, steps=kw.pop("steps", 2), guidance=5.0,
                                               library_style=st, owner=OWNER, stop_key=OWNER, **kw))
        inverted_1, first = run()
        inverted_2, second = run()
        assert inverted_1 and not inverted_2                           # the second set skipped the inversion
        assert np.abs(as_array(first.images) - as_array(second.images)).max() <= 1.0
        assert inverting(style_aligned_set(engine, PROMPTS, "", seed=3, steps=3, guidance=5.0, library_style=st,
                                           owner=OWNER, stop_key=OWNER))[0]              # other steps: inverted
        assert run(reference_prompt="something else")[0]                                # another prompt too
        assert run(inversion_guidance=1.0)[0]                                           # another guidance too
        assert store.stats()["style_files"] == 1 + 4
    finally:
        engine._store = keep
        store.close()


# ----------------------------------------------------------------------------- the tabs

@pytest.fixture(scope="module")
def visitors(engine, tmp_path_factory):
    """A shared instance's context, and two visitors' tokens and requests."""
    from core import identity

    data = tmp_path_factory.mktemp("style-tabs")
    ctx = make_ctx(engine, data, shared=True)
    tokens = {"erin": identity.issue(data), "finn": identity.issue(data)}
    reqs = {"erin": fake_request("e", "10.1.0.1"), "finn": fake_request("f", "10.1.0.2")}
    return ctx, tokens, reqs


def test_the_tabs_save_styles_and_other_tabs_use_them(engine, visitors, tmp_path):
    from tabs.adain import AdaINTab
    from tabs.blora import BLoRATab
    from tabs.style_aligned import StyleAlignedTab
    from tabs.styledrop import StyleDropTab

    ctx, tok, req = visitors
    sa, ad, sd, bl = (T(ctx) for T in (StyleAlignedTab, AdaINTab, StyleDropTab, BLoRATab))
    erin = sa.caller(req["erin"], tok["erin"]).owner
    as_erin = dict(visitor=tok["erin"], request=req["erin"])
    as_finn = dict(visitor=tok["finn"], request=req["finn"])
    # StyleDrop: a round of erin's, saved from the tab
    loop = styledrop.create_loop(engine, [style_image(5)], owner=erin, content_description="a square",
                                 style_descriptor="neon")
    rnd = final(styledrop.train_round(engine, loop.id, TrainSettings(steps=2, learning_rate=1e-2), owner=erin,
                                      contents=["a cat"], sample_steps=2)).info
    text = sd.save_style(str(rnd["round_id"]), "neon round", **as_erin)
    assert text.startswith("**Saved**") and "neon round" in text and f"the adapter #{rnd['adapter_id']}" in text
    with pytest.raises(gr.Error, match="not found"):
        sd.save_style(str(rnd["round_id"]), "mine now", **as_finn)
    with pytest.raises(gr.Error, match="Pick a round"):
        sd.save_style("", "x", **as_erin)
    with pytest.raises(gr.Error, match="Style name"):
        sd.save_style(str(rnd["round_id"]), "n" * 81, **as_erin)
    # B-LoRA: erin's, saved from the tab by its style-half pick
    made = final(blora.train_blora(engine, [picture(0)], TrainSettings(steps=2, learning_rate=1e-2, sample_steps=2),
                                   owner=erin, rank=4, sample_prompts=[])).info["adapters"][0]["adapter_id"]
    assert "**Saved**" in bl.save_style(str(made), "squares", **as_erin)
    with pytest.raises(gr.Error, match="Style half"):
        bl.save_style("", "x", **as_erin)
    # AdaIN: the uploaded style image with its words
    ink_png = tmp_path / "ink.png"
    ink(6).save(ink_png)
    assert "1 image(s)" in ad.save_style([str(ink_png)], "ink wash", "ink", **as_erin)
    with pytest.raises(gr.Error, match="Upload the style"):
        ad.save_style(None, "ink wash", "ink", **as_erin)
    with pytest.raises(gr.Error, match="Style words"):
        ad.save_style([str(ink_png)], "w" * 301, "ink", **as_erin)
    # Style-Aligned: the set shown, with the first image as its reference
    kw = dict(prompts="a cat\na tree", style="in chalk style", seed=3, steps=2, guidance=5.0, width=64, height=64,
              negative="", reference_file=None, reference_prompt="", adain_queries=True, adain_keys=True,
              adain_values=False, share_group_norm=False, full_attention_share=False, shared_score_shift=0.0,
              shared_score_scale=1.0, share_fraction=1.0)
    (gallery, *_), _ = last(sa.generate(**kw, **as_erin))
    shown = []                                     # what the page sends back: the gallery's files
    for i, item in enumerate(gallery):
        img, caption = item if isinstance(item, tuple) else (item, None)
        shown.append((str(tmp_path / f"set{i}.png"), caption))
        img.save(shown[-1][0])
    text = sa.save_style(shown, kw["prompts"], kw["style"], None, "", "", "chalk", **as_erin)
    assert "2 image(s), a reference image" in text
    with pytest.raises(gr.Error, match="Generate a set first"):
        sa.save_style([], kw["prompts"], kw["style"], None, "", "", "chalk", **as_erin)

    # all four are listed in every tab that takes styles, for erin only
    listed = {label: key for label, key in sa.library_style_choices(**as_erin)["choices"]}
    names = {label.split(" · ")[0]: key for label, key in listed.items()}
    assert {"neon round", "squares", "ink", "chalk"} <= set(names)
    assert all(names[n].startswith("s") for n in ("neon round", "squares", "ink", "chalk"))
    assert ad.library_style_choices(**as_erin)["choices"] == sa.library_style_choices(**as_erin)["choices"]
    assert sa.library_style_choices(**as_finn)["choices"] == [("None", "")]
    chalk = styles.get_style(engine, names["chalk"], owner=erin)
    assert chalk.reference_prompt == "a cat, in chalk style" and chalk.descriptor == "chalk"

    # AdaIN with a saved style = AdaIN with its images uploaded (the oracle); another visitor cannot
    content = tmp_path / "content.png"
    picture(0).save(content)
    args = ([str(content)], None, "", 1.0, False, False, None, 64, "built-in")
    for name in ("ink", "chalk", "neon round", "squares"):
        st = styles.get_style(engine, names[name], owner=erin)
        uploaded = []
        for i, p in enumerate(styles.images_of(engine, st, owner=erin)):
            uploaded.append(str(tmp_path / f"{name}-{i}.png"))
            Image.open(p).save(uploaded[-1])
        (picked, status), _ = last(ad.transfer(*args, library_style=names[name], **as_erin))
        (by_hand, _), _ = last(ad.transfer(args[0], uploaded, *args[2:], **as_erin))
        assert status.startswith("Done") and len(picked) == 1
        assert np.abs(as_array(picked) - as_array(by_hand)).max() <= 1.0
    (other, _), _ = last(ad.transfer(args[0], [str(ink_png)], *args[2:], **as_erin))
    assert np.abs(as_array(picked) - as_array(other)).max() > 2.0
    with pytest.raises(gr.Error, match="not found"):
        list(ad.transfer(*args, library_style=names["ink"], **as_finn))
    with pytest.raises(gr.Error, match="Library style"):
        list(ad.transfer(*args, library_style="s1; drop", **as_erin))


@pytest.mark.parametrize("src", SOURCES)
def test_an_icon_set_aligned_to_a_saved_style(engine, made, tmp_path, src):
    from core import vectorfusion

    def icons(style):
        seen = list(vectorfusion.icon_set(engine, ["a cup", "a key"], num_paths=2, live_steps=2, live_size=32,
                                          seed=1, steps=2, data_dir=tmp_path, owner=OWNER, library_style=style))
        the_set = next(e for e in seen if isinstance(e, Result) and e.info.get("stage") == "set")
        return the_set, seen[-1]

    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)
    plain_set, plain_icons = icons(None)
    styled_set, styled_icons = icons(made[src])          # its image (and its adapter, if any)
    assert len(styled_icons.images) == 2 and styled_icons.info["prompts"] == ["a cup", "a key"]
    assert styled_icons.info["reference"] == "the library style's image"
    assert len(styled_icons.info["svgs"]) == 2
    assert np.abs(as_array(styled_set.images[1:]) - as_array(plain_set.images)).max() > 2.0
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)
    assert np.array_equal(before_image, plain(engine))
    with pytest.raises(UserError, match="not found"):              # carol's style, named by dave
        list(vectorfusion.icon_set(engine, ["a cup"], num_paths=2, live_steps=2, live_size=32, steps=2,
                                   data_dir=tmp_path, owner="dave", library_style=made["adain"]))


def test_text_to_svg_samples_are_aligned_to_a_saved_style(engine, made, tmp_path):
    """With a saved style's image, VectorFusion's K samples are a Style-Aligned set to it (the
    oracle: that set made by hand, with the same seed, prompt and reference), then ranked."""
    from core import vectorfusion as vf
    from core.metrics import Metrics

    metrics = Metrics(tiny=True)
    st = made["adain"]

    def samples(style, k=2):
        seen = list(vf.text_to_svg(engine, "a cup", vf.VFOptions(style="pixel art", num_paths=4, steps=0, seed=4),
                                   k=k, sample_steps=2, sample_guidance=6.0, metrics=metrics, data_dir=tmp_path,
                                   owner=OWNER,
                                   library_style=style))
        return next(e for e in seen if isinstance(e, Result) and e.info.get("stage") == "candidates"), seen[-1]

    cands, done = samples(st)
    assert done.info["samples"] == "Style-Aligned to the library style's image" and len(cands.images) == 2
    from core.vector import results
    assert results.SvgRun.from_result(done).library_style == f"ink ({st.key}) × 1"     # what the tab shows
    prompt = vf.full_prompt(done.info["prompt"], "pixel art")
    image, ref_prompt = styles.reference_of(st)
    by_hand = final(style_aligned_set(engine, [prompt, prompt], "", seed=4, steps=2, guidance=6.0,
                                      reference_image=Image.open(image).convert("RGB"), reference_prompt=ref_prompt,
                                      owner=OWNER))
    assert np.abs(as_array(cands.images) - as_array(by_hand.images[1:])).max() <= 2.0
    plain_cands, plain_done = samples(None)
    assert "samples" not in plain_done.info
    assert np.abs(as_array(cands.images) - as_array(plain_cands.images)).max() > 2.0
    with pytest.raises(UserError, match="at most 7"):
        samples(st, k=8)
    with pytest.raises(UserError, match="not found"):              # carol's style, named by dave
        list(vf.text_to_svg(engine, "a cup", vf.VFOptions(style="pixel art", num_paths=4, steps=0), k=2,
                            sample_steps=2, metrics=metrics, data_dir=tmp_path, owner="dave", library_style=st))


@pytest.mark.browser
def test_browser_a_style_saved_in_adain_is_used_in_style_aligned_and_adain(live_app, page, tmp_path):
    """As a user: upload a style image in AdaIN Transfer and save it as a style; in Style-Aligned
    Set pick it (its image becomes the reference) and generate; back in AdaIN, after a reload,
    pick it as the only style and stylize."""
    import re

    ink(7).save(tmp_path / "ink.png")
    picture(0).save(tmp_path / "content.png")
    page.goto(live_app.url)
    page.get_by_role("tab", name="AdaIN Transfer", exact=True).click()
    tab = page.locator("#adain-tab")
    tab.locator("input[type=file][multiple]").nth(1).set_input_files(str(tmp_path / "ink.png"))
    page.locator("#adain-save-style").get_by_text("Save as a library style").click()
    page.locator("#adain-style-name").get_by_role("textbox").fill("browser ink")
    page.locator("#adain-style-words").get_by_role("textbox").fill("ink wash")
    page.locator("#adain-save-style-button").click()
    wait_for_text(page, "#adain-save-style-status", "Saved", timeout=60_000)
    key = re.search(r"\((s\d+):", page.locator("#adain-save-style-status").inner_text()).group(1)

    page.get_by_role("tab", name="Style-Aligned Set", exact=True).click()
    pick_library_style(page, "sa", f"browser ink · style: 1 image(s) · {key}")
    page.locator("#sa-prompts textarea").fill("A guitar\nA sailboat")
    page.locator("#sa-generate").click()
    wait_for_text(page, "#sa-metrics", "Library style", show=("#sa-status",))
    shown = page.locator("#sa-metrics").inner_text()
    assert f"browser ink ({key}) × 1; its image is the reference" in shown
    assert page.locator("#sa-gallery img").count() >= 3          # the reference, then the two prompts

    page.reload()
    page.get_by_role("tab", name="AdaIN Transfer", exact=True).click()
    tab = page.locator("#adain-tab")
    tab.locator("input[type=file][multiple]").nth(0).set_input_files(str(tmp_path / "content.png"))
    pick_library_style(page, "adain", f"browser ink · style: 1 image(s) · {key}")
    tab.get_by_role("button", name="Stylize").click()
    page.wait_for_function("() => document.querySelector('#adain-info').innerText.startsWith('Done: 1 image(s)')",
                           timeout=120_000)


@pytest.mark.browser
def test_browser_a_set_saved_as_a_style_aligns_an_icon_set(live_app, page):
    """As a user: make a Style-Aligned set, save it as a style, then in Text-to-SVG's Icon set pick
    it: the icons are made aligned to its image, and the status says so."""
    import re

    page.goto(live_app.url)
    page.locator("#sa-prompts textarea").fill("A lamp\nA chair")
    page.locator("#sa-generate").click()
    wait_for_text(page, "#sa-status", "Done")
    page.locator("#sa-save-style").get_by_text("Save as a library style").click()
    page.locator("#sa-style-name").get_by_role("textbox").fill("browser set")
    page.locator("#sa-save-style-button").click()
    wait_for_text(page, "#sa-save-style-status", "Saved", timeout=60_000)
    status = page.locator("#sa-save-style-status").inner_text()
    assert "2 image(s), a reference image" in status
    key = re.search(r"\((s\d+):", status).group(1)

    page.get_by_role("tab", name="Text-to-SVG").click()
    page.get_by_role("tab", name="Icon set").click()
    pick_library_style(page, "set", f"browser set · style: 2 image(s), reference · {key}")
    page.locator("#set-prompts textarea").fill("a cup\na key")
    page.locator("#set-run").click()
    wait_for_text(page, "#set-status", "icons.", timeout=180_000)
    done = page.locator("#set-status").inner_text()
    assert done.startswith("Done. 2 icons.") and f"browser set ({key}) × 1; every icon aligned to its image" in done


@pytest.fixture(scope="module")
def subject(engine):
    """Carol's DreamBooth subject ("sks dog"), a few steps: enough to change an image."""
    from core import dreambooth
    from core.train import train

    recipe = dreambooth.make_recipe(engine, [picture(0)], identifier="sks", class_noun="dog", prior=False, rank=4,
                                    sample_prompts=[])
    return final(train(engine, recipe, TrainSettings(steps=4, learning_rate=1e-2), owner=OWNER)).info["adapter_id"]


@pytest.mark.parametrize("src", ["styledrop", "blora"])
def test_a_subject_in_a_saved_style_with_an_adapter(engine, made, subject, src):
    """Personalize + a saved style that carries an adapter: the same generation as with that
    adapter picked as the library style (the oracle), and not the one without a style."""
    st = made[src]
    before_unet = library.snapshot(engine.pipe.unet)

    def pictures(style):
        return as_array(final(best_of.generate(engine, ["a sks dog"], {subject: 1.0}, style=style, owner=OWNER,
                                               seed=4, steps=2, guidance=5.0)).images)
    styled = pictures(st)
    by_hand = pictures(styles.get_style(engine, st.adapter_id, owner=OWNER))
    assert np.abs(styled - by_hand).max() <= 2.0
    assert np.abs(styled - pictures(None)).max() > 2.0
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)


def test_a_subject_in_a_saved_style_that_has_only_images(engine, made, subject, tmp_path):
    """Personalize + a style with no adapter: the prompts become a Style-Aligned set to the style's
    image with the subject on. The oracle: that set made by hand (reference uploaded, the subject's
    adapter on), its reference left out."""
    st = made["adain"]
    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)

    def pictures(style, weights, **kw):
        return final(best_of.generate(engine, ["a sks dog"], weights, style=style, owner=OWNER, seed=4, steps=2,
                                      guidance=5.0, **kw))
    without_subject = pictures(st, {})      # first: the style's cache now holds an inversion without the subject
    styled = pictures(st, {subject: 1.0})   # which must not be reused with the subject on
    assert len(styled.images) == 1 and styled.info["prompts"] == ["a sks dog, in ink wash style"]
    assert styled.info["reference"] == "the library style's image" and styled.info["library_style"]["key"] == st.key
    image, prompt = styles.reference_of(st)
    by_hand = final(style_aligned_set(engine, ["a sks dog, in ink wash style"], "", seed=4, steps=2, guidance=5.0,
                                      reference_image=Image.open(image).convert("RGB"), reference_prompt=prompt,
                                      owner=OWNER, adapters={subject: 1.0}))
    assert np.abs(as_array(styled.images) - as_array(by_hand.images[1:])).max() <= 2.0
    without_style = pictures(None, {subject: 1.0})
    assert np.abs(as_array(styled.images) - as_array(without_subject.images)).max() > 2.0
    assert np.abs(as_array(styled.images) - as_array(without_style.images)).max() > 2.0
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)
    assert np.array_equal(before_image, plain(engine))
    with pytest.raises(UserError, match="use 1 candidate"):
        pictures(st, {subject: 1.0}, candidates=2)
    with pytest.raises(UserError, match="not found"):                  # carol's subject, named by dave
        final(best_of.generate(engine, ["a dog"], {subject: 1.0}, style=st, owner="dave", seed=4, steps=2))


def test_a_new_styledrop_loop_from_a_saved_style(engine, visitors, tmp_path):
    """StyleDrop takes a library style as the style images of a new loop (its words filling the
    empty fields). The oracle: the same loop with the style's stored images uploaded and its words
    typed; the grid they sample must match. Another style gives another grid; none at all (no
    upload either) is refused, as is another visitor's style."""
    from tabs.styledrop import StyleDropTab

    ctx, tok, req = visitors
    sd = StyleDropTab(ctx)
    as_erin = dict(visitor=tok["erin"], request=req["erin"])
    as_finn = dict(visitor=tok["finn"], request=req["finn"])
    erin = sd.caller(req["erin"], tok["erin"]).owner
    store = library.get_store(engine)
    before_unet, before_image = library.snapshot(engine.pipe.unet), plain(engine)
    inked = styles.save_style(engine, owner=erin, name="ink for sd", images=[ink(7), ink(8)], source="adain",
                              descriptor="ink wash")
    chalk = styles.save_style(engine, owner=erin, name="chalk for sd", images=[picture(2)], source="style_aligned",
                              descriptor="", reference=picture(2), reference_prompt="a barn, in chalk style")
    kw = dict(steps=3, learning_rate=1e-2, rank=4, gradient_checkpointing=False, seed=0, prompts="a cat",
              samples_per_prompt=1, sample_steps=2, guidance=5.0, grid_seed=0)

    def start(files, content, style, key=None, who=as_erin):
        (status, _plot, *_view, info), _ = last(sd.train(None, files, content, style, "", **kw, library_style=key,
                                                         **who))
        assert "Done: round 1" in status, status
        loop = store.get_loop(info["loop_id"], erin)
        grid = [Image.open(c.path) for c in store.candidates(info["round_id"], erin)]
        return loop, styledrop.style_images(store, loop, erin), as_array(grid)

    loop, trained_on, grid = start(None, "", "", key=inked.key)
    assert (loop.content_description, loop.style_descriptor, loop.name) == ("an image", "ink wash", "ink for sd")
    assert len(trained_on) == 2
    uploaded = []
    for i, p in enumerate(inked.images):
        uploaded.append(str(tmp_path / f"ink-{i}.png"))
        Image.open(p).save(uploaded[-1])
    _, by_hand_images, by_hand = start(uploaded, "an image", "ink wash")
    assert np.abs(as_array(trained_on) - as_array(by_hand_images)).max() <= 1.0
    assert np.abs(grid - by_hand).max() <= 2.0
    # typed words win over the style's; a style from a Style-Aligned set brings its reference's content
    assert styles.styledrop_start(engine, chalk, owner=erin)[1:] == ("a barn", "chalk for sd")
    chalk_loop, _, chalk_grid = start(None, "a hut", "", key=chalk.key)
    assert (chalk_loop.content_description, chalk_loop.style_descriptor) == ("a hut", "chalk for sd")
    assert np.abs(grid - chalk_grid).max() > 2.0
    with pytest.raises(gr.Error, match="Upload a style image"):
        list(sd.train(None, None, "an image", "ink", "", **kw, **as_erin))
    with pytest.raises(gr.Error, match="not found"):
        list(sd.train(None, None, "", "", "", **kw, library_style=inked.key, **as_finn))
    after = library.snapshot(engine.pipe.unet)
    assert after.keys() == before_unet.keys() and all(np.array_equal(before_unet[k], after[k]) for k in after)
    assert np.array_equal(before_image, plain(engine))


@pytest.mark.browser
def test_browser_a_saved_style_starts_a_styledrop_loop(live_app, page, tmp_path):
    """As a user: a style saved (here through the API, from AdaIN) is picked under StyleDrop's
    "Style from the library": its words fill the fields, its image is shown, and Start a new loop
    trains round 1 on it with no upload."""
    import re

    from gradio_client import Client, handle_file

    ink(11).save(tmp_path / "ink.png")
    saved = Client(live_app.url, verbose=False).predict([handle_file(str(tmp_path / "ink.png"))], "sumi ink",
                                                        "sd browser ink", None, api_name="/adain_save_style")
    key = re.search(r"\((s\d+):", saved).group(1)
    page.goto(live_app.url)
    page.get_by_role("tab", name="StyleDrop Loop", exact=True).click()
    pick_library_style(page, "sd", f"sd browser ink · style: 1 image(s) · {key}")
    status = styledrop_round_one(page, images=1, style="sumi ink", content="an image")
    assert "trained on 1 style" in status
