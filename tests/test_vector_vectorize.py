"""Image -> SVG: LIVE's parts, both vectorizers on committed icons, events, bad input, CLI."""
from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from core.events import Result
from core.vector.__main__ import main as cli
from core.vector.live import (Fitter, LiveSettings, SparseCoordInit, VectorProgress, connected_components,
                              live, path_schedule, point_lr_factor, psnr, udf_weight, xing_loss)
from core.vector.rasterizer import render
from core.vector.scene import Shape, circle_shape
from core.vector.svg_io import parse_svg
from core.vector.vectorize import image_tensor, run, vectorize, vtracer_svg

cairosvg = pytest.importorskip("cairosvg")
pytest.importorskip("vtracer")

ICONS = Path(__file__).resolve().parents[1] / "assets" / "icons"


pytestmark = pytest.mark.usefixtures("one_thread")


def icon_png(name: str, size: int) -> bytes:
    return cairosvg.svg2png(url=str(ICONS / f"{name}.svg"), output_width=size,
                            output_height=size, background_color="white")


def test_path_schedule():
    assert path_schedule(16) == [1, 2, 4, 8, 1]
    assert path_schedule(64, max_per_stage=16) == [1, 2, 4, 8, 16, 16, 16, 1]
    assert path_schedule(12, kind="repeat", first=4) == [4, 4, 4]


def test_connected_components_are_4_connected():
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[1:3, 1:3] = True           # a 2x2 block
    m[3, 3] = True               # touches it only diagonally: its own component
    m[5:8, 0:8] = True           # a big bar
    lab = connected_components(m)
    ids, counts = np.unique(lab[lab > 0].numpy(), return_counts=True)
    assert sorted(counts.tolist()) == [1, 4, 24]
    assert (lab[~m] == 0).all()


def test_sparse_coord_init_starts_at_the_largest_error_component():
    target = torch.ones(3, 40, 40)
    target[:, 5:25, 5:25] = 0.0      # big dark square
    target[:, 30:34, 30:34] = 0.0    # small one, same error level
    init = SparseCoordInit(torch.ones_like(target), target)
    x, y = init()
    assert 12 <= x <= 18 and 12 <= y <= 18
    x, y = init()
    assert 30 <= x <= 34 and 30 <= y <= 34


def test_xing_loss_penalises_self_intersection_only():
    assert float(xing_loss([circle_shape((10, 10), 5)])) == 0.0
    bow = Shape(torch.tensor([[0.0, 0], [10, 10], [10, 0], [0, 10], [-5, 5], [-5, 0]]),
                [(2, True)], fill=torch.tensor([0, 0, 0, 1.0]))
    assert float(xing_loss([bow], scale=1.0)) > 0.1      # the penalty itself, before LIVE's 1e-3 scale


def _xing_by_hand(points: list[tuple[float, float]]) -> float:
    """LIVE's formula for one closed path of cubics, in plain float64 Python (no scale)."""
    def sin(a, b):
        return (a[0] * b[1] - a[1] * b[0]) / (math.hypot(*a) * math.hypot(*b))

    n = len(points) // 3
    total = 0.0
    for k in range(n):
        p0, p1, p2, p3 = (points[(3 * k + j) % len(points)] for j in range(4))
        u, m, v = ((p1[0] - p0[0], p1[1] - p0[1]), (p2[0] - p1[0], p2[1] - p1[1]),
                   (p3[0] - p2[0], p3[1] - p2[1]))
        d = 1.0 if sin(u, m) >= 0 else 0.0
        total += d * max(0.0, -sin(u, v)) + (1 - d) * max(0.0, sin(u, v))
    return total / n


def test_xing_loss_is_lives_formula_scaled_by_1e3_and_averaged_over_paths():
    # a bow tie of two cubics: the first crosses itself (sin(u, m) = -1/sqrt 2 < 0 so D = 0,
    # sin(u, v) = 200/200 = 1: penalty 1), the second turns consistently (penalty 0)
    bow_pts = [(0.0, 0.0), (10.0, 10.0), (10.0, 0.0), (0.0, 10.0), (-5.0, 5.0), (-5.0, 0.0)]
    assert _xing_by_hand(bow_pts) == pytest.approx(0.5, abs=1e-12)
    odd_pts = [(0.0, 0.0), (7.0, 1.0), (2.0, 6.0), (9.0, 8.0), (3.0, 12.0), (-4.0, 3.0),
               (1.0, -6.0), (-2.0, 9.0), (5.0, -3.0)]
    shapes = [Shape(torch.tensor(pts, dtype=torch.float64), [(len(pts) // 3, True)],
                    fill=torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))
              for pts in (bow_pts, odd_pts)]
    shapes.append(circle_shape((10, 10), 5))                         # no crossing: 0
    expected = 1e-3 * (_xing_by_hand(bow_pts) + _xing_by_hand(odd_pts) + 0.0) / 3
    assert expected > 1e-4
    got = float(xing_loss(shapes))
    assert got == pytest.approx(expected, rel=1e-6)                 # unscaled would be 1000x this
    # LIVE's loss adds it with weight 0.01 on top of the 1e-3 scale: 1e-5 in all
    assert LiveSettings.paper().xing_weight * 1e-3 == pytest.approx(1e-5)


def test_live_settings_presets_are_the_reference_and_ours():
    paper = LiveSettings()
    assert paper == LiveSettings.paper()
    # LIVE/config/base.yaml num_iter 500 per stage; PSR VectorFusion: repeat 16, 600 px, no floor
    assert (paper.steps_per_stage, paper.schedule, paper.schedule_each, paper.size, paper.uniform_weight,
            paper.xing_weight) == (500, "repeat", 16, 600, 0.0, 0.01)
    assert paper.path_schedule(64) == [16, 16, 16, 16] and paper.total_steps(64) == 2000
    # PSR VectorFusion at 600 px: circles of radius 20, LIVE's 10 px UDF reach, point rate 1.0;
    # lengths scale with the canvas (300 px: half of each)
    assert paper.geometry(600) == pytest.approx({"radius": 20.0, "udf_reach": 10.0, "point_lr": 1.0})
    assert paper.geometry(300) == pytest.approx({"radius": 10.0, "udf_reach": 5.0, "point_lr": 0.5})
    fast = LiveSettings.fast()
    assert (fast.steps_per_stage, fast.steps, fast.schedule, fast.size, fast.uniform_weight) == (
        None, 500, "exp", 256, 0.1)
    assert fast.path_schedule(16) == path_schedule(16) and fast.total_steps(64) == 500
    # LIVE's own lengths taken at 240 px (live()'s keyword defaults, floored at 2 px and 3 px)
    assert fast.geometry(240) == pytest.approx({"radius": 5.0, "udf_reach": 10.0, "point_lr": 1.0})
    assert fast.geometry(48) == pytest.approx({"radius": 2.0, "udf_reach": 3.0, "point_lr": 0.2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.steps_per_stage = 1                                    # frozen


def test_point_rate_decays_with_each_groups_age_as_in_live():
    # 1 for the first 20 % of a 500-step block, then linear 0.4^k -> 0.4^(k+1) across block k
    expected = {0: 1.0, 99: 1.0, 100: 1.0 * 0.8 + 0.4 * 0.2, 250: 0.5 + 0.2, 500: 0.4,
                750: 0.4 * 0.5 + 0.16 * 0.5, 1000: 0.16}
    for age, value in expected.items():
        assert point_lr_factor(age, 500) == pytest.approx(value, abs=1e-12), age
    fitter = Fitter(point_lr=2.0)
    fitter.add([circle_shape((5, 5), 2)], born=0)
    fitter.add([circle_shape((9, 9), 2)], born=500)
    fitter.set_point_ages(750, every=500)
    rates = [g["lr"] for g in fitter.opt.param_groups if g["kind"] == "points"]
    assert rates == pytest.approx([2.0 * 0.28, 2.0 * 0.7])        # ages 750 and 250
    assert LiveSettings.paper().point_schedule == "age" and LiveSettings.fast().point_schedule == "stage"


def test_udf_weight_follows_the_new_paths_every_step_when_asked(monkeypatch):
    """LIVE recomputes the UDF weight of the stage's new paths inside the step loop, from where
    they are now; `udf_every=0` computes it once per stage, where they start."""
    live_module = importlib.import_module("core.vector.live")    # (core.vector.live is also the function)

    target = torch.ones(3, 16, 16)
    target[:, 4:12, 4:12] = 0.0
    seen = []
    original = live_module.udf_weight

    def recording(shapes, *a, **kw):
        seen.append([s.points.detach().clone() for s in shapes])
        return original(shapes, *a, **kw)

    monkeypatch.setattr(live_module, "udf_weight", recording)
    list(live(target, num_paths=2, schedule=[1, 1], steps_per_stage=3, udf_every=1, uniform_weight=0.0))
    assert len(seen) == 6 and all(len(shapes) == 1 for shapes in seen)      # the new path only
    assert not torch.equal(seen[0][0], seen[1][0])                           # where it is now
    assert not torch.equal(seen[1][0], seen[2][0])
    seen.clear()
    list(live(target, num_paths=2, schedule=[1, 1], steps_per_stage=3, udf_every=0))
    assert len(seen) == 2
    assert LiveSettings.paper().udf_every == 1 and LiveSettings.fast().udf_every == 0


def test_live_runs_steps_per_stage_when_asked():
    target = torch.ones(3, 16, 16)
    target[:, 4:12, 4:12] = 0.0
    gen = live(target, num_paths=4, schedule=[2, 2], steps=999, steps_per_stage=3, preview_every=1)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            scene = stop.value
            break
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6] and all(e.total == 6 for e in events)
    assert [e.metrics["paths"] for e in events] == [2, 2, 2, 4, 4, 4]
    assert len(scene.shapes) == 4
    # without it, `steps` is the budget of the whole run, split across the stages
    events = [e for e in live(target, num_paths=4, schedule=[2, 2], steps=5, preview_every=1)]
    assert [e.metrics["paths"] for e in events] == [2, 2, 4, 4, 4] and events[-1].total == 5


def test_udf_weight_is_one_on_the_outline_and_zero_far_away():
    w = udf_weight([circle_shape((20, 20), 8)], 40, 40, reach=4.0, device="cpu")
    assert float(w[20, 27]) > 0.85       # pixel centre (27.5, 20.5) is ~0.5 px from the circle
    assert float(w[20, 20]) == 0.0 and float(w[0, 0]) == 0.0


@pytest.mark.parametrize("name,min_psnr", [("checkmark", 40.0), ("like", 35.0)])
def test_live_reaches_psnr_on_icons(name, min_psnr):
    # 64 px, 8 paths in stages 1, 2, 4, 1, 200 optimization steps (a few seconds on one CPU core)
    res = run(vectorize(icon_png(name, 64), num_paths=8, init="live", steps=200, size=64))
    assert res.info["paths"] == 8
    assert res.info["psnr"] >= min_psnr


@pytest.mark.parametrize("name", ["clock", "planner", "music"])
def test_vtracer_init_plus_refinement_beats_vtracer(name):
    png = icon_png(name, 64)
    target, _ = image_tensor(png, 64)
    traced = parse_svg(vtracer_svg(target))
    before = psnr(render(traced, 64, 64), target)
    res = run(vectorize(png, num_paths=len(traced.shapes), init="vtracer", steps=60, size=64))
    assert res.info["paths"] <= len(traced.shapes)
    assert res.info["psnr"] >= before + 3.0, (before, res.info["psnr"])


def test_events_stream_frames_and_svg_and_end_with_a_result():
    img = Image.open(__import__("io").BytesIO(icon_png("music", 96))).resize((96, 72))
    events = list(vectorize(img, num_paths=3, init="live", steps=20, size=48, preview_every=5))
    progress = [e for e in events if isinstance(e, VectorProgress)]
    assert len(progress) >= 4 and isinstance(events[-1], Result)
    assert [p.step for p in progress] == sorted(p.step for p in progress)
    p = progress[-1]
    assert p.preview[0].size == (48, 36) and "<path" in p.svg
    assert {"loss", "psnr", "paths"} <= set(p.metrics)
    final = parse_svg(events[-1].info["svg"])
    assert (final.width, final.height) == (96, 72)      # written at the image's own size
    assert len(final.shapes) == 3


def test_stopping_early_is_clean():
    gen = vectorize(icon_png("music", 48), num_paths=4, init="live", steps=100, size=48,
                    preview_every=1)
    first = next(gen)
    assert isinstance(first, VectorProgress)
    gen.close()                                   # what Cancel does: nothing to clean up


@pytest.mark.parametrize("kwargs,match", [
    (dict(image=b"not an image"), "could not be read"),
    (dict(image=None), "No image"),
    (dict(init="potrace"), "Unknown init"),
    (dict(num_paths=0), "paths"),
    (dict(steps=-1), "steps"),
    (dict(size=4), "size")])
def test_bad_input_gets_a_user_error(kwargs, match):
    args = dict(image=icon_png("music", 32), num_paths=2, steps=1, size=32)
    args.update(kwargs)
    image = args.pop("image")
    with pytest.raises(UserError, match=match):
        run(vectorize(image, **args))


def test_cli_vectorize(tmp_path, capsys):
    src = tmp_path / "in.png"
    src.write_bytes(icon_png("checkmark", 64))
    out = tmp_path / "out.svg"
    assert cli(["vectorize", str(src), "-o", str(out), "--paths", "4", "--init", "vtracer",
                "--steps", "10", "--size", "48", "--quiet"]) == 0
    scene = parse_svg(out.read_text())
    assert 1 <= len(scene.shapes) <= 4 and scene.width == 64
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    assert cli(["vectorize", str(bad), "-o", str(tmp_path / "x.svg")]) == 2
    assert "could not be read" in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()
