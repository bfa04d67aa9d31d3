"""AdaIN runs per owner, the weights choice and the AdaIN jobs (core/adain_runs.py), on CPU with
the tiny network; the engine is a real one, never loaded (AdaIN has its own network)."""
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core import adain, adain_runs, identity
from core.errors import Cancelled, UserError
from core.events import Progress, Result
from core.jobs import Job

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def engine(tmp_path):
    from core.engine import Engine

    return Engine("tiny", device="cpu", data_dir=tmp_path / "data")


def save_image(path: Path, seed: int, size=(48, 40)) -> str:
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def fake_decoder(data_dir: Path, owner: str, run: str) -> Path:
    path = adain_runs.runs_for(data_dir, owner=owner) / run / adain.DECODER_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not read by the listing")
    return path


def test_each_owner_has_a_folder_of_runs(tmp_path):
    owner = identity.verify(tmp_path, identity.issue(tmp_path)).owner
    root = tmp_path / "adain" / "runs"
    assert adain_runs.runs_root(tmp_path) == root
    assert adain_runs.runs_for(tmp_path) == root  # the private instance's own runs
    theirs = adain_runs.runs_for(tmp_path, owner=owner)
    assert theirs.parent == root and re.fullmatch(r"_visitor-[0-9a-f]{24}", theirs.name)
    assert owner.split(":")[1] not in theirs.name  # a keyed digest, never the id itself
    fake_decoder(tmp_path, adain_runs.LOCAL, "b-run")
    fake_decoder(tmp_path, adain_runs.LOCAL, "a-run")
    fake_decoder(tmp_path, owner, "theirs")
    (root / "no-decoder").mkdir()
    assert adain_runs.decoder_choices(tmp_path) == ["built-in", "a-run", "b-run"]
    assert adain_runs.decoder_choices(tmp_path, owner=owner) == ["built-in", "theirs"]
    assert adain_runs.decoder_file(tmp_path, "theirs", owner=owner) == theirs / "theirs" / adain.DECODER_NAME
    assert adain_runs.decoder_file(tmp_path, "") is None and adain_runs.decoder_file(tmp_path, None) is None
    with pytest.raises(UserError, match="'theirs' was not found among your decoders"):
        adain_runs.decoder_file(tmp_path, "theirs")
    for bad in ("../x", "_visitor-0", ".hidden", 3, "x" * 65):
        with pytest.raises(UserError, match="not a decoder name"):
            adain_runs.check_decoder(bad)


def test_run_names():
    assert adain_runs.check_run_name(" my.run-1 ") == "my.run-1"
    assert re.fullmatch(r"decoder-\d{8}-\d{6}", adain_runs.check_run_name(""))
    for bad in ("../escape", "_owner", "a b", "x" * 65):
        with pytest.raises(UserError, match="run name"):
            adain_runs.check_run_name(bad)


def test_weights_choice(monkeypatch):
    """The app's flag, else $STUDIO_ADAIN_WEIGHTS, else the default Hub repo; offline, the full
    network with random weights."""
    monkeypatch.delenv("STUDIO_ADAIN_WEIGHTS", raising=False)
    spec = adain_runs.weights_spec
    assert spec() == adain.DEFAULT_HUB_REPO == "style-studio/adain-vgg19"
    assert spec(flag="/w") == "/w"
    assert spec(offline=True) == adain.RANDOM_WEIGHTS == "random"
    monkeypatch.setenv("STUDIO_ADAIN_WEIGHTS", "me/my-adain")
    assert spec() == "me/my-adain" and spec(offline=True) == "me/my-adain"
    assert spec(flag="/w") == "/w"


def test_engine_family_and_device():
    tiny = SimpleNamespace(family="tiny", device=torch.device("cpu"))
    full = SimpleNamespace(family="sdxl", device="cuda")
    assert adain_runs.is_tiny(tiny) and not adain_runs.is_tiny(full)
    assert adain_runs.max_side(tiny) == 1024 and adain_runs.max_side(full) == 2048
    assert adain_runs.device_of(full) == torch.device("cuda")


def test_staged_uploads_are_png_files_of_our_own_naming(tmp_path):
    big = save_image(tmp_path / "big.jpg", 0, (1500, 300))
    small = save_image(tmp_path / "small.webp", 1)
    folder = tmp_path / "run" / "content"
    folder.mkdir(parents=True)
    (folder / "old.png").write_bytes(b"the last upload's")
    assert adain_runs.stage_images([big, small], folder, what="content") == folder
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png"]
    with Image.open(folder / "00000.png") as im:
        assert im.format == "PNG" and im.size == (1024, 205)  # 1500x300 scaled to a longer side of 1024
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match=r"style image 1 \(bad.png\)"):
        adain_runs.stage_images([str(bad)], tmp_path / "s", what="style")


def test_training_images_come_from_uploads_else_a_server_folder(tmp_path):
    run = tmp_path / "run"
    image = save_image(tmp_path / "a.png", 0)
    assert adain_runs.training_images(run, uploads=[image], server_dir="/elsewhere", what="style") == run / "style"
    assert adain_runs.training_images(run, uploads=[], server_dir=" /data/coco ", what="content") == Path("/data/coco")
    with pytest.raises(UserError, match="Upload content images or give a content folder"):
        adain_runs.training_images(run, uploads=[], server_dir="  ", what="content")


def test_train_config_carries_the_settings(engine, tmp_path):
    settings = adain_runs.DecoderSettings(steps=7, batch_size=3, resize=64, crop=48, sample_every=4, save_every=5,
                                        resume=False)
    cfg = adain_runs.train_config(engine, run_dir=tmp_path / "r", content_dir=tmp_path / "c",
                                  style_dir=tmp_path / "s", settings=settings, weights="/ignored-in-tiny-mode")
    assert (cfg.steps, cfg.batch_size, cfg.resize, cfg.crop, cfg.sample_every, cfg.save_every, cfg.resume) == \
        (7, 3, 64, 48, 4, 5, False)
    assert cfg.log_every == 4 and cfg.tiny and cfg.weights is None and cfg.device == "cpu"
    assert (cfg.out_dir, cfg.content_dir) == (str(tmp_path / "r"), str(tmp_path / "c"))
    full = SimpleNamespace(family="sdxl", device="cpu", offline=False)
    assert adain_runs.train_config(full, run_dir=tmp_path, content_dir=tmp_path, style_dir=tmp_path,
                                   settings=settings, weights="/w").weights == "/w"
    assert adain_runs.preset(tiny=False) == adain_runs.PAPER_PRESET
    p = adain_runs.PAPER_PRESET
    assert (p.steps, p.batch_size, p.resize, p.crop) == (160_000, 8, 512, 256)  # the paper's recipe
    t = adain_runs.preset(tiny=True)
    assert t.crop <= t.resize and t.save_every <= t.steps and t.crop * t.batch_size < p.crop * p.batch_size


def make_run(engine, tmp_path, **over):
    images = [save_image(tmp_path / f"i{i}.png", i, (48, 48)) for i in range(2)]
    run_dir = adain_runs.runs_for(engine.data_dir) / "r"
    settings = dataclasses.replace(adain_runs.DecoderSettings(steps=6, batch_size=2, resize=40, crop=32,
                                                            sample_every=3, save_every=3), **over)
    return adain_runs.train_config(engine, run_dir=run_dir, content_dir=adain_runs.stage_images(
        images, run_dir / "content", what="content"), style_dir=adain_runs.stage_images(
        images[:1], run_dir / "style", what="style"), settings=settings)


def test_a_training_job_ends_with_a_typed_outcome(engine, tmp_path):
    events = list(adain_runs.train(engine, make_run(engine, tmp_path), run="r", stop_key="page"))
    outcome = events[-1]
    assert isinstance(outcome, adain_runs.DecoderTraining)
    assert (outcome.run, outcome.step, outcome.saved_step, outcome.cancelled, outcome.stop_reason) == \
        ("r", 6, 6, False, None)
    assert outcome.decoder == adain_runs.runs_for(engine.data_dir) / "r" / adain.DECODER_NAME
    assert outcome.decoder.is_file() and len(outcome.samples) == 3
    assert [r["step"] for r in outcome.history] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.step = 1
    samples = [e for e in events if isinstance(e, adain_runs.DecoderSamples)]
    assert [s.progress.step for s in samples] == [0, 3, 6]  # every one kept, none coalesced away
    assert all(len(s.progress.preview) == 3 for s in samples)
    assert adain_runs.decoder_choices(engine.data_dir) == ["built-in", "r"]


def test_a_stop_before_the_first_checkpoint_keeps_nothing(engine, tmp_path):
    cfg = make_run(engine, tmp_path, steps=10_000, save_every=5_000, sample_every=1)
    outcome = None
    for ev in adain_runs.train(engine, cfg, run="r", stop_key="page"):
        if isinstance(ev, adain_runs.DecoderSamples) and ev.progress.step >= 1:
            assert engine.cancel("page") == 1
        outcome = ev
    assert outcome.cancelled and outcome.step >= 1 and outcome.saved_step == 0 and outcome.decoder is None
    assert not (Path(cfg.out_dir) / adain.DECODER_NAME).exists()
    assert not (Path(cfg.out_dir) / adain.CKPT_NAME).exists()
    assert adain_runs.decoder_choices(engine.data_dir) == ["built-in"]


def test_keep_unsaved_decides_only_before_the_first_checkpoint(tmp_path):
    """core.adain.train_decoder: a stop before any checkpoint writes one only if keep_unsaved()
    says so; after the first checkpoint a stop always checkpoints the state so far."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        save_image(images / f"{i}.png", i, (40, 40))

    def run(out, stop_at, save_every, keep):
        cfg = adain.DecoderTrainConfig(content_dir=str(images), style_dir=str(images), out_dir=str(out), steps=50,
                                batch_size=1, resize=32, crop=32, save_every=save_every, log_every=1,
                                sample_every=50, tiny=True)
        steps = []
        for ev in adain.train_decoder(cfg, should_stop=lambda: len(steps) > stop_at, keep_unsaved=keep):
            steps.append(ev)
        return ev.info

    asked = []
    info = run(tmp_path / "a", 2, 100, lambda: asked.append(1) or False)
    assert (info["step"], info["saved_step"], asked) == (2, 0, [1]) and not (tmp_path / "a").exists()
    info = run(tmp_path / "b", 2, 100, lambda: True)
    assert (info["step"], info["saved_step"]) == (2, 2) and (tmp_path / "b" / adain.DECODER_NAME).is_file()
    asked.clear()
    info = run(tmp_path / "c", 3, 2, lambda: asked.append(1) or False)
    assert (info["step"], info["saved_step"], asked) == (3, 3, [])  # past the checkpoint at step 2


def test_a_transfer_job_and_its_stop(engine, tmp_path):
    content, style = save_image(tmp_path / "c.png", 0), save_image(tmp_path / "s.png", 1)
    model = adain_runs.model_for(engine, data_dir=engine.data_dir)
    req = adain.TransferRequest([content, content], [style], size=32)
    events = list(adain_runs.transfer(engine, model, req, stop_key="page"))
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2]
    # 48x40 at a longer side of 32: 32x26.7, both sides rounded to multiples of 8
    assert isinstance(events[-1], Result) and [im.size for im in events[-1].images] == [(32, 24)] * 2
    other = Job("someone-else", "generate")
    engine.gpu_lock.acquire(other)  # the job waits in line, where a Stop reaches it
    try:
        gen = adain_runs.transfer(engine, model, req, stop_key="page")
        assert "Waiting for the accelerator" in next(gen).message
        assert engine.cancel("page") == 1
        with pytest.raises(Cancelled):
            list(gen)
    finally:
        engine.gpu_lock.release(other)


def test_webcam_frames_never_wait_for_the_accelerator(engine, tmp_path):
    style = save_image(tmp_path / "s.png", 1)
    model = adain_runs.model_for(engine, data_dir=engine.data_dir)
    stylizer = adain_runs.WebcamStylizer()
    frame = Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8))
    out, seconds = stylizer.stylize(engine, model, frame, styles=[style], weights=None, alpha=1.0, size=32)
    assert out.size == (32, 24) and seconds > 0
    feats = stylizer.style_features(model, [style], 32, side=1024)
    assert stylizer.style_features(model, [style], 32, side=1024) is feats  # encoded once
    other = Job("someone-else", "generate")
    engine.gpu_lock.acquire(other)
    try:
        assert stylizer.stylize(engine, model, frame, styles=[style], weights=None, alpha=1.0, size=32) is None
    finally:
        engine.gpu_lock.release(other)
