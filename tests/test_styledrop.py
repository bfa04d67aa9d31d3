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
    """A loop with round 1 trained (the linear, LoRA-compatible form), 6 candidates scored; also
    what the trainer saw."""
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
                              recipe_hook=lambda r: seen.setdefault("recipe", r), form="linear", **GRID))
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
    """The linear form: before any step the adapter is the paper's initialisation: U = 0 (so
    the UNet computes exactly what the base model does), D truncated normal with std 0.02
    (|D| <= 2 std); and it sits on the output Linear of the feed-forward (ff.net.2) of every
    transformer block, nothing else."""
    from core.train import Trainer

    recipe = sd.make_recipe(engine, [(style_image(), "a square in flat style")], rank=4, form="linear")
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
    assert sd.clip_picks(cands, k=2, text_weight=0.3, per_prompt=False) == [101, 103]
    assert sd.clip_picks(cands, k=1, text_weight=0.3, per_prompt=True) == [101, 103, 104]
    assert sd.clip_picks(cands, mode="threshold", threshold=0.435, text_weight=0.3) == [100, 101, 103]
    assert sd.clip_picks(cands, k=2, text_weight=1.0, per_prompt=False) == [102, 104]  # text score alone
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
    out = sd.clip_feedback(engine, rid, owner="local", mode="top_k", k=2, text_weight=w, per_prompt=False)
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


# --------------------------------------------------------------------------- the paper's adapter (issue 17)

def gelu_tanh(z: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (jax.nn.gelu's default, the paper's Fig. S1), written out."""
    return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))


def test_gelu_module_is_x_plus_U_gelu_D_x_by_hand():
    """The module against a hand-written float64 x + U GELU(D x) on random tensors (and with a
    weight w: x + w U GELU(D x)); U starts at zero, so a fresh module is the identity."""
    from core.styledrop_adapter import GeluAdapter

    rng = np.random.default_rng(3)
    a = GeluAdapter(d=12, rank=3).double()
    assert torch.count_nonzero(a.up) == 0 and a.down.shape == (3, 12) and a.up.shape == (12, 3)
    x = rng.normal(size=(2, 5, 12))
    assert torch.equal(a(torch.from_numpy(x)), torch.from_numpy(x))  # the identity at step 0
    D, U = rng.normal(size=(3, 12)), rng.normal(size=(12, 3))
    with torch.no_grad():
        a.down.copy_(torch.from_numpy(D))
        a.up.copy_(torch.from_numpy(U))
    expected = x + gelu_tanh(x @ D.T) @ U.T
    np.testing.assert_allclose(a(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a(torch.from_numpy(x), weight=0.4).detach().numpy(),
                               x + 0.4 * gelu_tanh(x @ D.T) @ U.T, rtol=1e-12, atol=1e-12)
    # not the linear layer of before: the GELU matters here
    assert np.abs(expected - (x + x @ D.T @ U.T)).max() > 0.1


def unet_call(engine, x, emb, kw):
    with torch.no_grad():
        return engine.pipe.unet(x, torch.tensor([500]), encoder_hidden_states=emb, **kw).sample


def test_gelu_adapter_hooks_after_every_feed_forward_and_restores_the_unet(engine):
    """Training form: one hook on the FF of each of the 8 transformer blocks, 2 r d trainable
    parameters per block (counted by hand), identity at step 0 (U = 0); with U set, each FF's
    output becomes out + U GELU(D out) (float64 by hand) and the UNet's output changes;
    removing it leaves the UNet bit-identical (state dict, modules, no hooks, same output)."""
    from core.styledrop_adapter import Training, feed_forwards, hooks_on
    from core.train import Trainer

    unet = engine.pipe.unet
    t = Trainer(engine, sd.make_recipe(engine, [(style_image(), "a square in flat style")], rank=4),
                TrainSettings(steps=1))
    t._cache(ctx())
    emb, kw = t._cond(["a square in flat style"])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    library.disable_all(unet)
    snap, modules, hooks = library.snapshot(unet), [n for n, _ in unet.named_modules()], hooks_on(unet)
    base = unet_call(engine, x, emb, kw)
    blocks = [n for n, _ in unet.named_modules() if re.fullmatch(r".*transformer_blocks\.\d+", n)]
    train = Training(unet, rank=4, generator=torch.Generator().manual_seed(1))
    try:
        assert sorted(feed_forwards(unet)) == sorted(blocks) and len(blocks) == 8
        assert hooks_on(unet) == hooks + 8
        assert sum(p.numel() for p in train.parameters()) == 8 * (4 * 64 + 64 * 4) == 4096  # D, U per block
        assert all(torch.count_nonzero(train.adapter.block(b).up) == 0 for b in blocks)
        every_d = torch.cat([train.adapter.block(b).down.detach().flatten() for b in blocks])
        # D: truncated normal, std 0.02, cut at 2 std (std of the truncated law 0.88 x 0.02); 2048 draws
        assert every_d.abs().max() <= 0.04 + 1e-6 and 0.015 < float(every_d.std()) < 0.020
        assert torch.equal(unet_call(engine, x, emb, kw), base)  # U = 0: exactly the base model
        with torch.no_grad():
            for p in train.parameters():
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
        ff = unet.get_submodule(blocks[0]).ff
        h = torch.randn(2, 7, ff.net[0].proj.in_features, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            hooked = ff(h).double().numpy()
            train.remove()
            plain = ff(h).double().numpy()
        D = train.adapter.block(blocks[0]).down.detach().double().numpy()
        U = train.adapter.block(blocks[0]).up.detach().double().numpy()
        np.testing.assert_allclose(hooked, plain + gelu_tanh(plain @ D.T) @ U.T, rtol=1e-4, atol=1e-5)
        train = Training(unet, rank=4, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            for p in train.parameters():
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
        assert (unet_call(engine, x, emb, kw) - base).abs().max() > 1e-3
    finally:
        train.remove()
    assert hooks_on(unet) == hooks and [n for n, _ in unet.named_modules()] == modules
    after = library.snapshot(unet)
    assert after.keys() == snap.keys() and all(torch.equal(snap[k], after[k]) for k in snap)
    assert torch.equal(unet_call(engine, x, emb, kw), base)


@pytest.fixture(scope="module")
def gelu_round(engine):
    """Round 1 in the default (the paper's GELU) form; the UNet before and after."""
    loop = sd.create_loop(engine, [style_image(2)], owner="local", content_description="a gradient square",
                          style_descriptor="glow gradient")
    from core.styledrop_adapter import hooks_on

    library.disable_all(engine.pipe.unet)
    before, hooks = library.snapshot(engine.pipe.unet), hooks_on(engine.pipe.unet)
    grads = []
    res = last(sd.train_round(engine, loop.id, TrainSettings(**CFG), owner="local", contents=["a cat"],
                              sample_steps=2, step_hook=lambda s: grads.append(
                                  [n for n, p in engine.pipe.unet.named_parameters() if p.requires_grad])))
    # the UNet right after the round (later tests of the module may load other adapters)
    after, hooks_after = library.snapshot(engine.pipe.unet), hooks_on(engine.pipe.unet)
    return dict(loop=loop, result=res, before=before, hooks=hooks, grads=grads, after=after, hooks_after=hooks_after)


def test_gelu_round_trains_saves_in_its_form_and_leaves_the_unet_as_it_was(engine, gelu_round):
    from safetensors.torch import load_file

    from core.styledrop_adapter import FORM

    info = gelu_round["result"].info
    assert info["trainable_params"] == 8 * 2 * 4 * 64 == 4096  # sum over blocks of 2 r d, by hand
    assert all(names == [] for names in gelu_round["grads"])  # no UNet weight trains, only D and U
    a = sd.store_of(engine).get_adapter(info["adapter_id"], "local")
    assert a.extra["adapter_form"] == FORM and a.method == "styledrop" and a.rank == 4
    tensors = load_file(str(a.path))
    assert len(tensors) == 16 and all(".ff.styledrop_gelu.lora_" in k for k in tensors)
    assert all(torch.count_nonzero(v) > 0 for k, v in tensors.items() if k.endswith("lora_B.weight"))  # U learned
    after = gelu_round["after"]
    assert after.keys() == gelu_round["before"].keys()
    assert all(torch.equal(gelu_round["before"][k], after[k]) for k in after)
    assert gelu_round["hooks_after"] == gelu_round["hooks"]


def test_a_gelu_adapter_is_never_exported_as_a_plain_lora(engine, gelu_round):
    """No LoRA layout holds x + U·GELU(D·x): the store's own export refuses it (an id typed into
    another tab's export), pointing to the StyleDrop tab's linearised export."""
    from core.errors import UserError

    aid = gelu_round["result"].info["adapter_id"]
    for fmt in ("kohya", "diffusers"):
        with pytest.raises(UserError, match="GELU form.*StyleDrop Loop tab"):
            sd.store_of(engine).export(aid, "local", fmt=fmt)


def test_gelu_adapter_loads_for_generation_by_hand_and_only_inside_the_block(engine, gelu_round):
    """`active` puts the stored GELU adapter on through hooks: each FF's output is then
    out + U GELU(D out) with D, U read from the file (float64 by hand); after the block the
    hooks are gone and the UNet computes the base model bit for bit."""
    from safetensors.torch import load_file

    from core.styledrop_adapter import feed_forwards, hooks_on

    aid = gelu_round["result"].info["adapter_id"]
    a = sd.store_of(engine).get_adapter(aid, "local")
    tensors = load_file(str(a.path))
    unet = engine.pipe.unet
    name, ff = next(iter(feed_forwards(unet).items()))
    h = torch.randn(2, 5, ff.net[0].proj.in_features, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = ff(h).double().numpy()
    hooks = hooks_on(unet)
    with library.adapters(engine).active({aid: 1.0}, "local"):
        assert hooks_on(unet) == hooks + 8
        with torch.no_grad():
            hooked = ff(h).double().numpy()
    assert hooks_on(unet) == hooks
    D = tensors[f"unet.{name}.ff.styledrop_gelu.lora_A.weight"].double().numpy()
    U = tensors[f"unet.{name}.ff.styledrop_gelu.lora_B.weight"].double().numpy()
    np.testing.assert_allclose(hooked, plain + gelu_tanh(plain @ D.T) @ U.T, rtol=1e-4, atol=1e-6)
    assert np.abs(hooked - plain).max() > 1e-5  # the trained adapter does something
    base = pixels(engine, "a cat in glow gradient style", {})
    styled = pixels(engine, "a cat in glow gradient style", {aid: 1.0})
    assert np.array_equal(pixels(engine, "a cat in glow gradient style", {}), base)
    assert np.abs(styled - base).max() > 0
    with pytest.raises(UserError, match="not a LoRA"):
        library.adapters(engine).ensure(aid, "local")


def test_eq4_by_hand_and_its_plain_cfg_case():
    """Eq. 4: G^(t) + lA (G^(t) - G(t)) + lB (G(t) - G(n)), numbers worked by hand; lA = -1 is
    the base model's plain CFG at w = 1 + lB; an adapter at the identity (G^ = G) gives plain
    CFG for any lA."""
    N = torch.tensor([1.0, -2.0, 0.5])   # G(n): base, unconditional
    B = torch.tensor([2.0, 0.0, 0.5])    # G(t): base, conditional
    A = torch.tensor([4.0, 1.0, -0.5])   # G^(t): adapted, conditional
    # 4 + 2 (4 - 2) + 5 (2 - 1) = 13;  1 + 2 (1 - 0) + 5 (0 + 2) = 13;  -0.5 + 2 (-1) + 5 * 0 = -2.5
    torch.testing.assert_close(sd.eq4(N, B, A, 2.0, 5.0), torch.tensor([13.0, 13.0, -2.5]))
    # plain CFG (diffusers: u + w (c - u)) with w = 1 + lB = 5
    torch.testing.assert_close(sd.eq4(N, B, A, -1.0, 4.0), N + 5.0 * (B - N))
    torch.testing.assert_close(sd.eq4(N, B, B, 1.7, 4.0), N + 5.0 * (B - N))
    torch.testing.assert_close(sd.eq4(N, B, A, 0.0, 0.0), A)  # lA = lB = 0: the adapted model alone


def test_adapter_guidance_in_the_denoising_loop(engine, gelu_round):
    """Inside `adapter_guidance` a CFG-batched UNet call returns, in both halves, Eq. 4 on the
    three predictions computed separately (base on the negative half, base on the prompt half,
    the adapted model on the prompt half); hooks gone after. And in the pipeline, lA = -1 with
    lB = w - 1 generates what plain CFG at w generates with no adapter."""
    from core.styledrop_adapter import hooks_on

    aid = gelu_round["result"].info["adapter_id"]
    unet = engine.pipe.unet
    pipe = engine.pipe
    emb, neg, pooled, neg_pooled = pipe.encode_prompt("a cat in glow gradient style", device=engine.device,
                                                      num_images_per_prompt=1, do_classifier_free_guidance=True)
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]], dtype=emb.dtype)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))

    def run(xb, e, p, t):
        with torch.no_grad():
            return unet(xb, torch.tensor(500), encoder_hidden_states=e,
                        added_cond_kwargs={"text_embeds": p, "time_ids": t}, return_dict=False)[0]

    n_pred = run(x, neg, neg_pooled, time_ids)
    b_pred = run(x, emb, pooled, time_ids)
    with library.adapters(engine).active({aid: 1.0}, "local"):
        a_pred = run(x, emb, pooled, time_ids)
    hooks = hooks_on(unet)
    with sd.adapter_guidance(engine, {aid: 1.0}, "local", 1.5, 4.0):
        both = run(torch.cat([x, x]), torch.cat([neg, emb]), torch.cat([neg_pooled, pooled]),
                   torch.cat([time_ids, time_ids]))
    assert hooks_on(unet) == hooks
    expected = a_pred + 1.5 * (a_pred - b_pred) + 4.0 * (b_pred - n_pred)
    scale = float(expected.abs().max())
    torch.testing.assert_close(both[:1], expected, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(both[1:], expected, rtol=0, atol=1e-5 * scale)
    assert (a_pred - b_pred).abs().max() > 1e-4 * scale  # the adapter's term is really there
    # the pipeline: lA = -1, lB = 4 is plain CFG at 5 on the base model
    with sd.sampling(engine, {aid: 1.0}, "local", (-1.0, 4.0)) as w:
        assert w == 5.0
        guided = np.asarray(engine.text_to_image(ctx(), ["a cat in glow gradient style"], seed=3, steps=3,
                                                 guidance=w)[0], dtype=np.float32)
    plain = pixels(engine, "a cat in glow gradient style", {}, seed=3)
    assert np.abs(guided - plain).max() <= 1.0


def test_clip_feedback_default_is_the_papers_best_text_score_per_prompt():
    """By default CLIP keeps, per content prompt, the one candidate with the best CLIP
    image-text score (the style score plays no part), worked by hand."""
    cands = [cand(0, "a cat", 0.30, 0.10),   # best text score for "a cat"
             cand(1, "a cat", 0.10, 0.90),
             cand(2, "a tree", 0.20, 0.95),
             cand(3, "a tree", 0.25, 0.05),  # best for "a tree"
             cand(4, "a boat", 0.50, 0.40)]  # alone
    assert sd.clip_picks(cands) == [100, 103, 104]
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(sd.clip_feedback).parameters.items()}
    assert (defaults["mode"], defaults["k"], defaults["text_weight"], defaults["per_prompt"]) == \
        ("top_k", 1, 1.0, True)


def test_subject_and_style_by_mixing_predictions(engine, gelu_round):
    """The paper's "my content in my style" (Eqs. 5-6): inside the block a CFG-batched UNet call
    returns (1 - g) [A_s + lA (A_s - B_t) + lB (B_t - N)] + g [A_c + lA (A_c - B_c) + lB (B_c - N)],
    each prediction computed separately (A_s: the style adapter on t, B_t / B_c: the base model on t /
    on c (t without its style phrase), A_c: the subject adapter on c, N: the base model on the
    negative); and the job generates with it."""
    from core.styledrop_adapter import hooks_on

    subj = Image.fromarray(np.full((64, 64, 3), (30, 200, 60), np.uint8))
    recipe = db.make_recipe(engine, [subj], identifier="sks", class_noun="dog", prior=False, rank=4,
                            sample_prompts=[])
    trained = last(train(engine, recipe, TrainSettings(steps=2, learning_rate=1e-2), owner="local"))
    subject_id = trained.info["adapter_id"]
    style_id = gelu_round["result"].info["adapter_id"]
    pipe, unet = engine.pipe, engine.pipe.unet
    t_emb, n_emb, t_pool, n_pool = pipe.encode_prompt("a sks dog in glow gradient style", device=engine.device,
                                                      num_images_per_prompt=1, do_classifier_free_guidance=True)
    c_emb, _, c_pool, _ = pipe.encode_prompt("a sks dog", device=engine.device, num_images_per_prompt=1,
                                             do_classifier_free_guidance=True)
    ids = torch.tensor([[64, 64, 0, 0, 64, 64]], dtype=t_emb.dtype)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8))

    def run(xb, e, p, t, weights=None):
        with library.adapters(engine).active(weights or {}, "local"), torch.no_grad():
            return unet(xb, torch.tensor(400), encoder_hidden_states=e,
                        added_cond_kwargs={"text_embeds": p, "time_ids": t}, return_dict=False)[0]

    N, B_t, B_c = run(x, n_emb, n_pool, ids), run(x, t_emb, t_pool, ids), run(x, c_emb, c_pool, ids)
    A_s = run(x, t_emb, t_pool, ids, {style_id: 1.0})
    A_c = run(x, c_emb, c_pool, ids, {subject_id: 1.0})
    g, la, lb = 0.6, 1.5, 4.0
    expected = (1 - g) * (A_s + la * (A_s - B_t) + lb * (B_t - N)) + g * (A_c + la * (A_c - B_c) + lb * (B_c - N))
    hooks = hooks_on(unet)
    with sd.subject_style_guidance(engine, style_adapter_id=style_id, subject_adapter_id=subject_id, owner="local",
                                   content_prompt="a sks dog", gamma=g, lambda_a=la, lambda_b=lb):
        both = run(torch.cat([x, x]), torch.cat([n_emb, t_emb]), torch.cat([n_pool, t_pool]), torch.cat([ids, ids]))
    assert hooks_on(unet) == hooks
    scale = float(expected.abs().max())
    torch.testing.assert_close(both, torch.cat([expected, expected]), rtol=0, atol=1e-5 * scale)
    assert (A_c - B_c).abs().max() > 1e-4 * scale and (A_s - B_t).abs().max() > 1e-4 * scale
    res = last(sd.generate_with_subject(engine, style_adapter_id=style_id, subject_adapter_id=subject_id,
                                        prompts=["a sks dog in glow gradient style"], owner="local", mix="predictions",
                                        gamma=g, lambdas=(la, lb), seed=5, steps=2))
    assert len(res.images) == 1 and res.info["mix"] == "predictions" and hooks_on(unet) == hooks
    with pytest.raises(UserError, match="predictions or the weights"):
        sd.generate_with_subject(engine, style_adapter_id=style_id, subject_adapter_id=None, prompts=["a cat"],
                                 owner="local", mix="both")
