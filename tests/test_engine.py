"""The engine: families, tokenizer, streaming, cancel, errors."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from core import models
from core.engine import Engine
from core.errors import Cancelled, UserError
from core.events import Notice, Progress, Result
from core.preview import latents_to_previews


def test_tokenizer_is_real_clip_bpe(tiny_engine):
    tok = tiny_engine.pipe.tokenizer
    # OpenAI CLIP ids: <|startoftext|> a photo of a cat <|endoftext|>
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tiny_engine.pipe.tokenizer_2("a photo").input_ids == [49406, 320, 1125, 49407]


def test_families_resolve():
    assert models.resolve("sdxl").source == "stabilityai/stable-diffusion-xl-base-1.0"
    assert models.resolve("sd15").source == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert models.resolve("tiny").xl and not models.resolve("tiny-sd").xl
    assert models.resolve("someone/my-sdxl-model").xl
    with pytest.raises(UserError, match="Unknown model"):
        models.resolve("no such thing")


def test_missing_model_gives_clear_message(tmp_path):
    """No network (HF_HUB_OFFLINE=1 in tests): the message names the model and the fixes."""
    engine = Engine("nobody-here/no-such-model-xl", data_dir=tmp_path)
    with pytest.raises(UserError) as info:
        engine.load()
    msg = str(info.value)
    assert "nobody-here/no-such-model-xl" in msg and "--model tiny" in msg and "login" in msg
    # every job reports the same error instead of hanging
    with pytest.raises(UserError):
        list(engine.generate(["a cat"]))


def test_local_folder_without_index_is_refused(tmp_path):
    with pytest.raises(UserError, match="model_index.json"):
        models.resolve(str(tmp_path))


def test_generate_streams_previews_and_is_deterministic(tiny_engine):
    events = list(tiny_engine.generate(["a cat", "a dog"], seed=3, steps=3))
    assert isinstance(events[-1], Result) and len(events[-1].images) == 2
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].step == 3 and len(progress[-1].preview) == 2
    again = list(tiny_engine.generate(["a cat", "a dog"], seed=3, steps=3))[-1]
    assert np.array_equal(np.asarray(events[-1].images[1]), np.asarray(again.images[1]))
    # image i of a batch is its prompt alone with seed + i
    alone = list(tiny_engine.generate(["a dog"], seed=4, steps=3))[-1]
    assert np.abs(np.asarray(alone.images[0], float) - np.asarray(events[-1].images[1], float)).max() <= 1


def test_preview_map_tracks_the_decoder(tiny_engine):
    """The fitted linear map predicts the VAE's decoded colours better than a constant."""
    pipe = tiny_engine.pipe
    torch.manual_seed(9)
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        rgb = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    target = torch.nn.functional.adaptive_avg_pool2d(rgb, 16)
    zz = torch.cat([z, torch.ones_like(z[:, :1])], 1)
    pred = torch.einsum("bchw,cd->bdhw", zz, tiny_engine._rgb_map)
    err = float(((pred - target) ** 2).mean())
    baseline = float(((target - target.mean((0, 2, 3), keepdim=True)) ** 2).mean())
    assert err < baseline  # (a random tiny VAE is far from linear; real ones fit much better)
    previews = latents_to_previews(z, tiny_engine._rgb_map)
    assert len(previews) == 2 and previews[0].size[0] >= 16


def test_cancel_stops_within_one_step(tiny_engine):
    steps_seen = []
    events = tiny_engine.generate(["a cat"], seed=0, steps=50, stop_key="alice")
    with pytest.raises(Cancelled):
        for ev in events:
            if isinstance(ev, Progress) and ev.step:
                steps_seen.append(ev.step)
                if ev.step == 2:
                    assert tiny_engine.cancel("bob") == 0      # someone else's Stop: no effect
                    assert tiny_engine.cancel("alice") == 1
    assert max(steps_seen) <= 3
    assert tiny_engine.jobs.running() == []
    # the engine is usable right after
    assert isinstance(list(tiny_engine.generate(["a cat"], steps=2))[-1], Result)


def test_closing_the_stream_stops_the_worker(tiny_engine):
    events = tiny_engine.generate(["a cat"], seed=0, steps=100)
    for ev in events:
        if isinstance(ev, Progress) and ev.step >= 1:
            break
    t0 = time.monotonic()
    events.close()                    # what a dropped connection does
    assert time.monotonic() - t0 < 5  # joined within a step, not after 100
    assert tiny_engine.jobs.running() == [] and not tiny_engine.gpu_lock.locked()


def test_one_job_at_a_time(tiny_engine):
    active, peak = [0], [0]
    lock = threading.Lock()

    def work(ctx):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return Result()

    threads = [threading.Thread(target=lambda: list(tiny_engine.run(work))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


def test_long_prompt_notice_and_control_chars(tiny_engine):
    long = " ".join(["cat"] * 100) + "\x00\x07"
    events = list(tiny_engine.generate([long], steps=1))
    notices = [e for e in events if isinstance(e, Notice)]
    assert notices and "77 tokens" in notices[0].message
    assert "\x00" not in tiny_engine.clean_prompt("a\x00b")


def test_sizes_checked(tiny_engine):
    with pytest.raises(UserError, match="width"):
        list(tiny_engine.generate(["a"], width=4, steps=1))
    assert tiny_engine.check_size(70, 64) == (64, 64)


def test_oom_in_a_job_surfaces_and_next_job_runs(tiny_engine):
    def work(ctx):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):
        list(tiny_engine.run(work))
    assert not tiny_engine.gpu_lock.locked()
    assert isinstance(list(tiny_engine.generate(["a"], steps=1))[-1], Result)


def test_from_pipe_shares_components(tiny_engine):
    from diffusers import DDIMInverseScheduler

    inv = tiny_engine.pipeline(scheduler=DDIMInverseScheduler.from_config(tiny_engine.pipe.scheduler.config))
    assert inv.unet is tiny_engine.pipe.unet and inv.vae is tiny_engine.pipe.vae
    assert inv.scheduler is not tiny_engine.pipe.scheduler
    assert tiny_engine.pipeline(scheduler=DDIMInverseScheduler.from_config(inv.scheduler.config)) is inv


def test_preview_fit_leaves_the_vae_dtype(tmp_path):
    """Fitting the preview map casts the VAE to fp32 for a moment and back."""
    from core.preview import fit_latent_rgb_map
    from core.tiny import tiny_sdxl

    vae = tiny_sdxl().vae.to(torch.bfloat16)
    fit_latent_rgb_map(vae)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
