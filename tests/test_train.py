"""The shared adapter trainer and the DreamBooth recipe on the tiny family (CPU, 64 px)."""
from __future__ import annotations

import json
import queue
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core import dreambooth as db
from core import library
from core.engine import Engine
from core.errors import Cancelled, UserError
from core.events import Notice, Result
from core.jobs import Job, JobContext
from core.train import Checkpointed, Recipe, Example, AdapterSpec, TrainConfig, TrainStep, Trainer, train

from .conftest import ROOT

# every Linear/Conv kind of the tiny UNet: enough capacity for a tiny run to show learning
WIDE = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_in", "conv_out", "time_emb_proj"]


def subject(color, seed=0, size=64):
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.clip(np.array(color) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8))


def ctx():
    return JobContext(Job("test", "test"), queue.Queue())


def run(events):
    """Consume a job's events; return (result, list of events)."""
    seen = []
    for ev in events:
        seen.append(ev)
    assert isinstance(seen[-1], Result)
    return seen[-1], seen


def pixels(engine, prompts, seed=3, steps=3, weights=None, viewer="local"):
    with library.adapters(engine).active(weights or {}, viewer):
        imgs = engine.text_to_image(ctx(), prompts, seed=seed, steps=steps)
    return np.stack([np.asarray(i, dtype=np.float32) for i in imgs])


def base_weights(unet):
    return {k: v.clone() for k, v in library.snapshot(unet).items() if "lora_" not in k}


def strip_peft(sd):
    return {k.replace(".base_layer", ""): v for k, v in sd.items() if "lora_" not in k}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on two shared, busy cores two OpenMP threads spin against each other
    (measured 10-100x slower steps); restored for the other modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = Engine("tiny", data_dir=tmp_path_factory.mktemp("train-engine"))
    e.load()
    e.pristine_layout = layout(e.pipe.unet)  # the never-adapted UNet, before any test touches it
    return e


def wrapped(unet):
    """Modules that are peft wrappers (with or without adapters in them)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]


def layout(unet):
    """Module names and types, and state_dict keys: what peft wrapping changes."""
    return {n: type(m) for n, m in unet.named_modules()}, sorted(unet.state_dict())


def assert_pristine(engine):
    unet = engine.pipe.unet
    assert wrapped(unet) == []  # no peft.BaseTunerLayer left, not even an empty one
    modules, keys = layout(unet)
    assert modules == engine.pristine_layout[0]
    assert keys == engine.pristine_layout[1]
    assert not hasattr(unet, "peft_config") and library.peft_names(unet) == []


@pytest.fixture(scope="module")
def subjects():
    return [subject((210, 50, 40), s) for s in range(3)]


def recipe(engine, subjects, **kw):
    kw.setdefault("prior", False)
    kw.setdefault("num_class_images", 2)
    kw.setdefault("class_steps", 2)
    kw.setdefault("sample_prompts", [])
    return db.make_recipe(engine, subjects, identifier="sks", class_noun="dog", **kw)


def test_identifier_help(engine):
    tok = engine.pipe.tokenizer
    rare = db.rare_tokens(tok, n=5)
    assert len(rare) == 5
    for t in rare:
        assert db.check_identifier(tok, t) == []  # one rare token: no warning
    assert any("common" in w for w in db.check_identifier(tok, "dog"))
    assert any("splits into" in w for w in db.check_identifier(tok, "qwezxv"))
    with pytest.raises(UserError):
        db.check_identifier(tok, "two words")
    assert db.instance_prompt("sks", "dog") == "a sks dog" and db.class_prompt("dog") == "a dog"


def test_subject_images_cropped_and_checked(tmp_path):
    wide = Image.new("RGB", (200, 100), (10, 200, 10))
    out = db.subject_images([wide, wide], 64)
    assert [im.size for im in out] == [(64, 64)] * 2
    with pytest.raises(UserError, match="between 1 and 20"):
        db.subject_images([], 64)
    with pytest.raises(UserError, match="between 1 and 20"):
        db.subject_images([wide] * 21, 64)
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="could not be read"):
        db.subject_images([str(bad)], 64)


def test_only_adapter_params_train_and_base_is_untouched(engine, subjects):
    unet = engine.pipe.unet
    before = base_weights(unet)
    trainable: list[set[str]] = []

    def hook(step):
        trainable.append({n for n, p in unet.named_parameters() if p.requires_grad})

    r = recipe(engine, subjects)
    t = Trainer(engine, r, TrainConfig(steps=3, learning_rate=1e-3), step_hook=hook)
    out = t.run(ctx())
    name = out.adapter_name
    assert trainable and all(trainable[0] == s for s in trainable)
    assert trainable[0] and all(f".{name}." in n and ".lora_" in n for n in trainable[0])
    targets = {n.split(".lora_")[0].replace(".base_layer", "") for n in trainable[0]}
    assert all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0") for n in targets)
    assert out.trainable_params == sum(p.numel() for n, p in unet.named_parameters() if f".{name}." in n)
    assert not any(p.requires_grad for p in unet.parameters())  # frozen again
    after = strip_peft(library.snapshot(unet))
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)  # base weights bit-identical
    unet.delete_adapters(name)
    assert not hasattr(unet, "peft_config") and wrapped(unet)  # diffusers leaves empty wrappers
    library.unload_peft(unet)
    assert_pristine(engine)


def test_dreambooth_drives_instance_loss_down(engine, subjects):
    r = recipe(engine, subjects, target_modules=WIDE)
    result, events = run(train(engine, r, TrainConfig(steps=25, learning_rate=1e-2)))
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [s.step for s in steps] == list(range(1, 26))  # every point streamed, none coalesced
    before, after = result.info["loss_before"], result.info["loss_after"]
    print(f"instance loss on fixed draws: {before:.4f} -> {after:.4f} (x{before / after:.2f})")
    assert after < before / 2
    library.adapters(engine).unload_all()


def test_adapter_usable_at_once_and_removal_restores_bit_identical(engine, subjects):
    unet = engine.pipe.unet
    library.adapters(engine).unload_all()
    assert_pristine(engine)
    plain = pixels(engine, ["a dog", "a sks dog"])
    r = recipe(engine, subjects, sample_prompts=["a sks dog"], target_modules=WIDE)
    result, events = run(train(engine, r, TrainConfig(steps=4, learning_rate=1e-2, sample_every=2,
                                                      sample_steps=2)))
    aid = result.info["adapter_id"]
    assert library.adapters(engine).loaded()[aid].startswith("train-")  # adopted: the trained copy itself
    with_adapter = pixels(engine, ["a dog", "a sks dog"], weights={aid: 1.0})
    assert np.abs(with_adapter - plain).mean() > 1.0
    assert np.array_equal(pixels(engine, ["a dog", "a sks dog"]), plain)  # disabled outside requests
    half = pixels(engine, ["a dog", "a sks dog"], weights={aid: 0.5})
    assert not np.array_equal(half, with_adapter) and not np.array_equal(half, plain)
    assert wrapped(unet)
    library.adapters(engine).remove(aid)  # the last adapter: its wrappers go with it
    assert_pristine(engine)
    assert np.array_equal(pixels(engine, ["a dog", "a sks dog"]), plain)
    # the library copy loads back and gives the same images as the in-place adapter did
    again = pixels(engine, ["a dog", "a sks dog"], weights={aid: 1.0})
    np.testing.assert_allclose(again, with_adapter, atol=1.0)
    assert wrapped(unet)
    library.adapters(engine).unload_all()
    assert_pristine(engine)
    assert np.array_equal(pixels(engine, ["a dog", "a sks dog"]), plain)


def test_several_adapters_at_once(engine, subjects):
    r1 = recipe(engine, subjects, name="one", target_modules=WIDE)
    a1 = run(train(engine, r1, TrainConfig(steps=3, learning_rate=1e-2, seed=1)))[0].info["adapter_id"]
    r2 = recipe(engine, [subject((30, 40, 220), 9)], name="two", target_modules=WIDE)
    a2 = run(train(engine, r2, TrainConfig(steps=3, learning_rate=1e-2, seed=2)))[0].info["adapter_id"]
    one = pixels(engine, ["a sks dog"], weights={a1: 1.0})
    two = pixels(engine, ["a sks dog"], weights={a2: 1.0})
    both = pixels(engine, ["a sks dog"], weights={a1: 1.0, a2: 0.7})
    assert not np.array_equal(both, one) and not np.array_equal(both, two)
    library.adapters(engine).unload_all()


def test_cancel_keeps_last_checkpoint_and_resume_continues(engine, subjects, tmp_path):
    cfg = dict(steps=6, learning_rate=5e-3, checkpoint_every=2)
    root = tmp_path / "runs"
    # reference: six steps in one go
    straight, _ = run(train(engine, recipe(engine, subjects, name="straight"), TrainConfig(**cfg),
                            run_root=tmp_path / "ref"))
    ref_sd, _ = library.get_store(engine).load_adapter(straight.info["adapter_id"], "local")
    library.adapters(engine).unload_all()

    # stopped after step 5: the checkpoint of step 4 stays
    def stop_at_5(step):
        if step == 5:
            engine.cancel("stopper")
    events = []
    with pytest.raises(Cancelled):
        for ev in train(engine, recipe(engine, subjects, name="resumed"), TrainConfig(**cfg), run_root=root,
                        owner="stopper", step_hook=stop_at_5):
            events.append(ev)
    assert [e.step for e in events if isinstance(e, Checkpointed)] == [2, 4]
    ckpts = list(root.glob("*/ckpt-*"))
    assert [c.name for c in ckpts] == ["ckpt-000004"]
    assert json.loads((ckpts[0] / "meta.json").read_text())["step"] == 4
    assert not list(root.glob("*/.tmp-*"))
    assert library.peft_names(engine.pipe.unet) == []  # the stopped run's adapter is gone

    # the same inputs again: resumes at step 5 and ends where the straight run ended
    resumed, events = run(train(engine, recipe(engine, subjects, name="resumed"), TrainConfig(**cfg), run_root=root))
    assert any(isinstance(e, Notice) and "step 4" in e.message for e in events)
    assert [e.step for e in events if isinstance(e, TrainStep)] == [5, 6]
    assert resumed.info["resumed_from"] == 4
    sd, _ = library.get_store(engine).load_adapter(resumed.info["adapter_id"], "local")
    assert set(sd) == set(ref_sd)
    for k in ref_sd:
        torch.testing.assert_close(sd[k], ref_sd[k], rtol=1e-5, atol=1e-6)
    assert not list(root.glob("*/ckpt-*"))  # a finished run removes its checkpoints
    library.adapters(engine).unload_all()


def test_class_images_generated_once_and_cached(engine, subjects):
    r = recipe(engine, subjects, prior=True, num_class_images=3)
    _, events = run(train(engine, r, TrainConfig(steps=1)))
    assert len(r.prior) == 3 and r.prior[0].prompt == "a dog"
    assert not any(isinstance(e, Notice) and "Reusing" in e.message for e in events)
    r2 = recipe(engine, subjects, prior=True, num_class_images=2)
    _, events = run(train(engine, r2, TrainConfig(steps=1)))
    assert any(isinstance(e, Notice) and "Reusing 2 cached class images" in e.message for e in events)
    assert [np.asarray(e.image).tobytes() for e in r2.prior] == [np.asarray(e.image).tobytes() for e in r.prior[:2]]
    library.adapters(engine).unload_all()


def test_prior_preservation_loss_and_class_images_from_the_frozen_model(engine, subjects):
    """loss = instance loss + lambda * prior loss, the prior set being the frozen model's own
    images of "a [class]" (same seeds as a plain generation)."""
    r = recipe(engine, subjects, prior=True, num_class_images=2, prior_weight=0.5, class_steps=2)
    _, events = run(train(engine, r, TrainConfig(steps=3, learning_rate=1e-3)))
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert all(s.prior_loss is not None for s in steps)
    for s in steps:
        assert s.loss == pytest.approx(s.instance_loss + 0.5 * s.prior_loss, rel=1e-6)
    frozen = engine.text_to_image(ctx(), ["a dog", "a dog"], seed=0, steps=2, guidance=5.0)
    assert [np.asarray(e.image).tobytes() for e in r.prior] == [np.asarray(im).tobytes() for im in frozen]
    library.adapters(engine).unload_all()


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("STUDIO_EXPERIMENTS"),
                    reason="minutes of CPU; set STUDIO_EXPERIMENTS=1 (and see the xfail reason)")
@pytest.mark.xfail(strict=False, reason="On the random-weight tiny family the frozen model does not model its "
                   "own class samples, so the prior loss pulls the class prompt away from it as much as "
                   "instance training does: measured 508 (with prior) vs 144 (without) pixel MSE; needs a "
                   "real base model (GPU) to show the paper's effect.")
def test_prior_preservation_keeps_the_class_closer_to_the_frozen_model(tmp_path):
    """A real experiment. The frozen tiny model first learns a class ("a dog" -> bluish images),
    so that its own class samples are what it models. Then the same DreamBooth run (red subject,
    "a sks dog") with and without the prior-preservation loss, same seeds and steps: with it, the
    class prompt's images stay closer to the frozen model's."""
    e = Engine("tiny", data_dir=tmp_path)
    e.load()
    unet = e.pipe.unet
    pre = Recipe(method="pretrain", name="pre", adapter=AdapterSpec(full=True),
                 examples=[Example(subject((40, 60, 200), 100 + i), "a dog") for i in range(6)])
    t = Trainer(e, pre, TrainConfig(steps=1))
    t._cache(ctx())
    from diffusers import DDPMScheduler
    t.noise_scheduler = DDPMScheduler.from_config(e.pipe.scheduler.config)
    unet.requires_grad_(True).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, 6, (4,), generator=g)
        t._losses(unet, t.latents[idx], ["a dog"] * 4, g, False).mean().backward()
        opt.step()
        opt.zero_grad()
    unet.requires_grad_(False).eval()

    frozen = pixels(e, ["a dog"] * 4, seed=100, steps=6)
    drift = {}
    for prior in (True, False):
        r = db.make_recipe(e, [subject((210, 50, 40), s) for s in range(3)], identifier="sks", class_noun="dog",
                           prior=prior, num_class_images=6, class_steps=6, sample_prompts=[], rank=4)
        res, _ = run(train(e, r, TrainConfig(steps=30, learning_rate=5e-3, eval_draws=1)))
        adapted = pixels(e, ["a dog"] * 4, seed=100, steps=6, weights={res.info["adapter_id"]: 1.0})
        drift[prior] = float(((adapted - frozen) ** 2).mean())
        library.adapters(e).unload_all()
    print(f"class-prompt drift from the frozen model (pixel MSE): with prior {drift[True]:.1f}, "
          f"without {drift[False]:.1f}")
    assert drift[True] < 0.9 * drift[False]


def test_full_finetune_sd15_restores_the_model_and_keeps_a_lora(tmp_path):
    e = Engine("tiny-sd", data_dir=tmp_path)
    e.load()
    unet = e.pipe.unet
    before = library.snapshot(unet)
    plain = pixels(e, ["a sks dog"])
    r = db.make_recipe(e, [subject((210, 50, 40), s) for s in range(2)], identifier="sks", class_noun="dog",
                       prior=False, full=True, rank=8, sample_prompts=[])
    res, _ = run(train(e, r, TrainConfig(steps=4, learning_rate=1e-3)))
    after = strip_peft(library.snapshot(unet))  # the extracted LoRA is resident (disabled)
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert 0 < res.info["extracted_energy"] <= 1
    assert res.info["trainable_params"] == sum(v.numel() for v in before.values() if v.is_floating_point()) \
        or res.info["trainable_params"] > 100_000
    a = library.get_store(e).get_adapter(res.info["adapter_id"], "local")
    assert a.hyperparameters["full_finetune"] is True and a.rank == 8
    assert np.abs(pixels(e, ["a sks dog"], weights={a.id: 1.0}) - plain).mean() > 0.5
    assert np.array_equal(pixels(e, ["a sks dog"]), plain)
    library.adapters(e).unload_all()


def test_full_finetune_refused_on_sdxl(engine, subjects):
    r = recipe(engine, subjects, full=True)
    with pytest.raises(UserError, match="SD 1.5 only"):
        run(train(engine, r, TrainConfig(steps=1)))
    assert library.peft_names(engine.pipe.unet) == []


def test_saved_adapter_survives_an_engine_restart(engine, subjects):
    r = recipe(engine, subjects, target_modules=WIDE)
    res, _ = run(train(engine, r, TrainConfig(steps=3, learning_rate=1e-2)))
    aid = res.info["adapter_id"]
    here = pixels(engine, ["a sks dog"], weights={aid: 1.0})
    library.adapters(engine).unload_all()
    fresh = Engine("tiny", data_dir=engine.data_dir)  # a restart: same data folder, new process state
    fresh.load()
    a = library.get_store(fresh).get_adapter(aid, "local")
    assert a.method == "dreambooth" and a.trigger_words == "sks" and a.class_name == "dog"
    assert a.extra["instance_prompt"] == "a sks dog" and a.hyperparameters["steps"] == 3
    np.testing.assert_allclose(pixels(fresh, ["a sks dog"], weights={aid: 1.0}), here, atol=1.0)
    assert library.get_store(fresh).check() == []


def test_bad_settings_are_clear_errors(engine, subjects):
    with pytest.raises(UserError, match="Steps"):
        TrainConfig(steps=0).check()
    with pytest.raises(UserError, match="learning rate"):
        TrainConfig(learning_rate=float("nan")).check()
    with pytest.raises(UserError, match="class"):
        db.make_recipe(engine, subjects, identifier="sks", class_noun="  ")
    with pytest.raises(UserError, match="match no module|do not fit"):
        run(train(engine, recipe(engine, subjects, target_modules=["no_such_layer"]), TrainConfig(steps=1)))
    assert library.peft_names(engine.pipe.unet) == []


def test_headless_cli(tmp_path):
    imgs = []
    for i in range(2):
        p = tmp_path / f"s{i}.png"
        subject((210, 50, 40), i, size=80).save(p)
        imgs.append(str(p))
    out = subprocess.run(
        [sys.executable, "-m", "core.train", "dreambooth", "--model", "tiny", "--data-dir", str(tmp_path / "data"),
         "--images", *imgs, "--identifier", "sks", "--class", "dog", "--class-images", "2", "--steps", "3",
         "--sample-steps", "2", "--lr", "1e-3", "--export", str(tmp_path / "out.safetensors")],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env=dict(__import__("os").environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 3/3 loss" in out.stdout
    summary = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["adapter_name"] == "sks dog" and summary["trainable_params"] > 0
    assert (tmp_path / "out.safetensors").stat().st_size > 0
