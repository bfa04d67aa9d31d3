"""The low-memory mode (issue 19, item 4), on CPU: the decision (a faked CUDA device property),
what the engine sets on the tiny pipeline, the fp16-safe VAE decode against an fp32 decode, the
training settings of every preset, the banner, the flag and the start-up line."""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import queue
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import app
from core import blora, devices, dreambooth, models, styledrop, tiny
from core import engine as engine_mod
from core import train as train_mod
from core.engine import Engine, Health
from core.events import Notice, Result
from core.jobs import Job, JobContext
from core.train import AdapterSpec, Example, Recipe, TrainSettings, Trainer, low_vram_settings, optimizer_name
from tabs.health import HealthBanner, health_markdown

pytestmark = pytest.mark.usefixtures("one_thread")

GiB = 2**30
CUDA = torch.device("cuda")


def props(total_bytes):
    """A stand-in for torch.cuda.get_device_properties that reports `total_bytes`."""
    return lambda device: SimpleNamespace(total_memory=total_bytes, name="fake")


def refuse(device):
    raise AssertionError("the device properties must not be read here")


# --------------------------------------------------------------------------- the decision

@pytest.mark.parametrize("total, expected", [
    (8 * GiB, True), (12 * GiB, True),
    (15_843_721_216, True),     # a T4 ("16 GB") reports 14.8 GiB
    (16 * GiB - 1, True), (16 * GiB, False), (24 * GiB, False), (141 * GiB, False)])
def test_automatic_below_16_gib_on_cuda(total, expected):
    assert devices.low_vram_mode(CUDA, None, props(total)) is expected
    assert devices.total_memory(CUDA, props(total)) == total


def test_never_automatic_on_cpu_or_mps_and_forcing_wins():
    for dev in (torch.device("cpu"), torch.device("mps")):
        assert devices.low_vram_mode(dev, None, refuse) is False
        assert devices.low_vram_mode(dev, True, refuse) is True
        assert devices.total_memory(dev, refuse) is None
    assert devices.low_vram_mode(CUDA, False, refuse) is False     # forced off on an 8 GB card
    assert devices.low_vram_mode(CUDA, True, refuse) is True


def test_the_setting_parses_on_off_and_auto():
    for text in ("1", "true", "ON", " yes "):
        assert devices.parse_low_vram(text) is True
    for text in ("0", "false", "Off", "no"):
        assert devices.parse_low_vram(text) is False
    for value in (None, "", "auto", "AUTO"):
        assert devices.parse_low_vram(value) is None
    assert devices.parse_low_vram(True) is True and devices.parse_low_vram(False) is False
    with pytest.raises(ValueError, match="on, off or auto"):
        devices.parse_low_vram("maybe")


def test_engine_decides_from_the_gpu_memory_and_says_why(tmp_path, monkeypatch):
    e = Engine("tiny", device="cpu", data_dir=tmp_path)
    assert e.low_vram is False and e.memory_mode == "standard memory" and e.health().low_vram is False
    monkeypatch.setattr(torch.cuda, "get_device_properties", props(12 * GiB))
    e.device = CUDA  # nothing is loaded: the decision only reads the device's memory
    e._init_low_vram(None)
    assert e.low_vram is True and e.low_vram_reason == "automatic: the GPU has 12.0 GiB"
    assert e.memory_mode == "low-VRAM mode (automatic: the GPU has 12.0 GiB)"
    monkeypatch.setattr(torch.cuda, "get_device_properties", props(80 * GiB))
    e._init_low_vram(None)
    assert e.low_vram is False and e.low_vram_reason == ""
    e._init_low_vram(True)
    assert e.low_vram is True and e.low_vram_reason == "forced on"


# --------------------------------------------------------------------------- the engine

@pytest.fixture(scope="module")
def low(tmp_path_factory):
    """A tiny engine of its own, forced into the low-memory mode on the CPU."""
    e = Engine("tiny", device="cpu", data_dir=tmp_path_factory.mktemp("lowvram"), low_vram=True)
    e.load()
    return e


def test_engine_sets_tiling_slicing_and_the_safe_decode_on_cpu_without_offload(tmp_path, monkeypatch):
    offloaded = []
    monkeypatch.setattr(engine_mod, "offload_when_idle", lambda m, d: offloaded.append((m, d)))
    e = Engine("tiny", device="cpu", data_dir=tmp_path, low_vram=True)
    pipe = e.load()
    vae = pipe.vae
    assert vae.use_tiling is True and vae.use_slicing is True
    assert vae._fp16_safe_decode is True
    assert vae.tile_sample_min_size == 64 and vae.tile_latent_min_size == 16  # under 512 px: as configured
    assert offloaded == [] and e._idle_hooks == {}  # offload is for CUDA only
    assert "no offload (not CUDA)" in e.low_vram_notes and "VAE tiling and slicing" in e.low_vram_notes
    h = e.health()
    assert h.state == "ready" and h.low_vram is True and h.low_vram_reason == "forced on"
    # the standard mode leaves the VAE as loaded
    plain = Engine("tiny", device="cpu", data_dir=tmp_path).load().vae
    assert plain.use_tiling is False and plain.use_slicing is False
    assert not getattr(plain, "_fp16_safe_decode", False)


def test_on_cuda_only_the_text_encoders_are_offloaded_when_idle(tmp_path, monkeypatch):
    """With a (faked) CUDA device the engine hooks the two text encoders, not the UNet nor the VAE,
    and never asks diffusers for whole-model offload; the UNet's pre-forward hook sends them back
    to the CPU in inference, not while gradients flow."""
    calls, offloads = [], []

    def fake_offload(module, device):
        calls.append((module, device))
        # parameters on the meta device stand for "on the GPU" (the hook checks before moving)
        return SimpleNamespace(model=torch.nn.Linear(1, 1, device="meta"),
                               offload=lambda: offloads.append(len(calls)))
    monkeypatch.setattr(engine_mod, "offload_when_idle", fake_offload)
    pipe = tiny.tiny_sdxl()

    def no_whole_model_offload(*a, **k):
        raise AssertionError("diffusers' whole-model offload must not be used")
    monkeypatch.setattr(pipe, "enable_model_cpu_offload", no_whole_model_offload, raising=False)
    monkeypatch.setattr(pipe, "enable_sequential_cpu_offload", no_whole_model_offload, raising=False)
    e = Engine("tiny", device="cpu", data_dir=tmp_path, low_vram=True)
    e.device = CUDA
    e._apply_low_vram(pipe)
    assert [(m, d) for m, d in calls] == [(pipe.text_encoder, CUDA), (pipe.text_encoder_2, CUDA)]
    assert "text encoders on the CPU when idle" in e.low_vram_notes
    x = torch.zeros(1, 4, 8, 8)
    kw = dict(encoder_hidden_states=torch.zeros(1, 77, 64),
              added_cond_kwargs={"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)})
    with torch.no_grad():
        pipe.unet(x, 1, **kw)
    assert len(offloads) == 2                   # both text encoders, before the UNet ran
    with torch.enable_grad():
        pipe.unet(x, 1, **kw)
    assert len(offloads) == 2                   # with grad (training): left where they are
    e._held.add("text_encoder")                 # held for a training job: not offloaded
    with torch.no_grad():
        pipe.unet(x, 1, **kw)
    assert len(offloads) == 3
    e.offload_idle(release_held=True)           # the end of the job releases it
    assert len(offloads) == 5 and e._held == set()


def test_switching_a_loaded_engine_on_and_off_undoes_everything(tmp_path):
    """bench/gpu_check.py measures one engine both ways: off restores the VAE's flags, tiles and
    decode, removes the offload hooks and the UNet's pre-forward hook."""
    e = Engine("tiny", device="cpu", data_dir=tmp_path)
    pipe = e.load()
    vae = pipe.vae
    tiles = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = vae.decode(z).sample
    e.set_low_vram(True)
    assert e.low_vram and e.low_vram_reason == "switched on" and e.health().low_vram
    assert vae.use_tiling and vae.use_slicing and "decode" in vae.__dict__
    e._offload_text_encoders(pipe, torch.device("cpu"))  # the CUDA-only part, executing on the CPU
    assert hasattr(pipe.text_encoder, "_hf_hook") and len(pipe.unet._forward_pre_hooks) == 1
    e.set_low_vram(False)
    assert not e.low_vram and e.memory_mode == "standard memory" and e.low_vram_notes == []
    assert not vae.use_tiling and not vae.use_slicing and "decode" not in vae.__dict__
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == tiles
    assert not hasattr(pipe.text_encoder, "_hf_hook") and not hasattr(pipe.text_encoder_2, "_hf_hook")
    assert len(pipe.unet._forward_pre_hooks) == 0 and e._idle_hooks == {}
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, before)


def ctx():
    return JobContext(Job("test", "test"), queue.Queue())


def subject(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_real_offload_hooks_keep_generation_and_text_encoder_lora_training_working(low):
    """accelerate's hooks on the text encoders (executing on the CPU here): a generation gives
    the images it gives without them, and a DreamBooth run with text-encoder LoRA trains with
    the encoders held for the job and released after it."""
    before = low.text_to_image(ctx(), ["a red cube"], seed=4, steps=2)
    low._offload_text_encoders(low.pipe, torch.device("cpu"))
    try:
        assert set(low._idle_hooks) == {"text_encoder", "text_encoder_2"}
        after = low.text_to_image(ctx(), ["a red cube"], seed=4, steps=2)
        a, b = (np.asarray(i, dtype=np.float32) for i in (before[0], after[0]))
        assert np.abs(a - b).max() <= 1.0  # same pipeline, same seed: uint8 images within a level
        held, gc_on = [], []
        recipe = Recipe(method="dreambooth", name="lv-te", adapter=AdapterSpec(rank=4, text_encoder_rank=4),
                        examples=[Example(subject(0), "a sks dog"), Example(subject(1), "a sks dog")])

        def step_hook(step):
            held.append(set(low._held))
            gc_on.append(low.pipe.unet.is_gradient_checkpointing)
        events = list(train_mod.train(low, recipe, TrainSettings(steps=2, sample_every=1),
                                      step_hook=step_hook))
        result = events[-1]
        assert isinstance(result, Result) and np.isfinite(result.info["loss_after"])
        assert held == [{"text_encoder", "text_encoder_2"}] * 2 and low._held == set()
        assert gc_on == [True, True] and low.pipe.unet.is_gradient_checkpointing is False
        notes = [ev.message for ev in events if isinstance(ev, Notice)]
        assert any("Low-VRAM mode: gradient checkpointing on; optimizer: torch AdamW (8-bit Adam needs CUDA"
                   in n for n in notes), notes
    finally:
        from accelerate.hooks import remove_hook_from_module

        for hook in low._idle_hooks.values():
            remove_hook_from_module(hook.model)
        low._idle_hooks.clear()


# --------------------------------------------------------------------------- fp16-safe decode

def test_upcast_decode_matches_fp32_and_restores_fp16():
    vae = tiny.tiny_sdxl().vae
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(vae).float()
    with torch.no_grad():
        want = reference.decode(z).sample.double()
        vae.half()
        assert models.needs_upcast(vae)
        models.make_decode_fp16_safe(vae)
        models.make_decode_fp16_safe(vae)  # once per VAE
        got = vae.decode(z.half()).sample
    assert got.dtype == torch.float32 and next(vae.parameters()).dtype == torch.float16
    # the only difference left is the fp16 rounding of the weights (relative 2^-11)
    assert (got.double() - want).abs().max().item() < 2e-2


def test_fp16_overflow_is_nan_and_the_safe_decode_is_not():
    """The SDXL failure on a tiny VAE: a decoder whose activations pass fp16's 65504 (its first
    conv scaled 1000x; weights and latents stay well inside fp16's range)."""
    vae = tiny.tiny_sdxl().vae
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1000)
        vae.decoder.conv_in.bias.mul_(1000)
    z = 100 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert vae.decoder.conv_in.weight.abs().max() < 1000 and z.abs().max() < 1000
    with torch.no_grad():
        want = copy.deepcopy(vae).float().decode(z).sample.double()
        vae.half()
        plain = vae.decode(z.half()).sample
        assert not torch.isfinite(plain).all()           # fp16 as it is: inf / NaN (black images)
        models.make_decode_fp16_safe(vae)
        safe = vae.decode(z.half()).sample
    assert torch.isfinite(safe).all() and torch.isfinite(want).all()
    assert (safe.double() - want).abs().max().item() < 2e-2


def test_safe_decode_leaves_fp32_and_declared_safe_vaes_alone():
    vae = tiny.tiny_sdxl().vae
    assert not models.needs_upcast(vae)                  # fp32
    vae.half()
    vae.register_to_config(force_upcast=False)           # what the fp16-fixed VAE declares
    assert not models.needs_upcast(vae)
    models.make_decode_fp16_safe(vae)
    with torch.no_grad():
        out = vae.decode(torch.zeros(1, 4, 8, 8, dtype=torch.float16)).sample
    assert out.dtype == torch.float16


def _fake_cache(root, vae):
    """A local Hugging Face cache holding `vae` as the fp16-fixed VAE (no network involved)."""
    repo = root / ("models--" + models.FP16_FIX_VAE.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    vae.save_pretrained(repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_the_fp16_fixed_vae_is_used_only_from_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert models.local_fp16_fix_vae() is None
    sdxl = models.resolve("sdxl")  # resolving loads nothing
    assert models.fp16_fix_vae(sdxl, torch.float16, torch.device("cpu")) is None
    fixed = tiny.tiny_sdxl().vae
    fixed.register_to_config(force_upcast=False)
    folder = _fake_cache(tmp_path / "hub", fixed)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert models.local_fp16_fix_vae() == str(folder)
    assert models.fp16_fix_vae(models.resolve("tiny"), torch.float16, torch.device("cpu")) is None  # built in
    assert models.fp16_fix_vae(sdxl, torch.bfloat16, torch.device("cpu")) is None  # bf16 does not overflow
    vae = models.fp16_fix_vae(sdxl, torch.float16, torch.device("cpu"))
    assert vae is not None and next(vae.parameters()).dtype == torch.float16
    assert vae.config.force_upcast is False and not models.needs_upcast(vae)
    # the engine swaps it in for an SDXL model in fp16
    e = Engine("tiny", device="cpu", data_dir=tmp_path, low_vram=True)
    e.spec, e.dtype = sdxl, torch.float16
    pipe = tiny.tiny_sdxl()
    old = pipe.vae
    e._apply_low_vram(pipe)
    assert pipe.vae is not old and pipe.vae.config.force_upcast is False and pipe.vae.use_tiling
    assert "fp16-fixed VAE" in e.low_vram_notes and "VAE decoded in fp32" not in e.low_vram_notes


# --------------------------------------------------------------------------- training

FIELDS = {f.name for f in dataclasses.fields(TrainSettings)}


@pytest.mark.parametrize("module", [dreambooth, blora, styledrop], ids=lambda m: m.__name__)
def test_every_preset_gets_checkpointing_and_8bit_adam(module):
    for name, preset in module.PRESETS.items():
        cfg = TrainSettings(**{k: v for k, v in preset.items() if k in FIELDS}, use_8bit_adam=False)
        low = low_vram_settings(cfg)
        assert low.gradient_checkpointing is True and low.use_8bit_adam is True, name
        assert cfg.use_8bit_adam is False and cfg.gradient_checkpointing == preset["gradient_checkpointing"]
        unchanged = FIELDS - {"gradient_checkpointing", "use_8bit_adam"}
        assert {k: getattr(low, k) for k in unchanged} == {k: getattr(cfg, k) for k in unchanged}, name


def test_the_optimizer_actually_used_is_named(monkeypatch):
    cfg = TrainSettings(use_8bit_adam=True)
    assert optimizer_name(TrainSettings(use_8bit_adam=False), CUDA) == "torch AdamW"
    assert optimizer_name(cfg, torch.device("cpu")) == "torch AdamW (8-bit Adam needs CUDA; this is cpu)"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert optimizer_name(cfg, CUDA) == "torch AdamW (8-bit Adam needs bitsandbytes, which is not installed)"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert optimizer_name(cfg, CUDA) == "8-bit AdamW (bitsandbytes)"


def test_the_trainer_applies_the_mode_only_when_it_is_on(low, tiny_engine):
    recipe = Recipe(method="dreambooth", name="x", examples=[Example(subject(0), "a sks dog")])
    given = TrainSettings(steps=3, gradient_checkpointing=False, use_8bit_adam=False)
    t = Trainer(low, recipe, given)
    assert t.cfg.gradient_checkpointing is True and t.cfg.use_8bit_adam is True
    assert given.gradient_checkpointing is False  # the caller's settings are not changed
    assert t.notes == ["Low-VRAM mode: gradient checkpointing on; optimizer: "
                       "torch AdamW (8-bit Adam needs CUDA; this is cpu)."]
    plain = Trainer(tiny_engine, recipe, given)
    assert plain.cfg.gradient_checkpointing is False and plain.cfg.use_8bit_adam is False and plain.notes == []


# --------------------------------------------------------------------------- what the UI says

def facts(**kw):
    return dict(dict(model="stabilityai/stable-diffusion-xl-base-1.0", device="cuda", dtype="float16",
                     offline=False), **kw)


def test_banner_says_which_mode_is_on():
    on = health_markdown(Health("ready", **facts(), low_vram=True,
                                low_vram_reason="automatic: the GPU has 11.6 GiB"))
    assert on.startswith("**Ready**")
    assert "**Low-VRAM mode** (automatic: the GPU has 11.6 GiB): idle text encoders wait on the CPU" in on
    assert "gradient checkpointing and 8-bit Adam" in on
    cpu = health_markdown(Health("loading", **facts(device="cpu"), low_vram=True, low_vram_reason="forced on"))
    assert "**Low-VRAM mode** (forced on): the VAE decodes in tiles" in cpu and "text encoders" not in cpu
    assert "Low-VRAM" not in health_markdown(Health("ready", **facts()))


def test_health_api_and_startup_line_report_the_mode(low, tiny_engine, tmp_path):
    assert HealthBanner(SimpleNamespace(engine=low)).health()["low_vram"] is True
    assert HealthBanner(SimpleNamespace(engine=tiny_engine)).health()["low_vram"] is False
    args = app.parse_args(["--model", "tiny", "--data-dir", str(tmp_path)])
    assert "; low-VRAM mode (forced on); " in app.startup_line(args, low)
    assert "; standard memory; " in app.startup_line(args, tiny_engine)


def test_flag_and_environment(monkeypatch):
    monkeypatch.delenv("STUDIO_LOW_VRAM", raising=False)
    assert app.parse_args([]).low_vram is None                       # auto
    assert app.parse_args(["--low-vram"]).low_vram is True
    assert app.parse_args(["--no-low-vram"]).low_vram is False
    monkeypatch.setenv("STUDIO_LOW_VRAM", "1")
    assert app.parse_args([]).low_vram is True
    assert app.parse_args(["--no-low-vram"]).low_vram is False       # the flag wins
    monkeypatch.setenv("STUDIO_LOW_VRAM", "off")
    assert app.parse_args([]).low_vram is False
    monkeypatch.setenv("STUDIO_LOW_VRAM", "sometimes")
    with pytest.raises(SystemExit):
        app.parse_args([])
