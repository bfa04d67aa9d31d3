"""Shared attention (Style Aligned, Hertz et al. 2024): equivalences, invariants, and an
independent naive implementation to compare against."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from core.errors import Cancelled, UserError
from core.events import Progress, Result
from core.style_aligned import (SharedAttentionProcessor, SharingOptions, SharingState, adain,
                                ddim_invert, sharing_layers, style_aligned_set)


def _arr(img):
    return np.asarray(img, dtype=np.float64)


# ------------------------------------------------------------------ processor level
def test_sharing_off_equals_stock_processor():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8)
    x = torch.randn(4, 50, 32)
    stock = AttnProcessor2_0()(attn, x)
    for opts, share in ((SharingOptions(enabled=False), True), (SharingOptions(), False)):
        ours = SharedAttentionProcessor(SharingState(groups=2, options=opts), share=share)(attn, x)
        torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)
    # 4-D (B, C, H, W) input with residual, as in some UNet layers
    attn4 = Attention(query_dim=32, heads=4, dim_head=8, residual_connection=True)
    x4 = torch.randn(2, 32, 5, 5)
    ours = SharedAttentionProcessor(SharingState(options=SharingOptions(enabled=False)))(attn4, x4)
    torch.testing.assert_close(ours, AttnProcessor2_0()(attn4, x4), atol=1e-5, rtol=1e-5)


def test_adain_gives_reference_statistics():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 100, 8) * 3 + 1
    ref = torch.randn(2, 1, 4, 100, 8) * 0.5 - 2
    y = adain(x, ref)
    torch.testing.assert_close(y.mean(-2), ref.mean(-2).expand_as(y.mean(-2)), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(-2, unbiased=False), ref.std(-2, unbiased=False).expand_as(y.mean(-2)),
                               atol=1e-4, rtol=1e-4)


def naive_shared_attention(q, k, v, groups, opts: SharingOptions):
    """Independent reference: explicit softmax, one image at a time."""
    b, h, n_tok, d = q.shape
    n = b // groups
    out = torch.empty_like(q)
    for g in range(groups):
        r = g * n
        for i in range(g * n, (g + 1) * n):
            if opts.full_attention_share:
                keys = torch.cat([k[j] for j in range(g * n, (g + 1) * n)], 1)
                vals = torch.cat([v[j] for j in range(g * n, (g + 1) * n)], 1)
                logits = q[i] @ keys.transpose(-1, -2) / math.sqrt(d)
                out[i] = logits.softmax(-1) @ vals
                continue
            if i == r:
                logits = q[i] @ k[i].transpose(-1, -2) / math.sqrt(d)
                out[i] = logits.softmax(-1) @ v[i]
                continue
            qi, ki, vi = q[i], k[i], v[i]

            def stat_norm(x, ref):
                mu, sd = x.mean(1, keepdim=True), (x.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
                mr, sr = ref.mean(1, keepdim=True), (ref.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
                return (x - mu) / sd * sr + mr
            if opts.adain_queries:
                qi = stat_norm(qi, q[r])
            if opts.adain_keys:
                ki = stat_norm(ki, k[r])
            if opts.adain_values:
                vi = stat_norm(vi, v[r])
            keys = torch.cat([ki, k[r] * opts.shared_score_scale], 1)
            vals = torch.cat([vi, v[r]], 1)
            logits = qi @ keys.transpose(-1, -2) / math.sqrt(d)
            logits[..., n_tok:] += opts.shared_score_shift
            out[i] = logits.softmax(-1) @ vals
    return out


@pytest.mark.parametrize("opts", [
    SharingOptions(),
    SharingOptions(adain_values=True, shared_score_shift=math.log(2), shared_score_scale=0.5),
    SharingOptions(adain_queries=False, adain_keys=False, shared_score_shift=1.3),
    SharingOptions(full_attention_share=True),
], ids=["default", "shift-scale-values", "no-adain-shift", "full-share"])
@pytest.mark.parametrize("groups", [1, 2])
def test_processor_agrees_with_naive_shared_attention(opts, groups):
    torch.manual_seed(2)
    q, k, v = (torch.randn(3 * groups, 2, 37, 12, dtype=torch.float64) for _ in range(3))
    ours = SharedAttentionProcessor.shared(q, k, v, groups, opts)
    torch.testing.assert_close(ours, naive_shared_attention(q, k, v, groups, opts), atol=1e-9, rtol=1e-7)


def test_each_cfg_half_has_its_own_reference():
    torch.manual_seed(3)
    q, k, v = (torch.randn(6, 2, 16, 8) for _ in range(3))  # 2 halves x 3 images
    base = SharedAttentionProcessor.shared(q, k, v, 2, SharingOptions())
    k2, v2 = k.clone(), v.clone()
    k2[3] += 5.0   # the conditional half's reference changes
    v2[3] -= 2.0
    moved = SharedAttentionProcessor.shared(q, k2, v2, 2, SharingOptions())
    torch.testing.assert_close(moved[:3], base[:3])          # unconditional half untouched
    assert (moved[4:] - base[4:]).abs().max() > 1e-2          # its targets follow their reference
    # and the reference of each half is plain self-attention
    plain = torch.nn.functional.scaled_dot_product_attention(q[[0, 3]], k[[0, 3]], v[[0, 3]])
    torch.testing.assert_close(base[[0, 3]], plain, atol=1e-6, rtol=1e-5)


def test_shift_builds_no_logits_tensor():
    """The bias rides in an extra head dimension: fused SDPA is called with no mask."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        q, k, v = (torch.randn(3, 2, 16, 8) for _ in range(3))
        SharedAttentionProcessor.shared(q, k, v, 1, SharingOptions(shared_score_shift=math.log(2)))
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    assert calls and all(m is None for m in calls)


def test_sharing_layers_fraction():
    names = [f"l{i}" for i in range(70)]
    assert sharing_layers(names, 1.0) == set(names)
    assert sharing_layers(names, 0.0) == set()
    half = sharing_layers(names, 0.5)
    assert len(half) == 35 and "l0" in half and "l1" not in half
    with pytest.raises(UserError):
        sharing_layers(names, 1.5)


# ------------------------------------------------------------------ pipeline level
def _run(events):
    events = list(events)
    assert isinstance(events[-1], Result)
    return events


@pytest.mark.parametrize("engine_name", ["tiny_engine", "tiny_sd_engine"])
@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_reference_equals_its_prompt_alone(request, engine_name, guidance):
    engine = request.getfixturevalue(engine_name)
    events = _run(style_aligned_set(engine, ["a cat", "a dog", "a boat"], "watercolor", seed=7,
                                    steps=4, guidance=guidance))
    alone = list(engine.generate(["a cat, watercolor"], seed=7, steps=4, guidance=guidance))[-1]
    np.testing.assert_allclose(_arr(events[-1].images[0]), _arr(alone.images[0]), atol=1.0)
    # sharing changes the targets: image 2 differs from its prompt alone with its seed (8)
    target_alone = list(engine.generate(["a dog, watercolor"], seed=8, steps=4, guidance=guidance))[-1]
    ref_diff = np.abs(_arr(events[-1].images[0]) - _arr(alone.images[0])).mean()
    target_diff = np.abs(_arr(events[-1].images[1]) - _arr(target_alone.images[0])).mean()
    assert target_diff > 0.1 and target_diff > 10 * ref_diff, (target_diff, ref_diff)
    # previews were streamed, one image per prompt, up to the last step (stale ones may be
    # coalesced when the consumer is slower than the steps)
    progress = [e for e in events if isinstance(e, Progress) and e.preview]
    assert progress and progress[-1].step == 4
    assert all(len(e.preview) == 3 for e in progress)
    assert [e.step for e in progress] == sorted({e.step for e in progress})


def _token_stats(x):
    """Per-channel mean and std over the token axis, float64 (the oracle's own arithmetic)."""
    x = x.double()
    mu = x.mean(-2)
    return mu, ((x - mu.unsqueeze(-2)) ** 2).mean(-2).sqrt()


def test_target_statistics_follow_reference_in_the_unet(tiny_engine, monkeypatch):
    """Inside the UNet, the queries and keys that each target actually attends with carry the
    reference's per-channel statistics over the tokens (AdaIN on Q and K, the paper's eq.), and
    the reference's own keys and values are appended unchanged. Checked on the tensors the
    processor hands to attention, against float64 statistics of the reference computed here."""
    from core import style_aligned as sa

    calls, inputs = [], []
    real_shared, real_attention = SharedAttentionProcessor.shared, sa.biased_attention

    def spy_shared(q, k, v, groups, opts):
        inputs.append((q.detach().clone(), k.detach().clone(), v.detach().clone(), groups))
        return real_shared(q, k, v, groups, opts)

    def spy_attention(q, k, v, n_plain, shift):
        calls.append((q.detach().clone(), k.detach().clone(), v.detach().clone(), n_plain))
        return real_attention(q, k, v, n_plain, shift)

    monkeypatch.setattr(SharedAttentionProcessor, "shared", staticmethod(spy_shared))
    monkeypatch.setattr(sa, "biased_attention", spy_attention)
    _run(style_aligned_set(tiny_engine, ["a", "b", "c"], steps=2, guidance=5.0))
    monkeypatch.undo()
    assert inputs and len(calls) == len(inputs)
    for (q, k, v, groups), (q_att, k_att, v_att, n_tok) in zip(inputs, calls):
        assert groups == 2  # classifier-free guidance: two halves, each with its own reference
        n = q.shape[0] // groups
        for g in range(groups):
            ref = g * n  # the first image of each half
            for j, i in enumerate(range(ref + 1, ref + n)):
                row = g * (n - 1) + j
                for x_att, x_ref in ((q_att[row], q[ref]), (k_att[row, :, :n_tok], k[ref])):
                    mu_t, sd_t = _token_stats(x_att)
                    mu_r, sd_r = _token_stats(x_ref)
                    torch.testing.assert_close(mu_t, mu_r, atol=2e-4, rtol=1e-3)
                    # sigma with AdaIN's epsilon: equal where the channel is not near-constant
                    torch.testing.assert_close(sd_t, sd_r, atol=2e-3, rtol=2e-3)
                # the reference's keys and values follow, unchanged; the target's own values lead
                torch.testing.assert_close(k_att[row, :, n_tok:], k[ref], atol=1e-6, rtol=0)
                torch.testing.assert_close(v_att[row, :, n_tok:], v[ref], atol=1e-6, rtol=0)
                torch.testing.assert_close(v_att[row, :, :n_tok], v[i], atol=1e-6, rtol=0)


def _naive_shared_group_norm(x, norm, groups):
    """The reference implementation's definition, float64: each image normalised as the first
    rows of GroupNorm(cat([x, x_ref], H)), x_ref its group's first image."""
    x = x.double()
    w, b = norm.weight.double(), norm.bias.double()
    n = x.shape[0] // groups
    out = []
    for i in range(x.shape[0]):
        ref = (i // n) * n
        both = torch.cat([x[i], x[ref]], dim=1)[None]  # along H
        out.append(torch.nn.functional.group_norm(both, norm.num_groups, w, b, norm.eps)[0, :, :x.shape[2]])
    return torch.stack(out)


@pytest.mark.parametrize("groups", [1, 2])
def test_shared_group_norm_pools_statistics_with_the_reference(groups):
    from core.style_aligned import shared_group_norm

    torch.manual_seed(4)
    norm = torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    # images with clearly different statistics, so pooling moves every target
    x = torch.randn(3 * groups, 16, 5, 7) * torch.linspace(0.5, 3, 3 * groups)[:, None, None, None] \
        + torch.linspace(-2, 2, 3 * groups)[:, None, None, None]
    plain = norm(x)
    state = SharingState(groups=groups, options=SharingOptions(share_group_norm=True))
    with shared_group_norm(norm, state):
        shared = norm(x)
        state.options.enabled = False
        off = norm(x)
    torch.testing.assert_close(shared.double(), _naive_shared_group_norm(x, norm, groups), atol=2e-5, rtol=1e-5)
    refs = [g * 3 for g in range(groups)]
    torch.testing.assert_close(shared[refs], plain[refs], atol=2e-5, rtol=1e-5)  # a reference pools with itself
    targets = [i for i in range(3 * groups) if i not in refs]
    assert (shared[targets] - plain[targets]).abs().amax() > 0.1  # pooling moves the targets
    torch.testing.assert_close(off, plain)
    assert "forward" not in norm.__dict__  # restored


def test_processors_restored_and_plain_generation_unchanged(tiny_engine):
    unet = tiny_engine.pipe.unet
    originals = dict(unet.attn_processors)
    custom = {name: (AttnProcessor() if i % 3 == 0 else proc)
              for i, (name, proc) in enumerate(unet.attn_processors.items())}
    try:
        unet.set_attn_processor(dict(custom))
        before = list(tiny_engine.generate(["a house"], seed=3, steps=3))[-1].images[0]
        _run(style_aligned_set(tiny_engine, ["a", "b"], seed=1, steps=3,
                               options=SharingOptions(share_group_norm=True)))
        assert unet.attn_processors == custom
        assert not any("forward" in m.__dict__ for m in unet.modules())
        after = list(tiny_engine.generate(["a house"], seed=3, steps=3))[-1].images[0]
        assert np.array_equal(np.asarray(before), np.asarray(after))

        # an exception mid-run (cancel at step 2) restores them too
        events = style_aligned_set(tiny_engine, ["a", "b"], seed=1, steps=6,
                                   options=SharingOptions(share_group_norm=True), stop_key="x")
        with pytest.raises(Cancelled):
            for ev in events:
                if isinstance(ev, Progress) and ev.step == 2:
                    tiny_engine.cancel("x")
        assert unet.attn_processors == custom
        assert not any("forward" in m.__dict__ for m in unet.modules())
    finally:
        unet.set_attn_processor(originals)  # the session engine's very processors, pass or fail


def test_shared_group_norm_keeps_reference(tiny_engine):
    """With shared group norm the reference is still its prompt's image alone, and inside the
    UNet every GroupNorm's output is, for each image, GroupNorm of [x; x_ref] (concatenated along
    H, its half's reference) computed here in float64 from the input that norm received."""
    opts = SharingOptions(share_group_norm=True, shared_score_shift=math.log(2))
    unet, calls = tiny_engine.pipe.unet, []
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0].detach(), out.detach())))
             for m in (norms[0], norms[len(norms) // 2], norms[-1])]
    try:
        events = _run(style_aligned_set(tiny_engine, ["a cat", "a dog"], seed=5, steps=3, options=opts))
    finally:
        for h in hooks:
            h.remove()
    alone = list(tiny_engine.generate(["a cat"], seed=5, steps=3))[-1]
    np.testing.assert_allclose(_arr(events[-1].images[0]), _arr(alone.images[0]), atol=1.0)
    assert len(calls) == 3 * 3  # three norms, three steps; batch = 2 halves x 2 images
    for mod, x, y in calls:
        assert x.shape[0] == 4
        torch.testing.assert_close(y.double(), _naive_shared_group_norm(x, mod, groups=2), atol=1e-4, rtol=1e-4)


def _invert(engine, z0, steps):
    from core.jobs import Job, JobContext
    import queue

    return ddim_invert(engine, JobContext(Job("t", "inv"), queue.Queue()), z0, "a photo", steps, guidance=1.0)


def _round_trip_error(engine, z0, steps):
    traj = _invert(engine, z0, steps)
    assert len(traj) == steps + 1
    with torch.inference_mode():
        back = engine.pipe(prompt=["a photo"], num_inference_steps=steps, guidance_scale=1.0, width=64,
                           height=64, latents=traj[-1].clone(), output_type="latent").images
    return float((back - z0).norm() / z0.norm())


def _alphas_cumprod():
    """SD/SDXL's schedule written out: scaled-linear betas 0.00085..0.012 over 1000 steps."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def _inversion_step(z, eps, k, steps):
    """DDIM run backwards (the Style-Aligned reference's `_next_step`), float64: step k predicts
    eps at timestep tau_k = k * (1000 // steps) + 1 ("leading" spacing, offset 1) and moves the
    latent from alpha_bar(tau_k - ratio) (alpha_bar_0 before the first) to alpha_bar(tau_k)."""
    ac, ratio = _alphas_cumprod(), 1000 // steps
    tau = k * ratio + 1
    a, a_next = (ac[tau - ratio] if tau >= ratio else ac[0]), ac[tau]
    x0 = (z - np.sqrt(1 - a) * eps) / np.sqrt(a)
    return np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps, tau


def test_ddim_inversion_follows_the_formula_and_round_trips(tiny_engine, monkeypatch):
    """DDIM inversion, checked against the update written out in float64 here.

    With a smooth stand-in noise predictor (eps = 0.3 x + 1e-3 t, run through the real pipeline
    and scheduler) the whole trajectory is computed by hand; denoising the inverted end with
    the same prompt (guidance off) comes back within 5% at 100 steps, and the error shrinks as
    steps grow (a first-order method). With the real tiny UNet each recorded step obeys the
    same update with the noise the UNet predicted at that step."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    z0 = torch.randn(1, 4, 16, 16)

    def smooth_unet(sample, t, *args, return_dict=True, **kwargs):
        out = 0.3 * sample + 1e-3 * float(t)
        return SimpleNamespace(sample=out) if return_dict else (out,)

    monkeypatch.setattr(tiny_engine.pipe.unet, "forward", smooth_unet)
    traj = _invert(tiny_engine, z0, 10)
    z = z0.double().numpy()
    for k in range(10):
        z, tau = _inversion_step(z, 0.3 * z + 1e-3 * (k * 100 + 1), k, 10)
        np.testing.assert_allclose(traj[k + 1].double().numpy(), z, rtol=1e-5, atol=1e-5)
    err10, err100 = _round_trip_error(tiny_engine, z0, 10), _round_trip_error(tiny_engine, z0, 100)
    assert err100 < 0.05, err100
    assert err100 < err10 / 4, (err10, err100)
    monkeypatch.undo()

    unet, calls = tiny_engine.pipe.unet, []
    real = unet.forward

    def recording(sample, t, *args, **kwargs):
        out = real(sample, t, *args, **kwargs)
        calls.append((sample.detach().double().clone(), int(t), (out.sample if hasattr(out, "sample") else out[0])
                      .detach().double().clone()))
        return out

    monkeypatch.setattr(unet, "forward", recording)
    traj = _invert(tiny_engine, z0, 5)
    monkeypatch.undo()
    assert len(calls) == 5 and torch.equal(traj[0], z0)
    for k, (sample, t, eps) in enumerate(calls):
        torch.testing.assert_close(sample, traj[k].double(), atol=1e-6, rtol=0)
        expected, tau = _inversion_step(sample.numpy(), eps.numpy(), k, 5)
        assert t == tau
        np.testing.assert_allclose(traj[k + 1].double().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_real_reference_image_is_followed(tiny_engine):
    from PIL import Image
    ref = Image.new("RGB", (96, 64), (220, 40, 40))
    events = _run(style_aligned_set(tiny_engine, ["a cat", "a dog"], "", seed=2, steps=5,
                                    reference_image=ref, reference_prompt="a red square"))
    res = events[-1]
    assert len(res.images) == 3 and res.info["prompts"][0] == "a red square"
    # the reference slot ends on the encoded image: decoding it gives the VAE reconstruction
    z0 = tiny_engine.encode_image(ref, 64, 64)
    with torch.no_grad():
        recon = tiny_engine.pipe.image_processor.postprocess(
            tiny_engine.pipe.vae.decode(z0 / tiny_engine.pipe.vae.config.scaling_factor).sample, "pil")[0]
    np.testing.assert_allclose(_arr(res.images[0]), _arr(recon), atol=1.0)
    with pytest.raises(UserError):
        list(style_aligned_set(tiny_engine, ["a"], reference_image=ref, reference_prompt=""))


@pytest.mark.parametrize("prompts,msg", [([], "at least one"), (["  ", "\n"], "at least one"),
                                         ([f"p{i}" for i in range(9)], "at most")])
def test_bad_prompts(tiny_engine, prompts, msg):
    with pytest.raises(UserError, match=msg):
        list(style_aligned_set(tiny_engine, prompts))


def test_metrics_reported(tiny_engine):
    """CLIP text scores (cosine of image and prompt embeddings) and DINO consistency (mean
    cosine over the set's distinct pairs), recomputed here in float64 from the scoring models'
    raw embeddings of the very images the set produced."""
    from PIL import Image
    from core.metrics import Metrics

    metrics = Metrics(tiny=True)
    res = _run(style_aligned_set(tiny_engine, ["a", "b", "c"], steps=2, metrics=metrics))[-1]

    def pixels(img, size, mean, std):
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    clip, size, tok = metrics.clip()
    with torch.no_grad():
        img = clip.encode_image(torch.stack([pixels(i, size, (0.48145466, 0.4578275, 0.40821073),
                                                     (0.26862954, 0.26130258, 0.27577711)) for i in res.images]))
        txt = clip.encode_text(tok(res.info["prompts"]))
    expected = [cos(a.double(), b.double()) for a, b in zip(img, txt)]
    assert res.info["clip_text_scores"] == pytest.approx(expected, abs=2e-4)
    dino, size = metrics.dino()
    with torch.no_grad():
        emb = dino(torch.stack([pixels(i, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
                                for i in res.images])).double()
    pairs = [cos(emb[i], emb[j]) for i in range(3) for j in range(i + 1, 3)]
    assert res.info["style_consistency"] == pytest.approx(sum(pairs) / 3, abs=2e-4)
