"""StyleDrop (issue 7) on the tiny family: the adapter, feedback rounds, CLIP feedback, raters,
persistence, and StyleDrop + DreamBooth. CPU, 64 px, a few steps per round."""
from __future__ import annotations

import queue
import re
from types import SimpleNamespace

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
from core.train import TrainSettings, train

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
            # the adapter being trained (resident library adapters may be "train-..." too: adopted copies)
            an = next(k for k, m in layer.lora_A.items() if hasattr(m, "parametrizations"))
            D = layer.lora_A[an].parametrizations.weight.original.detach().clone()
            U = layer.lora_B[an].weight.detach().clone()
            h = torch.randn(3, lin.in_features)
            with torch.no_grad():
                seen["forward"] = (layer(h), lin(h), lin.weight.detach().clone(), lin.bias.detach().clone(), h)
            seen["D"], seen["U"], seen["layer"] = D, U, name

    before = {k.replace(".base_layer", ""): v.clone() for k, v in library.snapshot(engine.pipe.unet).items()
              if "lora_" not in k}  # (earlier tests may have left peft wrappers: base_layer names)
    res = last(sd.train_round(engine, loop.id, TrainSettings(**CFG), owner="local", metrics=metrics, step_hook=hook,
                              recipe_hook=lambda r: seen.setdefault("recipe", r), **GRID))
    after = {k.replace(".base_layer", ""): v for k, v in library.snapshot(engine.pipe.unet).items() if "lora_" not in k}
    return dict(loop=loop, result=res, seen=seen, grads=grads, before=before, after=after)


def test_training_text_and_prompts():
    assert sd.training_text("a cat", "watercolor painting") == "a cat in watercolor painting style"
    assert (sd.training_text(" a  cat ", "melting golden 3d rendering style")
            == "a cat in melting golden 3d rendering style")
    assert sd.content_of("a cat in oil style", "oil") == "a cat"
    with pytest.raises(UserError, match="style descriptor"):
        sd.training_text("a cat", "  ")


def test_adapter_is_the_identity_at_step_0_after_every_feed_forward(engine):
    """Before any step the adapter is the paper's initialisation: U = 0 (so the UNet computes
    exactly what the base model does), D truncated normal with std 0.02 (|D| <= 2 std); and it
    sits on the output Linear of the feed-forward (ff.net.2) of every transformer block, nothing
    else."""
    from core.train import Trainer

    recipe = sd.make_recipe(engine, [(style_image(), "a square in flat style")], rank=4)
    t = Trainer(engine, recipe, TrainSettings(steps=1, seed=2))
    t._cache(ctx())
    unet = engine.pipe.unet
    blocks = [n for n, _ in unet.named_modules() if re.fullmatch(r".*transformer_blocks\.\d+", n)]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb, kw = t._cond(["a square in flat style"])
    with torch.no_grad():
        library.disable_all(unet)
        base = unet(x, torch.tensor([500]), encoder_hidden_states=emb, **kw).sample
    try:
        t._attach()
        placed = sorted(n for n, m in unet.named_modules()
                        if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and t.adapter_name in m.lora_A)
        assert len(blocks) == 8 and placed == sorted(f"{b}.ff.net.2" for b in blocks)
        for name in placed:
            layer = unet.get_submodule(name)
            U = layer.lora_B[t.adapter_name].weight
            D = layer.lora_A[t.adapter_name].parametrizations.weight.original
            assert U.shape == (64, 4) and torch.count_nonzero(U) == 0
            assert D.shape == (4, 64) and D.abs().max() <= 0.04 + 1e-6
        every_d = torch.cat([unet.get_submodule(n).lora_A[t.adapter_name].parametrizations.weight.original
                             .detach().flatten() for n in placed])
        # a normal truncated at 2 std has std 0.88 x 0.02 = 0.0176; 2048 draws
        assert 0.015 < float(every_d.std()) < 0.020, float(every_d.std())
        with torch.no_grad():
            adapted = unet(x, torch.tensor([500]), encoder_hidden_states=emb, **kw).sample
        torch.testing.assert_close(adapted, base, rtol=0, atol=1e-6)
    finally:
        t._detach(failed=True)


def cand(i, prompt, text, style):
    return SimpleNamespace(id=100 + i, position=i, prompt=prompt, scores={"clip_text": text, "clip_style": style})


def test_clip_picks_by_hand():
    """CLIP feedback picks by w * text + (1 - w) * style, numbers worked by hand (w = 0.3)."""
    cands = [cand(0, "a cat", 0.30, 0.50),   # 0.09 + 0.35 = 0.44
             cand(1, "a cat", 0.10, 0.70),   # 0.03 + 0.49 = 0.52
             cand(2, "a tree", 0.90, 0.20),  # 0.27 + 0.14 = 0.41
             cand(3, "a tree", 0.20, 0.60),  # 0.06 + 0.42 = 0.48
             cand(4, "a boat", 0.50, 0.40)]  # 0.15 + 0.28 = 0.43
    assert sd.pick_score(cands[0].scores, 0.3) == pytest.approx(0.44)
    assert sd.clip_picks(cands, k=2, text_weight=0.3) == [101, 103]
    assert sd.clip_picks(cands, k=1, text_weight=0.3, per_prompt=True) == [101, 103, 104]
    assert sd.clip_picks(cands, mode="threshold", threshold=0.435, text_weight=0.3) == [100, 101, 103]
    assert sd.clip_picks(cands, k=2, text_weight=1.0) == [102, 104]  # text score alone
    tie = [cand(0, "a", 0.5, 0.5), cand(1, "a", 0.5, 0.5)]
    assert sd.clip_picks(tie, k=1) == [100]  # ties keep the earlier candidate


def test_training_set_is_the_style_image_and_exactly_the_liked_candidates(tmp_path):
    """Round n + 1 trains on the style image plus the candidates with net score >= 1 over all
    raters (CLIP one of them), each with its own prompt; worked out by hand on a store."""
    from core.store import Store

    with Store(tmp_path / "library") as store:
        loop = store.create_loop(owner="alice", style_image=style_image(), name="neon",
                                 content_description="a gradient square", style_descriptor="neon gradient",
                                 published=True)
        rnd = store.add_round(loop.id, "alice")
        imgs = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(5)]
        c = store.add_candidates(rnd.id, "alice",
                                 [(im, f"thing {i} in neon gradient style") for i, im in enumerate(imgs)])
        store.rate(c[0].id, "alice", 1)                               # +1: liked
        store.rate(c[1].id, "alice", 1)
        store.rate(c[1].id, "bob", -1)                                # 0: not liked
        store.rate_many({c[2].id: 1}, sd.CLIP_RATER, viewer="alice")  # CLIP alone: liked
        store.rate(c[3].id, "bob", -1)                                # -1
        store.rate(c[4].id, "alice", 1)
        store.rate(c[4].id, "bob", 1)                                 # +2: liked
        style, liked, ids, number = sd.training_set(store, loop.id, "alice")
    assert number == 2 and ids == [c[0].id, c[2].id, c[4].id]
    assert [p for _, p in style] == ["a gradient square in neon gradient style"]
    assert np.array_equal(np.asarray(style[0][0]), np.asarray(style_image()))
    assert [p for _, p in liked] == ["thing 0 in neon gradient style", "thing 2 in neon gradient style",
                                     "thing 4 in neon gradient style"]
    assert [np.asarray(im)[0, 0, 0] for im, _ in liked] == [0, 80, 160]


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
    res = last(sd.train_round(engine, loop.id, TrainSettings(**CFG), owner="local", metrics=metrics,
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
    last(sd.train_round(engine, loop.id, TrainSettings(steps=1, learning_rate=1e-3), owner="local",
                        contents=["a cat"], sample_steps=1))
    with pytest.raises(UserError, match="No candidate of round 1 is liked"):
        sd.train_round(engine, loop.id, TrainSettings(steps=1), owner="local", contents=["a cat"])
    store = sd.store_of(engine)
    (c,) = store.candidates(store.rounds(loop.id, "local")[0].id, "local")
    with pytest.raises(UserError, match="not found"):  # a private loop: only its owner rates
        sd.rate(engine, c.id, "visitor:b", -1)
    with pytest.raises(UserError, match="owner"):  # somebody else's loop (published): rate only
        sd.store_of(engine).publish_loop(loop.id, "local")
        sd.train_round(engine, loop.id, TrainSettings(steps=1), owner="visitor:z", contents=["a cat"])


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
    """StyleDrop + DreamBooth: both adapters active, each with its weight, compute what the base
    UNet computes with w_style U D W2 added to every ff.net.2 and w_subject B A to the subject's
    projections (merged by hand from the stored files): the same noise prediction for several
    weights, the same image; and the weights matter, far beyond the tolerance."""
    from .lora_oracle import merged_pipe, pixels as stack, predict, unet_inputs

    subj = Image.fromarray(np.full((64, 64, 3), (30, 200, 60), np.uint8))
    recipe = db.make_recipe(engine, [subj], identifier="sks", class_noun="dog", prior=False, rank=4,
                            sample_prompts=[])
    res = last(train(engine, recipe, TrainSettings(steps=3, learning_rate=1e-2), owner="local"))
    subject_id, style_id = res.info["adapter_id"], round1["result"].info["adapter_id"]
    store = sd.store_of(engine)
    prompt = sd.subject_style_prompt(store.get_adapter(subject_id, "local"), "neon gradient")
    assert prompt == "a sks dog in neon gradient style"
    files = {i: store.load_adapter(i, "local")[0] for i in (style_id, subject_id)}
    inputs = unet_inputs(engine, prompt)
    unet = engine.pipe.unet
    with library.adapters(engine).active({}, "local"):
        base = predict(unet, inputs)
    scale = float((base ** 2).mean().sqrt())
    seen = {}
    for weights in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.0), (0.0, 1.0)):
        with library.adapters(engine).active(dict(zip((style_id, subject_id), weights)), "local"):
            ours = predict(unet, inputs)
        pipe, merged = merged_pipe(engine, [(files[style_id], weights[0], ""), (files[subject_id], weights[1], "")])
        assert merged == 8 + 64  # every ff.net.2, and the subject's to_q/k/v/out.0
        torch.testing.assert_close(ours, predict(pipe.unet, inputs), rtol=0, atol=1e-5 * scale)
        seen[weights] = ours
    for a, b in (((1.0, 1.0), (0.5, 1.0)), ((1.0, 1.0), (1.0, 0.0)), ((1.0, 1.0), (0.0, 1.0))):
        assert (seen[a] - seen[b]).abs().max() > 1e-3 * scale, (a, b)  # 100x the tolerance
    # the image too
    both = pixels(engine, prompt, {style_id: 1.0, subject_id: 1.0})
    pipe, _ = merged_pipe(engine, [(files[style_id], 1.0, ""), (files[subject_id], 1.0, "")])
    oracle = stack(engine.text_to_image(ctx(), [prompt], seed=5, steps=3, pipe=pipe))[0]
    assert np.abs(both - oracle).max() <= 3 and np.abs(both - oracle).mean() <= 0.1
    res2 = last(sd.generate_with_subject(engine, style_adapter_id=style_id, subject_adapter_id=subject_id,
                                         prompts=[prompt], owner="local", seed=5, steps=3))
    assert np.abs(np.asarray(res2.images[0], dtype=np.float32) - both).max() <= 1.0


def test_sd15_round(tmp_path):
    """The same recipe on the SD 1.5 classes (tiny-sd): its 2 transformer blocks, 2 r d each."""
    e = Engine("tiny-sd", data_dir=tmp_path)
    e.load()
    loop = sd.create_loop(e, [style_image()], owner="local", content_description="a square", style_descriptor="flat")
    res = last(sd.train_round(e, loop.id, TrainSettings(steps=1, learning_rate=1e-3), owner="local",
                              contents=["a cat"], sample_steps=1))
    layers = sd.ff_out_layers(e.pipe.unet)
    assert layers and res.info["trainable_params"] == sum(2 * 4 * lin.out_features for lin in layers.values())
    assert res.info["round"] == 1 and len(res.images) == 1
