"""StyleDrop (issue 7) on the tiny family: the adapter, feedback rounds, CLIP feedback, raters,
persistence, and StyleDrop + DreamBooth. CPU, 64 px, a few steps per round."""
from __future__ import annotations

import queue

import numpy as np
import pytest
import torch
from PIL import Image

from core import dreambooth as db
from core import library
from core import styledrop as sd
from core.engine import Engine
from core.errors import UserError
from core.events import Result
from core.jobs import Job, JobContext
from core.metrics import Metrics
from core.store import ALL
from core.train import TrainConfig, train

CFG = dict(steps=4, learning_rate=1e-2)
GRID = dict(contents=["a cat", "a tree", "a boat"], samples_per_prompt=2, sample_steps=2)


def style_image(seed=0):
    rng = np.random.default_rng(seed)
    base = np.zeros((64, 64, 3), np.float32)
    base[..., 0] = np.linspace(0, 255, 64)[None, :]
    base[..., 2] = np.linspace(255, 0, 64)[:, None]
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def last(events):
    evs = list(events)
    assert isinstance(evs[-1], Result)
    return evs[-1]


def ctx():
    return JobContext(Job("test", "test"), queue.Queue())


def pixels(engine, prompt, weights, viewer="local", seed=5):
    with library.adapters(engine).active(weights, viewer):
        img = engine.text_to_image(ctx(), [prompt], seed=seed, steps=3)[0]
    return np.asarray(img, dtype=np.float32)


@pytest.fixture(scope="module")
def metrics():
    return Metrics(tiny=True)


@pytest.fixture(scope="module")
def round1(engine, metrics):
    """A loop with round 1 trained, 6 candidates scored; also what the trainer saw."""
    loop = sd.create_loop(engine, [style_image()], owner="local", content_description="a gradient square",
                          style_descriptor="neon gradient")
    seen = {}
    grads = []

    def hook(step):
        unet = engine.pipe.unet
        grads.append(sorted(n for n, p in unet.named_parameters() if p.requires_grad))
        if step == CFG["steps"]:  # the trained D and U, and one adapted layer's forward now
            name, lin = next(iter(sd.ff_out_layers(unet).items()))
            layer = unet.get_submodule(name)
            an = next(iter(layer.lora_A.keys()))
            D = layer.lora_A[an].parametrizations.weight.original.detach().clone()
            U = layer.lora_B[an].weight.detach().clone()
            h = torch.randn(3, lin.in_features)
            with torch.no_grad():
                seen["forward"] = (layer(h), lin(h), lin.weight.detach().clone(), lin.bias.detach().clone(), h)
            seen["D"], seen["U"], seen["layer"] = D, U, name

    before = {k: v.clone() for k, v in library.snapshot(engine.pipe.unet).items() if "lora_" not in k}
    res = last(sd.train_round(engine, loop.id, TrainConfig(**CFG), owner="local", metrics=metrics, step_hook=hook,
                              recipe_hook=lambda r: seen.setdefault("recipe", r), **GRID))
    after = {k.replace(".base_layer", ""): v for k, v in library.snapshot(engine.pipe.unet).items() if "lora_" not in k}
    return dict(loop=loop, result=res, seen=seen, grads=grads, before=before, after=after)


def test_training_text_and_prompts():
    assert sd.training_text("a cat", "watercolor painting") == "a cat in watercolor painting style"
    assert sd.training_text(" a  cat ", "melting golden 3d rendering style") == "a cat in melting golden 3d rendering style"
    assert sd.content_of("a cat in oil style", "oil") == "a cat"
    with pytest.raises(UserError, match="style descriptor"):
        sd.training_text("a cat", "  ")


def test_only_adapter_parameters_train_and_count_matches_formula(engine, round1):
    info = round1["result"].info
    unet = engine.pipe.unet
    layers = sd.ff_out_layers(unet)
    assert len(layers) == 8  # tiny UNet: 8 transformer blocks, width 64
    formula = sum(2 * 4 * lin.out_features for lin in layers.values())  # D: r x d, U: d x r per block
    assert formula == 8 * 2 * 4 * 64 == 4096
    assert info["trainable_params"] == formula == sd.param_count(unet, 4)
    assert info["lora_numbers"] == 8 * 4 * (256 + 64)  # what the saved standard LoRA holds
    # at every step only D ("lora_A...parametrizations.weight.original") and U ("lora_B") required grad
    for names in round1["grads"]:
        assert len(names) == 16 and all(".ff.net.2." in n for n in names)
        assert all(n.endswith("parametrizations.weight.original") or ".lora_B." in n for n in names)
    # the base weights are bit-identical after training
    before, after = round1["before"], round1["after"]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_is_the_papers_residual_layer(engine, round1):
    seen = round1["seen"]
    D, U = seen["D"], seen["U"]
    assert D.shape == (4, 64) and U.shape == (64, 4) and U.abs().sum() > 0
    y, base_out, W2, b, h = seen["forward"]
    out = base_out
    expected = out + (out - b) @ D.T @ U.T  # out + U D (out - b): the adapter on the FF output without its bias
    assert torch.allclose(y, expected, atol=1e-5)
    # saved as a standard LoRA: lora_A = D W2, lora_B = U
    store = sd.store_of(engine)
    sdict, configs = store.load_adapter(round1["result"].info["adapter_id"], "local")
    key = f"unet.{seen['layer']}"
    assert torch.allclose(sdict[f"{key}.lora_A.weight"].float(), D @ W2, atol=1e-6)
    assert torch.allclose(sdict[f"{key}.lora_B.weight"].float(), U, atol=1e-6)
    assert configs["unet"]["r"] == 4


def test_round1_grid_is_stored_with_scores(engine, round1):
    info = round1["result"].info
    recipe = round1["seen"]["recipe"]
    assert [e.prompt for e in recipe.examples] == ["a gradient square in neon gradient style"]
    store = sd.store_of(engine)
    cands = store.candidates(info["round_id"], "local")
    assert len(cands) == 6
    assert [c.prompt for c in cands] == [f"{c} in neon gradient style" for c in GRID["contents"] for _ in range(2)]
    assert all({"clip_text", "clip_style"} <= set(c.scores) for c in cands)
    assert info["metrics"]["candidates"] == 6
    assert info["metrics"]["clip_text"] == pytest.approx(np.mean([c.scores["clip_text"] for c in cands]), abs=1e-4)


def test_clip_feedback_picks_the_top_scoring_candidates(engine, round1, metrics):
    store = sd.store_of(engine)
    rid = round1["result"].info["round_id"]
    cands = store.candidates(rid, "local")
    style = [style_image()]
    imgs = [Image.open(c.path).convert("RGB") for c in cands]
    text = metrics.clip_text_scores(imgs, [sd.content_of(c.prompt, "neon gradient") for c in cands])
    sty = metrics.clip_style_scores(imgs, style)
    w = 0.3
    combined = [w * t + (1 - w) * s for t, s in zip(text, sty)]
    order = sorted(range(len(cands)), key=lambda i: -combined[i])
    out = sd.clip_feedback(engine, rid, owner="local", mode="top_k", k=2, text_weight=w)
    assert set(out["picked"]) == {cands[i].id for i in order[:2]}
    clip = store.scores(rid, "local", raters=["clip"])
    assert {c for c, s in clip.items() if s.up} == set(out["picked"])
    # a threshold re-picks: CLIP's earlier thumbs are withdrawn
    thr = sorted(combined)[-3] - 1e-6
    out2 = sd.clip_feedback(engine, rid, owner="local", mode="threshold", threshold=thr, text_weight=w)
    assert set(out2["picked"]) == {cands[i].id for i in order[:3]}
    # per content prompt (the paper's CLIP feedback keeps the best per prompt)
    out3 = sd.clip_feedback(engine, rid, owner="local", mode="top_k", k=1, text_weight=1.0, per_prompt=True)
    best = {}
    for c, t in zip(cands, text):
        if c.prompt not in best or t > best[c.prompt][0]:
            best[c.prompt] = (t, c.id)
    assert set(out3["picked"]) == {v[1] for v in best.values()}
    assert {c for c, s in store.scores(rid, "local", raters=["clip"]).items() if s.up} == set(out3["picked"])
    sd.clip_feedback(engine, rid, owner="local", mode="threshold", threshold=99.0)  # nothing: CLIP withdraws all
    assert not any(s.up for s in store.scores(rid, "local", raters=["clip"]).values())
    with pytest.raises(UserError, match="reserved"):
        sd.rate(engine, cands[0].id, "clip", 1)


def test_round2_trains_on_exactly_the_liked_images_plus_style(engine, round1, metrics):
    store = sd.store_of(engine)
    loop = round1["loop"]
    rid = round1["result"].info["round_id"]
    c = store.candidates(rid, "local")
    with pytest.raises(UserError, match="not found"):    # a private loop: only its owner rates
        sd.rate(engine, c[2].id, "visitor:b", -1)
    store.publish_loop(loop.id, "local")                 # shared for rating
    sd.rate(engine, c[0].id, "local", 1)                 # liked
    sd.rate(engine, c[1].id, "local", 1)                 # liked by one person ...
    sd.rate(engine, c[2].id, "local", 1)
    sd.rate(engine, c[2].id, "visitor:b", -1)            # ... and disliked by another: net 0, not liked
    sd.rate(engine, c[3].id, "local", -1)                # disliked
    sd._rate_as_clip(store, {c[4].id: 1}, "local")             # CLIP pick + a person's thumbs down: net 0
    sd.rate(engine, c[4].id, "local", -1)
    sd._rate_as_clip(store, {c[5].id: 1}, "local")             # CLIP pick alone: liked
    style, liked, ids, number = sd.training_set(store, loop.id, "local")
    assert number == 2 and ids == [c[0].id, c[1].id, c[5].id]
    seen = {}
    res = last(sd.train_round(engine, loop.id, TrainConfig(**CFG), owner="local", metrics=metrics,
                              recipe_hook=lambda r: seen.setdefault("recipe", r), **GRID))
    ex = seen["recipe"].examples
    assert len(ex) == 4
    assert ex[0].prompt == "a gradient square in neon gradient style"
    assert np.array_equal(np.asarray(ex[0].image), np.asarray(style_image()))
    for e, cand in zip(ex[1:], [c[0], c[1], c[5]]):
        assert e.prompt == cand.prompt
        assert np.array_equal(np.asarray(e.image), np.asarray(Image.open(cand.path).convert("RGB")))
    disliked = [np.asarray(Image.open(x.path).convert("RGB")) for x in (c[2], c[3], c[4])]
    assert not any(np.array_equal(np.asarray(e.image), d) for e in ex for d in disliked)
    info = res.info
    assert info["round"] == 2 and info["trained_on"] == {"style_images": 1, "liked_candidates": ids}
    assert info["adapter_id"] != round1["result"].info["adapter_id"]  # a fresh adapter
    rows = sd.rounds_table(engine, loop.id, "local")
    assert [r["round"] for r in rows] == [1, 2] and rows[0]["liked"] == 3
    assert rows[1]["trained_on"] == "1 style + 3 liked"
    assert all(r["clip_text"] is not None and r["clip_style"] is not None for r in rows)


def test_next_round_needs_liked_images(engine, metrics):
    loop = sd.create_loop(engine, [style_image(1)], owner="local", content_description="a square",
                          style_descriptor="flat")
    last(sd.train_round(engine, loop.id, TrainConfig(steps=1, learning_rate=1e-3), owner="local",
                        contents=["a cat"], sample_steps=1))
    with pytest.raises(UserError, match="No candidate of round 1 is liked"):
        sd.train_round(engine, loop.id, TrainConfig(steps=1), owner="local", contents=["a cat"])
    with pytest.raises(UserError, match="owner"):  # somebody else's loop (published): rate only
        sd.store_of(engine).publish_loop(loop.id, "local")
        sd.train_round(engine, loop.id, TrainConfig(steps=1), owner="visitor:z", contents=["a cat"])


def test_raters_do_not_overwrite_each_other_and_survive_restart(engine, round1, tmp_path):
    store = sd.store_of(engine)
    loop = round1["loop"]
    store.publish_loop(loop.id, "local")  # others may now see and rate it
    rid = store.rounds(loop.id, "local")[0].id
    c = store.candidates(rid, "local")[0]
    sd.rate(engine, c.id, "visitor:alice", 1)
    sd.rate(engine, c.id, "visitor:bob", -1)
    sd.rate(engine, c.id, "visitor:carol", 1)
    sd.rate(engine, c.id, "visitor:alice", -1)  # alice changes her mind: her rating only
    sd.rate(engine, c.id, "visitor:alice", 1)
    view_a = sd.round_view(engine, rid, "visitor:alice")
    view_b = sd.round_view(engine, rid, "visitor:bob")
    ta = next(t for t in view_a["tiles"] if t.id == c.id)
    tb = next(t for t in view_b["tiles"] if t.id == c.id)
    assert (ta.mine, tb.mine) == (1, -1)
    before = store.scores(rid, ALL)
    votes = store.scores(rid, "local", exclude_raters=["local", "clip"])[c.id]
    assert (votes.up, votes.down) == (2, 1)
    # a restart: a new engine (new process state) on the same data folder
    e2 = Engine("tiny", data_dir=engine.data_dir)
    s2 = library.get_store(e2)
    assert s2 is not store
    assert [r.id for r in s2.rounds(loop.id, "visitor:alice")] == [r.id for r in store.rounds(loop.id, "local")]
    assert s2.scores(rid, ALL) == before
    assert s2.my_ratings(rid, "visitor:alice")[c.id] == 1 and s2.my_ratings(rid, "visitor:bob")[c.id] == -1
    rows = sd.rounds_table(e2, loop.id, "local")
    assert rows == sd.rounds_table(engine, loop.id, "local")
    # the round's adapter generates the same images after the restart (loaded from the library file)
    aid = round1["result"].info["adapter_id"]
    e2.load()
    a = pixels(engine, "a cat in neon gradient style", {aid: 1.0})
    b = pixels(e2, "a cat in neon gradient style", {aid: 1.0})
    assert np.abs(a - b).max() <= 1.0


def test_subject_and_style_adapters_together(engine, round1):
    """StyleDrop + DreamBooth: both active change the output relative to either alone."""
    subj = Image.fromarray(np.full((64, 64, 3), (30, 200, 60), np.uint8))
    recipe = db.make_recipe(engine, [subj], identifier="sks", class_noun="dog", prior=False, rank=4,
                            sample_prompts=[])
    res = last(train(engine, recipe, TrainConfig(steps=3, learning_rate=1e-2), owner="local"))
    subject_id, style_id = res.info["adapter_id"], round1["result"].info["adapter_id"]
    store = sd.store_of(engine)
    prompt = sd.subject_style_prompt(store.get_adapter(subject_id, "local"), "neon gradient")
    assert prompt == "a sks dog in neon gradient style"
    base = pixels(engine, prompt, {})
    style = pixels(engine, prompt, {style_id: 1.0})
    subject = pixels(engine, prompt, {subject_id: 1.0})
    both = pixels(engine, prompt, {style_id: 1.0, subject_id: 1.0})
    for other in (base, style, subject):
        assert np.abs(both - other).mean() > 0.05
    half = pixels(engine, prompt, {style_id: 0.5, subject_id: 1.0})
    assert np.abs(half - both).mean() > 0.01  # the weights matter
    res2 = last(sd.generate_with_subject(engine, style_adapter_id=style_id, subject_adapter_id=subject_id,
                                         prompts=[prompt], viewer="local", seed=5, steps=3))
    assert np.abs(np.asarray(res2.images[0], dtype=np.float32) - both).max() <= 1.0


def test_sd15_round(tmp_path):
    """The same recipe on the SD 1.5 classes (tiny-sd): its 2 transformer blocks, 2 r d each."""
    e = Engine("tiny-sd", data_dir=tmp_path)
    e.load()
    loop = sd.create_loop(e, [style_image()], owner="local", content_description="a square", style_descriptor="flat")
    res = last(sd.train_round(e, loop.id, TrainConfig(steps=1, learning_rate=1e-3), owner="local",
                              contents=["a cat"], sample_steps=1))
    layers = sd.ff_out_layers(e.pipe.unet)
    assert layers and res.info["trainable_params"] == sum(2 * 4 * lin.out_features for lin in layers.values())
    assert res.info["round"] == 1 and len(res.images) == 1
