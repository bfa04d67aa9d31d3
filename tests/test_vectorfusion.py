"""VectorFusion (core/vectorfusion.py) on the tiny family: SDS gradients, the models left
untouched (also by a Stop), CLIP ranking, re-initialization, augmentation, the three styles,
image-to-SVG and icon sets; every SVG written renders in cairosvg and matches our rasterizer."""
from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import vectorfusion as vf
from core.engine import Engine
from core.errors import Cancelled, UserError
from core.events import Result
from core.metrics import Metrics
from core.vector.live import LiveSettings
from core.vector.rasterizer import render
from core.vector.scene import Scene, circle_shape
from core.vector.svg_io import parse_svg

cairosvg = pytest.importorskip("cairosvg")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def metrics():
    return Metrics(tiny=True)


@pytest.fixture(scope="module")
def half_engine(tmp_path_factory):
    """The tiny SDXL classes in bf16 on the CPU: the UNet runs in half precision and the VAE
    is not fp32, so the fp32 encoder path is the copy, as on a GPU."""
    engine = Engine("tiny", dtype="bf16", data_dir=tmp_path_factory.mktemp("vf-half"))
    engine.load()
    # (core.preview's latent-RGB fit leaves the resident VAE in fp32 after loading; put it in
    # the engine's half precision, as a GPU engine is meant to hold it)
    engine.pipe.vae.to(torch.bfloat16)
    assert next(engine.pipe.unet.parameters()).dtype == torch.bfloat16
    return engine


def cairo_rgb(svg: str, size: int) -> np.ndarray:
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, background_color="white")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64) / 255


def agrees_with_cairo(svg: str, size: int = 128) -> float:
    scene = parse_svg(svg)
    with torch.no_grad():
        ours = render(scene, size, round(size * scene.height / scene.width)).permute(1, 2, 0).double().numpy()
    mse = float(np.mean((ours - cairo_rgb(svg, size)) ** 2))
    return 10 * math.log10(1 / max(mse, 1e-12))


def model_state(engine):
    pipe = engine.pipe
    out = {}
    for name, mod in (("unet", pipe.unet), ("vae", pipe.vae)):
        for k, v in mod.state_dict().items():
            out[f"{name}.{k}"] = v.detach().clone()
    flags = {(n, k): (p.requires_grad, p.dtype, p.device) for n, m in (("unet", pipe.unet), ("vae", pipe.vae))
             for k, p in m.named_parameters()}
    modes = (pipe.unet.training, pipe.vae.training, type(pipe.unet.attn_processors[
        next(iter(pipe.unet.attn_processors))]))
    return out, flags, modes


def assert_same_state(before, after):
    (w0, f0, m0), (w1, f1, m1) = before, after
    assert w0.keys() == w1.keys()
    for k in w0:
        assert w0[k].dtype == w1[k].dtype and torch.equal(w0[k], w1[k]), k
    assert f0 == f1
    assert all(not rg for rg, _, _ in f1.values())
    assert m0 == m1


def drain(events):
    out = []
    for ev in events:
        out.append(ev)
    return out


# ----------------------------------------------------------------------------- SDS


@pytest.mark.parametrize("family", ["tiny", "tiny-sd"])
def test_sds_gradient_reaches_every_path_parameter(family, request):
    engine = request.getfixturevalue("tiny_engine" if family == "tiny" else "tiny_sd_engine")
    R, S = vf.sizes(engine)
    assert (R, S) == (75, 64)            # 600/512 of the model's resolution
    rng = np.random.default_rng(0)
    shapes = [circle_shape(rng.uniform(15, R - 15, 2), 6.0, fill=[*rng.uniform(0, 1, 3), 0.9])
              for _ in range(5)]
    scene = Scene(R, R, shapes)
    bg = torch.ones(3, requires_grad=True)
    params = scene.parameters()
    for p in params:
        p.requires_grad_(True)
    # no augmentation: every path is inside the encoded image, so every one must get a gradient
    sds = vf.SDS(engine, vf.full_prompt("a fox"), guidance=100, seed=0, augment=False)
    out = sds(render(scene, R, R, background=bg))
    assert 50 <= out.t <= 950
    out.loss.backward()
    for s in scene.shapes:
        for p in (s.points, s.fill):
            assert p.grad is not None and torch.isfinite(p.grad).all()
            assert p.grad.abs().sum() > 0
    assert bg.grad is not None and bg.grad.abs().sum() > 0
    # with the CLIPDraw augmentation the gradient still flows through perspective and crop
    for p in params:
        p.grad = None
    sds_aug = vf.SDS(engine, "a fox", guidance=100, seed=1, augment=True, p=1.0)
    sds_aug(render(scene, R, R, background=bg)).loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def _alphas_cumprod() -> np.ndarray:
    """SD/SDXL's schedule written out: scaled-linear betas 0.00085..0.012 over 1000 steps."""
    return np.cumprod(1.0 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2)


def test_sds_gradient_is_w_t_times_eps_difference(tiny_engine, monkeypatch):
    """The surrogate's gradient w.r.t. the latent is (1 - abar_t)(eps_hat - eps) with eps_hat =
    eps_u + g (eps_c - eps_u), the paper's formula, checked against an oracle that shares none of
    SDS's tensors: eps recovered from the noisy latent the UNet was given (x_t = sqrt(abar) z +
    sqrt(1 - abar) eps, abar written out), eps_c and eps_u from two separate UNet calls, on the
    prompt's own embeddings and on zeros (SDXL's unconditional branch without a negative prompt).
    Guidance 7 is far from 1, so swapped halves (guidance away from the prompt) are far off."""
    sds = vf.SDS(tiny_engine, "a fox", guidance=7.0, seed=3, augment=False)
    z = torch.randn(1, 4, 16, 16, requires_grad=True, generator=torch.Generator().manual_seed(1))
    sds.encoder = lambda x, gen=None: z
    unet, seen = tiny_engine.pipe.unet, []
    monkeypatch.setattr(unet, "forward", lambda sample, t, *a, _real=unet.forward, **kw: (
        seen.append((sample.detach().double().clone(), t.clone())), _real(sample, t, *a, **kw))[1])
    out = sds(torch.rand(3, 64, 64), t=400)
    monkeypatch.undo()
    out.loss.backward()
    (zt, tt), = seen
    assert zt.shape[0] == 2 and torch.equal(zt[0], zt[1]) and tt.tolist() == [400, 400]
    ab = _alphas_cumprod()[400]
    noise = (zt[0] - np.sqrt(ab) * z.detach().double()[0]) / np.sqrt(1 - ab)
    assert 0.9 < float(noise.std()) < 1.1  # a unit-variance draw: x_t was noised with sqrt(1 - abar)
    with torch.no_grad():
        emb, _, pooled, _ = tiny_engine.pipe.encode_prompt(prompt="a fox", device="cpu",
                                                           do_classifier_free_guidance=False)
        ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]])
        x = zt[:1].float()
        eps_c = unet(x, 400, encoder_hidden_states=emb,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        eps_u = unet(x, 400, encoder_hidden_states=torch.zeros_like(emb),
                     added_cond_kwargs={"text_embeds": torch.zeros_like(pooled), "time_ids": ids}).sample
    eps_hat = eps_u.double()[0] + 7.0 * (eps_c.double()[0] - eps_u.double()[0])
    expected = (1 - ab) * (eps_hat - noise)
    torch.testing.assert_close(z.grad[0].double(), expected, rtol=1e-4, atol=1e-4)
    swapped = (1 - ab) * (eps_c.double()[0] + 7.0 * (eps_u.double()[0] - eps_c.double()[0]) - noise)
    assert (swapped - expected).abs().max() > 100 * 1e-4


def test_sds_timesteps_are_uniform_on_50_to_950(tiny_engine, tiny_sd_engine):
    """t ~ U(50, 950) of the 1000 training steps (the paper's range), for both families."""
    for engine in (tiny_engine, tiny_sd_engine):
        sds = vf.SDS(engine, "a fox", seed=0, augment=False)
        ts = [sds.timestep() for _ in range(4000)]
        assert 50 <= min(ts) <= 52 and 948 <= max(ts) <= 950
        assert abs(np.mean(ts) - 500) < 15


def test_fp32_encoder_matches_the_vae_and_never_changes_it(tiny_engine, half_engine):
    x = torch.rand(1, 3, 64, 64)
    enc = vf.Fp32Encoder(tiny_engine.pipe.vae)
    assert not enc.copied                      # already fp32: the resident modules, read only
    ref = tiny_engine.pipe.vae.encode(2 * x - 1).latent_dist.sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(enc(x, torch.Generator().manual_seed(5)),
                               ref * tiny_engine.pipe.vae.config.scaling_factor)
    vae = half_engine.pipe.vae
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    enc16 = vf.Fp32Encoder(vae)
    assert enc16.copied and next(enc16.encoder.parameters()).dtype == torch.float32
    xg = x.clone().requires_grad_(True)
    enc16(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert next(vae.parameters()).dtype == torch.bfloat16
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


def test_sds_run_and_stop_leave_the_models_untouched(half_engine, tmp_path):
    """One SDS step with a fixed seed changes the SVG; UNet and VAE weights, dtypes, grad flags
    and processors are as before, a plain generation is bit-identical, also after a Stop."""
    engine = half_engine

    def plain():
        return np.asarray(drain(engine.generate(["a lighthouse"], seed=3, steps=2))[-1].images[0])

    image0 = plain()
    state0 = model_state(engine)
    opts = dict(style="iconographic", num_paths=6, seed=4, preview_every=1)
    r0 = drain(vf.text_to_svg(engine, "a lighthouse", vf.VFOptions(steps=0, **opts), init="scratch",
                              data_dir=tmp_path))[-1]
    r1 = drain(vf.text_to_svg(engine, "a lighthouse", vf.VFOptions(steps=1, **opts), init="scratch",
                              data_dir=tmp_path))[-1]
    assert r0.info["svg"] != r1.info["svg"]
    assert r1.info["paths"] == 6 and len(parse_svg(r1.info["svg"]).shapes) == 7   # + the background
    assert_same_state(state0, model_state(engine))
    assert np.array_equal(image0, plain())

    # Stop in the middle: Cancelled, the last SVG kept on disk, the models still untouched
    events = vf.text_to_svg(engine, "a lighthouse", vf.VFOptions(steps=50, **opts), init="scratch",
                            data_dir=tmp_path, owner="stopper")
    seen = []
    with pytest.raises(Cancelled):
        for ev in events:
            if isinstance(ev, vf.SvgProgress):
                seen.append(ev)
                if len(seen) == 2:
                    engine.cancel("stopper")
    svg_path, png_path = seen[-1].files
    kept = Path(svg_path).read_text()
    assert parse_svg(kept).shapes and Path(png_path).stat().st_size > 0
    assert not list(Path(svg_path).parent.glob("*.tmp"))       # nothing half-written
    assert_same_state(state0, model_state(engine))
    assert np.array_equal(image0, plain())


# ----------------------------------------------------------------------------- baseline


def test_ranking_picks_the_highest_clip_score_and_feeds_it_on(tiny_engine, metrics, tmp_path):
    prompt = "a tiny robot"
    events = drain(vf.text_to_svg(tiny_engine, prompt, vf.VFOptions(style="pixel art", num_paths=16, steps=0),
                                  k=3, sample_steps=2, metrics=metrics, data_dir=tmp_path))
    cands = [e for e in events if isinstance(e, Result) and e.info.get("stage") == "candidates"]
    assert len(cands) == 1 and len(cands[0].images) == 3
    # recomputed with a fresh scorer
    scores = Metrics(tiny=True).clip_text_scores(cands[0].images, [prompt] * 3)
    assert cands[0].info["clip_scores"] == pytest.approx(scores, abs=1e-4)
    assert cands[0].info["best"] == int(np.argmax(scores))
    assert len(set(scores)) == 3
    # pixel art from the baseline: the grid's colors are the best candidate's, not another's
    final = events[-1]
    grid = parse_svg(final.info["svg"])
    colors = np.stack([s.fill[:3].numpy() for s in grid.shapes]).reshape(4, 4, 3)
    for i, img in enumerate(cands[0].images):
        ref = np.asarray(img.convert("RGB").resize((4, 4), Image.Resampling.BOX), np.float32) / 255
        close = np.abs(colors - ref).max() < 1 / 255 + 1e-3
        assert close == (i == cands[0].info["best"])


def test_baseline_then_sds_streams_candidates_frames_and_files(tiny_engine, metrics, tmp_path):
    o = vf.VFOptions(num_paths=8, steps=4, preview_every=2, reinit_every=2)
    events = drain(vf.text_to_svg(tiny_engine, "a cup of coffee", o, k=2, sample_steps=2, live_steps=4,
                                  metrics=metrics, data_dir=tmp_path, owner="user:ann"))
    kinds = [type(e).__name__ for e in events]
    first_cand = next(i for i, e in enumerate(events) if isinstance(e, Result))
    frames = [e for e in events if isinstance(e, vf.SvgProgress)]
    assert first_cand < kinds.index("SvgProgress")
    assert any("LIVE" in f.message for f in frames) and any("SDS" in f.message for f in frames)
    assert all("loss" in f.metrics for f in frames)
    final = events[-1]
    assert len(final.info["losses"]) == 4 and all(math.isfinite(v) for v in final.info["losses"])
    assert "baseline_svg" in final.info and len(parse_svg(final.info["baseline_svg"]).shapes) == 8
    svg_path, png_path = map(Path, final.files)
    assert svg_path.read_text() == final.info["svg"]
    assert tmp_path in svg_path.parents and "ann" not in str(svg_path.relative_to(tmp_path))  # a digest, not the key
    assert svg_path.parent.parent == vf.run_folder(tmp_path, "user:ann").parent  # ann's own folder
    # the PNG is cairosvg's rendering of that very SVG
    png = np.asarray(Image.open(png_path).convert("RGB"), np.float64) / 255
    assert np.abs(png - cairo_rgb(final.info["svg"], png.shape[1])).max() < 1e-9
    assert agrees_with_cairo(final.info["svg"]) >= 30


# ----------------------------------------------------------------------------- presets, suffixes

ICON = "minimal flat 2d vector icon. lineal color. on a white background. trending on artstation"


def test_each_style_has_its_own_prompt_suffix():
    # the paper's iconographic suffix; PyTorch-SVGRender's for pixel art and sketch
    assert vf.full_prompt("a red panda.") == f"a red panda. {ICON}"
    assert vf.full_prompt("a red panda", "iconographic") == f"a red panda. {ICON}"
    assert vf.full_prompt("a red panda", "pixel art") == "a red panda. pixel art. trending on artstation"
    assert vf.full_prompt("a red panda", "sketch") == "a red panda. minimal 2d line drawing. trending on artstation"
    assert vf.full_prompt("", "sketch") == "minimal 2d line drawing. trending on artstation"


@pytest.mark.parametrize("style,suffix", [("iconographic", ICON),
                                          ("pixel art", "pixel art. trending on artstation"),
                                          ("sketch", "minimal 2d line drawing. trending on artstation")])
def test_the_model_sees_the_styles_suffix(style, suffix, tiny_engine, metrics, tmp_path, monkeypatch):
    sampled, distilled = [], []
    text_to_image = tiny_engine.text_to_image

    def recording_text_to_image(ctx, prompts, **kw):
        sampled.extend(prompts)
        return text_to_image(ctx, prompts, **kw)

    class RecordingSDS(vf.SDS):
        def __init__(self, engine, prompt, *a, **kw):
            distilled.append(prompt)
            super().__init__(engine, prompt, *a, **kw)

    monkeypatch.setattr(tiny_engine, "text_to_image", recording_text_to_image)
    monkeypatch.setattr(vf, "SDS", RecordingSDS)
    o = vf.VFOptions(style=style, num_paths=4, steps=1, preview_every=1)
    drain(vf.text_to_svg(tiny_engine, "a castle", o, k=1, sample_steps=1, live_steps=1, metrics=metrics,
                         data_dir=tmp_path))
    assert sampled == [f"a castle. {suffix}"] and distilled == [f"a castle. {suffix}"]


def test_presets_paper_by_default_and_fast():
    paper = vf.VectorFusionSettings()
    assert paper == vf.VectorFusionSettings.paper() == vf.VectorFusionSettings.preset("paper")
    # PyTorch-SVGRender conf/x/vectorfusion.yaml: sds.num_iter 1000, K 6, 50 sampling steps, CFG 7.5
    assert (paper.name, paper.sds_steps, paper.k, paper.sample_steps, paper.sample_guidance) == (
        "paper", 1000, 6, 50, 7.5)
    assert paper.live == LiveSettings.paper() and paper.live.steps_per_stage == 500
    assert paper.live_size(600) == 600 and paper.live_size(1200) == 600 and paper.live_size(75) == 75
    fast = vf.VectorFusionSettings.fast()
    assert fast == vf.VectorFusionSettings.preset("fast")
    assert (fast.name, fast.sds_steps, fast.k, fast.sample_steps) == ("fast", 500, 4, 30)
    assert fast.live == LiveSettings.fast() and fast.live_size(600) == 256
    assert vf.VFOptions().steps is None and vf.VFOptions().xing_weight == 0.01
    with pytest.raises(UserError, match="preset"):
        vf.VectorFusionSettings.preset("slow")


def test_a_preset_sets_every_budget_it_is_not_given(tiny_engine, metrics, tmp_path, monkeypatch):
    """The paper preset's shape with small numbers: K and sampling steps, LIVE's steps per
    stage (2 stages x 2 steps here), the SDS steps; the tiny family's default is "fast"."""
    calls = []
    text_to_image = tiny_engine.text_to_image

    def recording_text_to_image(ctx, prompts, **kw):
        calls.append((len(prompts), kw["steps"], kw["guidance"]))
        return text_to_image(ctx, prompts, **kw)

    live_kwargs = []
    live = vf.live

    def recording_live(target, **kw):
        live_kwargs.append(dict(kw, size=tuple(target.shape[1:])))
        return live(target, **kw)

    monkeypatch.setattr(tiny_engine, "text_to_image", recording_text_to_image)
    monkeypatch.setattr(vf, "live", recording_live)
    st = replace(vf.VectorFusionSettings.paper(), sds_steps=3, k=2, sample_steps=1,
                 live=replace(LiveSettings.paper(), steps_per_stage=2, schedule_each=2))
    events = drain(vf.text_to_svg(tiny_engine, "a cup", vf.VFOptions(num_paths=4, preview_every=1), preset=st,
                                  metrics=metrics, data_dir=tmp_path))
    final = events[-1]
    assert calls == [(2, 1, 7.5)]
    live_frames = [e for e in events if isinstance(e, vf.SvgProgress) and "LIVE" in e.message]
    assert [e.step for e in live_frames] == [1, 2, 3, 4]
    assert [e.metrics["paths"] for e in live_frames] == [2, 2, 4, 4]
    assert len(final.info["losses"]) == 3 and final.info["preset"] == "paper"
    assert all(e.total == 4 + 3 for e in events if isinstance(e, vf.SvgProgress))
    assert len(parse_svg(final.info["baseline_svg"]).shapes) == 4
    # LIVE at the render size (75 px here, under the paper's 600), with the paper's lengths scaled
    # from 600 px: radius 20 -> 2.5, reach 10 -> 1.25 (floored at 3), point rate 1.0 -> 0.125
    (kw,) = live_kwargs
    assert kw["size"] == (75, 75) and kw["steps_per_stage"] == 2 and kw["uniform_weight"] == 0.0
    assert kw["point_schedule"] == "age" and kw["udf_every"] == 1
    assert (kw["radius"], kw["udf_reach"], kw["point_lr"]) == pytest.approx((2.5, 3.0, 0.125))
    # no preset named: the offline tiny family runs "fast"
    events = drain(vf.text_to_svg(tiny_engine, "a cup", vf.VFOptions(num_paths=2, steps=1), init="scratch",
                                  data_dir=tmp_path))
    assert events[-1].info["preset"] == "fast"


# ----------------------------------------------------------------------------- styles, re-init


def test_reinitialize_replaces_exactly_the_paths_below_threshold():
    size = 120.0
    shapes = [circle_shape((30, 30), 10, fill=(1, 0, 0, 1.0)),      # fine
              circle_shape((60, 60), 10, fill=(0, 1, 0, 0.01)),     # transparent
              circle_shape((90, 90), 1.0, fill=(0, 0, 1, 1.0)),     # tiny area
              circle_shape((40, 80), 10, fill=(0.5, 0.5, 0.5, 0.06)),  # just above alpha threshold
              circle_shape((80, 40), 2.5, fill=(1, 1, 0, 1.0)),     # small
              circle_shape((100, 20), 3.5, fill=(0, 1, 1, 1.0))]    # just above the area threshold
    areas = [vf.path_area(s) for s in shapes]
    threshold = 30.0
    expected = [i for i, s in enumerate(shapes) if float(s.fill[3]) < 0.05 or areas[i] < threshold]
    assert expected == [1, 2, 4] and areas[4] < threshold < areas[5]
    before = [(s.points.clone(), s.fill.clone(), id(s.points), id(s.fill)) for s in shapes]
    replaced = vf.reinitialize(shapes, size, np.random.default_rng(0), alpha_threshold=0.05,
                               area_threshold=threshold, radius=8.0)
    assert replaced == expected
    for i, (s, (p0, f0, pid, fid)) in enumerate(zip(shapes, before)):
        assert id(s.points) == pid and id(s.fill) == fid          # same tensors: optimizer keeps them
        if i in expected:
            assert not torch.equal(s.points, p0) and float(s.fill[3]) == 1.0
            assert vf.path_area(s) >= threshold
            c = s.points.mean(0)
            assert (c >= 0).all() and (c <= size).all()          # anywhere on the canvas, not a corner
        else:
            assert torch.equal(s.points, p0) and torch.equal(s.fill, f0)


def test_reinitialize_default_threshold_is_64_px_at_600_scaled_by_area():
    """The paper's 64 px^2 at a 600 px canvas; an area scales with the square of the size, so at
    300 px the threshold is 16 px^2 (not 32) and the default radius 10 px."""
    def circle(r, alpha=1.0):
        return circle_shape((150, 150), r, fill=(1, 0, 0, alpha))

    kept, small = circle(2.2), circle(1.5)
    assert 16 < vf.path_area(kept) < 32 and vf.path_area(small) < 16
    replaced = vf.reinitialize([kept, small], 300.0, np.random.default_rng(0))
    assert replaced == [1]
    assert vf.path_area(small) == pytest.approx(vf.path_area(circle(10.0)), rel=1e-5)  # radius 20 * 300/600


def test_augment_identity_reproducible_and_differentiable():
    img = torch.rand(3, 40, 40, requires_grad=True)
    same = vf.perspective(img[None], torch.Generator().manual_seed(0), distortion=0.0)
    torch.testing.assert_close(same[0], img, atol=1e-5, rtol=0)
    a = vf.augment(img, 32, torch.Generator().manual_seed(1), p=1.0)
    b = vf.augment(img, 32, torch.Generator().manual_seed(1), p=1.0)
    assert a.shape == (1, 3, 32, 32) and torch.equal(a, b)
    a.sum().backward()
    assert img.grad.abs().sum() > 0
    small = vf.augment(torch.rand(3, 20, 20), 32, torch.Generator().manual_seed(2), p=0.0)
    assert small.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("style", ["pixel art", "sketch"])
def test_styles_from_scratch(style, tiny_sd_engine, tmp_path):
    o = vf.VFOptions(style=style, num_paths=9, steps=2, preview_every=1, seed=1)
    final = drain(vf.text_to_svg(tiny_sd_engine, "a castle", o, init="scratch", data_dir=tmp_path))[-1]
    scene = parse_svg(final.info["svg"])
    if style == "pixel art":
        assert len(scene.shapes) == 9 and all(s.stroke is None and s.fill is not None for s in scene.shapes)
        # squares on a grid of whole pixels: the points never move, only the colors
        assert all(len(s.points) == 12 for s in scene.shapes)
        assert final.info["render_size"] % 3 == 0
    else:
        assert len(scene.shapes) == 9 and all(s.fill is None and s.stroke is not None for s in scene.shapes)
        assert all(not s.subpaths[0][1] for s in scene.shapes)            # open strokes
    assert agrees_with_cairo(final.info["svg"]) >= 30


def test_bad_input_is_a_user_error(tiny_engine, metrics):
    with pytest.raises(UserError, match="prompt"):
        vf.text_to_svg(tiny_engine, "  ", metrics=metrics)
    with pytest.raises(UserError, match="style"):
        vf.text_to_svg(tiny_engine, "a cat", vf.VFOptions(style="oil"), metrics=metrics)
    with pytest.raises(UserError, match="paths"):
        vf.text_to_svg(tiny_engine, "a cat", vf.VFOptions(num_paths=0), metrics=metrics)
    with pytest.raises(UserError, match="K"):
        vf.text_to_svg(tiny_engine, "a cat", k=99, metrics=metrics)
    with pytest.raises(UserError, match="Unknown method"):
        vf.image_to_svg(tiny_engine, b"", init="potrace")
    with pytest.raises(UserError):
        drain(vf.image_to_svg(tiny_engine, b"not an image"))


# ----------------------------------------------------------------------------- image, icon sets


@pytest.mark.parametrize("method", ["live", "vtracer"])
def test_image_to_svg(method, tiny_engine, tmp_path):
    img = Image.new("RGB", (80, 60), "white")
    img.paste((200, 30, 30), (10, 10, 50, 45))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    events = drain(vf.image_to_svg(tiny_engine, buf.getvalue(), num_paths=4, init=method, steps=6, size=48,
                                   data_dir=tmp_path, preview_every=3))
    final = events[-1]
    assert any(isinstance(e, vf.SvgProgress) for e in events)
    assert final.info["paths"] <= 4 and final.info["init"] == method
    assert Path(final.files[0]).read_text() == final.info["svg"]
    scene = parse_svg(final.info["svg"])
    assert (scene.width, scene.height) == (80, 60)
    assert agrees_with_cairo(final.info["svg"]) >= 30


def test_icon_set_is_style_aligned_then_vectorized(tiny_engine, metrics, tmp_path):
    events = drain(vf.icon_set(tiny_engine, ["a guitar", "a sailboat"], num_paths=3, live_steps=3, live_size=32,
                               steps=2, metrics=metrics, data_dir=tmp_path))
    sets = [e for e in events if isinstance(e, Result) and e.info.get("stage") == "set"]
    assert len(sets) == 1 and sets[0].info["prompts"][0].endswith(vf.SUFFIX)
    final = events[-1]
    assert len(final.info["svgs"]) == 2 and len(final.files) == 4
    assert "style_consistency" in final.info
    for svg in final.info["svgs"]:
        assert len(parse_svg(svg).shapes) == 3
        assert agrees_with_cairo(svg) >= 30
