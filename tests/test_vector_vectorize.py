"""Image -> SVG: LIVE's parts, both vectorizers on committed icons, events, bad input, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from core.events import Result
from core.vector.__main__ import main as cli
from core.vector.live import (SparseCoordInit, VectorProgress, connected_components, path_schedule,
                              psnr, udf_weight, xing_loss)
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
    assert float(xing_loss([bow])) > 0.1


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
