"""Owner-scoped training checkpoints, and multi-step starts that are all or nothing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core import library
from core import styledrop as sd
from core.errors import Cancelled, UserError
from core.events import Notice, Result
from core.events import Checkpointed
from core.train import Example, Recipe, AdapterSpec, TrainSettings, train

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(seed=0, size=64):
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), 230, np.float32)
    arr[16:48, 16:48] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8))


def recipe():
    return Recipe(method="dreambooth", name="probe", examples=[Example(photo(1), "a sks dog")],
                  adapter=AdapterSpec(rank=2), trigger_words="sks", class_name="dog", sample_prompts=[])


def test_a_checkpoint_is_its_owners_alone(engine, tmp_path):
    """Visitor A stops a run (a checkpoint stays). Visitor B trains the same image with the same
    settings: B starts afresh (A's checkpoint tells B nothing), and B finishing leaves A's
    checkpoint where it was; A then resumes from it."""
    cfg = dict(steps=4, learning_rate=1e-3, checkpoint_every=1)
    root = tmp_path / "training"

    def stop_at_2(step):
        if step == 2:
            engine.cancel("page-a")

    a_events = []
    with pytest.raises(Cancelled):
        for ev in train(engine, recipe(), TrainSettings(**cfg), run_root=root, owner="visitor:a", stop_key="page-a",
                        step_hook=stop_at_2):
            a_events.append(ev)
    assert [e.step for e in a_events if isinstance(e, Checkpointed)] == [1, 2]
    a_ckpts = sorted(root.rglob("ckpt-*"))
    assert len(a_ckpts) == 1 and "visitor" in a_ckpts[0].parent.parent.name  # under A's own folder

    b_events = list(train(engine, recipe(), TrainSettings(**cfg), run_root=root, owner="visitor:b"))
    assert isinstance(b_events[-1], Result) and b_events[-1].info["resumed_from"] == 0
    assert not any(isinstance(e, Notice) and "esum" in e.message for e in b_events)
    assert a_ckpts[0].is_dir()  # B's finished run removed only B's own checkpoints

    a_again = list(train(engine, recipe(), TrainSettings(**cfg), run_root=root, owner="visitor:a"))
    assert a_again[-1].info["resumed_from"] == 2
    library.adapters(engine).unload_all()


def style(seed=0):
    rng = np.random.default_rng(seed)
    base = np.zeros((64, 64, 3), np.float32)
    base[..., 0] = np.linspace(0, 255, 64)[None, :]
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def test_a_first_round_that_fails_leaves_no_loop(engine, monkeypatch):
    store = sd.store_of(engine)
    before = {lp.id for lp in store.list_loops("visitor:x")}
    cfg = TrainSettings(steps=2, learning_rate=1e-3)
    # an error inside the job (after the loop was made)
    def broken(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sd, "_generate_grid", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        list(sd.first_round(engine, [style()], cfg, owner="visitor:x", content_description="a square",
                            style_descriptor="neon", contents=["a cat"], samples_per_prompt=1, sample_steps=2))
    assert {lp.id for lp in store.list_loops("visitor:x")} == before
    assert store.list_adapters("visitor:x", method=sd.METHOD) == []  # the round's adapter went too
    monkeypatch.undo()
    # a refusal before the job starts (bad grid) stores nothing either
    with pytest.raises(UserError, match="Sampling steps"):
        list(sd.first_round(engine, [style()], cfg, owner="visitor:x", content_description="a square",
                            style_descriptor="neon", contents=["a cat"], samples_per_prompt=1, sample_steps=999))
    assert {lp.id for lp in store.list_loops("visitor:x")} == before
    # and a good one makes exactly one loop with one round
    evs = list(sd.first_round(engine, [style()], cfg, owner="visitor:x", content_description="a square",
                              style_descriptor="neon", contents=["a cat"], samples_per_prompt=1, sample_steps=2))
    loop_id = evs[-1].info["loop_id"]
    assert [r.number for r in store.rounds(loop_id, "visitor:x")] == [1]
    library.adapters(engine).unload_all()


def test_a_stopped_grid_keeps_no_half_round(engine):
    store = sd.store_of(engine)
    loop = sd.create_loop(engine, [style(1)], owner="visitor:y", content_description="a square",
                          style_descriptor="neon")
    list(sd.train_round(engine, loop.id, TrainSettings(steps=2, learning_rate=1e-3), owner="visitor:y",
                        contents=["a cat"], samples_per_prompt=1, sample_steps=2))
    adapters = {a.id for a in store.list_adapters("visitor:y", method=sd.METHOD)}
    liked = store.candidates(store.rounds(loop.id, "visitor:y")[-1].id, "visitor:y")
    store.rate(liked[0].id, "visitor:y", 1)
    events = sd.train_round(engine, loop.id, TrainSettings(steps=2, learning_rate=1e-3), owner="visitor:y",
                            stop_key="page-y", contents=["a cat", "a dog"], samples_per_prompt=1, sample_steps=3)
    with pytest.raises(Cancelled):
        for ev in events:
            if str(getattr(ev, "message", "")).startswith("Candidates"):  # the grid of round 2 has begun
                engine.cancel("page-y")
    assert [r.number for r in store.rounds(loop.id, "visitor:y")] == [1]
    assert {a.id for a in store.list_adapters("visitor:y", method=sd.METHOD)} == adapters
    resident = library.adapters(engine).loaded()  # round 1's adapter may stay loaded; round 2's is gone
    assert set(resident) <= adapters
    assert set(library.peft_names(engine.pipe.unet)) == set(resident.values())
    library.adapters(engine).unload_all()
