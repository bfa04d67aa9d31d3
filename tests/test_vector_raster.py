"""The differentiable rasterizer (core/vector/rasterizer.py) against cairosvg and finite differences."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.vector.rasterizer import layers, render, render_rgba
from core.vector.scene import Scene, circle_shape, polygon_shape
from core.vector.svg_io import parse_svg, read_svg, scene_to_svg

cairosvg = pytest.importorskip("cairosvg")

ICONS = sorted((Path(__file__).resolve().parents[1] / "assets" / "icons").glob("*.svg"))


pytestmark = pytest.mark.usefixtures("one_thread")


def cairo_render(svg: str | bytes, size: int) -> np.ndarray:
    data = svg.encode() if isinstance(svg, str) else svg
    png = cairosvg.svg2png(bytestring=data, output_width=size, output_height=size,
                           background_color="white")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255


def ours(scene: Scene, size: int) -> np.ndarray:
    with torch.no_grad():
        return render(scene, size, size).permute(1, 2, 0).double().numpy()


def psnr(a, b) -> float:
    return 10 * math.log10(1 / max(float(np.mean((a - b) ** 2)), 1e-12))


def test_a_clone_has_tensors_of_its_own():
    """Changing a clone in place (an optimizer's step) leaves the original as it was, and back."""
    stroked = polygon_shape([(2, 2), (30, 4), (16, 28)], fill=(0.2, 0.4, 0.6, 1.0))
    stroked.stroke, stroked.stroke_width = torch.tensor([0.1, 0.2, 0.3, 1.0]), torch.tensor(2.0)
    scene = Scene(32, 32, [circle_shape((16, 16), 8, fill=(1, 0, 0, 1)), stroked], background=(1, 1, 1))
    before = [[t.clone() for t in s.parameters()] for s in scene.shapes]
    copy = scene.clone()
    assert (copy.width, copy.height, copy.background) == (32, 32, (1, 1, 1))
    for s, c, saved in zip(scene.shapes, copy.shapes, before, strict=True):
        assert len(c.parameters()) == len(saved) and c.subpaths == s.subpaths
        for t, kept in zip(c.parameters(), saved, strict=True):
            assert torch.equal(t, kept)       # the same values ...
            t.add_(1.0)                       # ... in storage of its own
        for t, kept in zip(s.parameters(), saved, strict=True):
            assert torch.equal(t, kept)
    copy.shapes[0].points.sub_(5.0)
    scene.shapes[1].fill.mul_(0.0)
    assert torch.equal(copy.shapes[0].points, before[0][0] - 4.0)
    assert torch.equal(copy.shapes[1].fill, before[1][1] + 1.0)


def test_icon_set_is_committed():
    assert len(ICONS) >= 10
    assert (ICONS[0].parent / "LICENSE").is_file()


@pytest.mark.parametrize("icon", ICONS, ids=lambda p: p.stem)
def test_matches_cairosvg_on_icons_at_256(icon):
    scene = read_svg(icon)
    assert scene.shapes
    assert psnr(ours(scene, 256), cairo_render(icon.read_bytes(), 256)) >= 40.0


FILL_RULES_SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">
<path fill="#c33" fill-rule="evenodd" d="M4 4h26v26H4zM10 10h14v14H10z"/>
<path fill="#3c3" fill-rule="nonzero" d="M34 4h26v26H34zM40 10h14v14H40z"/>
<path fill="#33c" d="M4 34h26v26H4zM10 40v14h14V40z"/>
<path fill="#990" fill-rule="evenodd" d="M47 33l7.6 23.5L34.6 42h24.8L39.4 56.5z"/>
<path fill="#099" opacity="0.5" d="M20 20h30v30H20z"/>
</svg>"""


def test_fill_rules_and_opacity_match_cairosvg():
    scene = parse_svg(FILL_RULES_SVG)
    img = ours(scene, 128)
    assert psnr(img, cairo_render(FILL_RULES_SVG, 128)) >= 40.0
    # hole under even-odd, filled under nonzero (same orientation), hole for reversed inner loop
    assert np.allclose(img[30, 30], 1.0, atol=1e-6)                  # evenodd hole: white
    assert np.allclose(img[30, 94], [0.2, 0.8, 0.2], atol=0.01)     # nonzero: filled
    assert np.allclose(img[94, 34], 1.0, atol=1e-6)                  # reversed inner: hole


def test_alpha_over_is_exact_inside():
    a, c = 0.3, (0.2, 0.4, 0.6)
    scene = Scene(32, 32, [polygon_shape([(4, 4), (28, 4), (28, 28), (4, 28)], fill=(*c, 1.0)),
                           polygon_shape([(8, 8), (24, 8), (24, 24), (8, 24)], fill=(1, 0, 0, a))])
    img = render(scene, background=(1, 1, 1))
    expected = (1 - a) * torch.tensor(c) + a * torch.tensor([1.0, 0, 0])
    assert torch.allclose(img[:, 16, 16], expected, atol=1e-6)
    rgba = render_rgba(Scene(32, 32, [scene.shapes[1]]))
    assert torch.allclose(rgba[:, 16, 16], torch.tensor([1.0, 0, 0, a]), atol=1e-6)
    assert rgba[3, 0, 0] == 0


@pytest.mark.parametrize("dx", [0.0, 0.25, 0.5, 0.8])
def test_area_coverage_is_exact_along_axis_aligned_edges(dx):
    sq = polygon_shape([(5 + dx, 6.3), (20.7 + dx, 6.3), (20.7 + dx, 17.1), (5 + dx, 17.1)])
    cov = render_rgba(Scene(32, 32, [sq]))[3].double()
    # away from the corners every pixel holds exactly its covered area
    cols = torch.arange(32) + 0.5
    x_cov = ((torch.minimum(cols + 0.5, torch.tensor(20.7 + dx))
              - torch.maximum(cols - 0.5, torch.tensor(5 + dx))).clamp(0, 1)).double()
    assert torch.allclose(cov[12], x_cov, atol=1e-5)
    assert torch.allclose(cov[:, 12], torch.tensor([0.0] * 6 + [0.7] + [1.0] * 10 + [0.1] + [0.0] * 14,
                                                   dtype=torch.float64), atol=1e-5)
    # corners: the two edges' half-plane coverages multiply (exact for right angles)
    assert float(cov.sum()) == pytest.approx(15.7 * 10.8, rel=1e-5)


def _pixel_area_below(j, i, y0, slope):
    """Exact area of the pixel square [j, j+1] x [i, i+1] where y >= y0 + slope * x: the square
    clipped by the half-plane (Sutherland-Hodgman), then the shoelace formula, float64."""
    def f(p):
        return p[1] - y0 - slope * p[0]
    square = [(j, i), (j + 1, i), (j + 1, i + 1), (j, i + 1)]
    out = []
    for a, b in zip(square, square[1:] + square[:1]):
        if f(a) >= 0:
            out.append(a)
        if (f(a) >= 0) != (f(b) >= 0):
            u = f(a) / (f(a) - f(b))
            out.append((a[0] + u * (b[0] - a[0]), a[1] + u * (b[1] - a[1])))
    if len(out) < 3:
        return 0.0
    return abs(sum(x0 * y1 - x1 * y0_ for (x0, y0_), (x1, y1) in zip(out, out[1:] + out[:1]))) / 2


@pytest.mark.parametrize("degrees", [25.0, 45.0, 63.0])
def test_area_coverage_is_exact_along_a_slanted_edge(degrees):
    """A straight edge at an angle: every pixel it crosses holds exactly its covered area (the box
    filter's exact response), against the area clipped by hand."""
    slope, y0 = math.tan(math.radians(degrees)), 6.3
    x_far = (60 - y0) / slope  # the edge leaves the canvas's bottom here; the polygon goes on outside
    region = polygon_shape([(-5, y0 - 5 * slope), (x_far + 5, 60 + 5 * slope), (-5, 70)], fill=(0, 0, 0, 1))
    cov = render_rgba(Scene(64, 64, [region]))[3].double().numpy()
    checked = 0
    for i in range(2, 58):
        for j in range(min(int(x_far) - 1, 63)):
            exact = _pixel_area_below(j, i, y0, slope)
            if 0 < exact < 1:
                assert cov[i, j] == pytest.approx(exact, abs=2e-4), (i, j)
                checked += 1
    assert checked > 40


def test_sliver_thinner_than_a_pixel_has_its_area():
    sliver = polygon_shape([(10, 10.6), (30, 10.6), (30, 10.9), (10, 10.9)])
    cov = render_rgba(Scene(40, 20, [sliver]))[3]
    assert torch.allclose(cov[10, 12:28], torch.full((16,), 0.3), atol=1e-5)
    assert float(cov.sum()) == pytest.approx(20 * 0.3, abs=0.05)


def test_circle_area():
    cov = render_rgba(Scene(64, 64, [circle_shape((31.3, 32.6), 20, segments=8)]))[3]
    assert float(cov.sum()) == pytest.approx(math.pi * 400, rel=5e-3)


STROKES_SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">
<path fill="none" stroke="#222" stroke-width="4" stroke-linecap="round" stroke-linejoin="round"
 d="M6 50L20 10L34 50c10-20 20-20 24-40"/>
<path fill="#fc0" stroke="rgba(0,0,255,0.6)" stroke-width="3" stroke-linejoin="round"
 d="M40 40a10 10 0 1 0 0.01 0z"/>
<path fill="none" stroke="#a00" stroke-width="0.5" stroke-linecap="round" d="M4 60L60 56"/>
<path fill="none" stroke="#0a6" stroke-width="5" d="M44 6l14 9"/>
<path fill="none" stroke="#60a" stroke-width="3" stroke-linecap="square" stroke-linejoin="round"
 d="M6 6h14v8"/>
</svg>"""


def test_strokes_match_cairosvg_round_joins_all_caps():
    scene = parse_svg(STROKES_SVG)
    assert psnr(ours(scene, 128), cairo_render(STROKES_SVG, 128)) >= 40.0


def test_round_trip_through_our_svg_writer():
    for icon in ICONS:
        original = cairo_render(icon.read_bytes(), 256)
        again = cairo_render(scene_to_svg(read_svg(icon)), 256)
        assert psnr(again, original) >= 45.0, icon.stem


def _scene64(dtype=torch.float64):
    s = circle_shape((32, 30), 14, fill=(0.8, 0.2, 0.1, 0.9), segments=4)
    s.stroke = torch.tensor([0.1, 0.3, 0.9, 0.8])
    s.stroke_width = torch.tensor(3.0)
    t = polygon_shape([(5, 5), (40, 10), (30, 45)], fill=(0.2, 0.7, 0.3, 0.6), fill_rule="evenodd")
    return Scene(64, 64, [s.to(dtype=dtype), t.to(dtype=dtype)])


def test_gradients_match_finite_differences():
    scene = _scene64()
    weights = torch.rand(3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = scene.parameters()
    for p in params:
        p.requires_grad_(True)

    def loss():
        return (render(scene) * weights).sum()

    loss().backward()
    rng = np.random.default_rng(0)
    for p in params:
        flat = p.data.view(-1)
        for i in rng.choice(flat.numel(), size=min(4, flat.numel()), replace=False):
            h = 1e-3
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + h
                lp = loss().item()
                flat[i] = old - h
                lm = loss().item()
                flat[i] = old
            fd = (lp - lm) / (2 * h)
            ad = p.grad.view(-1)[i].item()
            assert ad == pytest.approx(fd, rel=0.03, abs=0.02), (tuple(p.shape), i, ad, fd)


def test_no_gradient_holes_for_thin_and_covered_shapes():
    thin = polygon_shape([(10.3, 10.1), (50.2, 10.1), (50.2, 10.4), (10.3, 10.4)], fill=(0, 0, 0, 1))
    big = polygon_shape([(-5, -5), (70, -5), (70, 70), (-5, 70)], fill=(0.5, 0.5, 0.5, 1))
    scene = Scene(64, 64, [big, thin])
    for p in scene.parameters():
        p.requires_grad_(True)
    render(scene).mean().backward()
    g = thin.points.grad
    # both long edges of a 0.3 px sliver (pixel centres miss it) move the image, all corners too
    assert (g[0:4, 1].abs() > 1e-4).all() and (g[6:10, 1].abs() > 1e-4).all()
    assert (g[[0, 3, 6, 9]].norm(dim=1) > 1e-4).all()
    assert (big.fill.grad[:3] != 0).all()           # fully covered canvas: color still learns
    assert (thin.fill.grad != 0).all()


def test_fitting_a_random_path_converges():
    target_scene = Scene(64, 64, [polygon_shape([(12, 14), (52, 8), (44, 54), (20, 48)],
                                                fill=(0.1, 0.5, 0.9, 1))])
    target = render(target_scene)
    g = torch.Generator().manual_seed(1)
    shape = circle_shape((32, 32), 8, fill=(0.5, 0.5, 0.5, 1))
    shape.points = shape.points + torch.randn(12, 2, generator=g)
    scene = Scene(64, 64, [shape])
    for p in scene.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [shape.points], "lr": 0.5},
                            {"params": [shape.fill], "lr": 0.02}])
    first = None
    for _ in range(200):
        loss = ((render(scene) - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = ((render(scene) - target) ** 2).mean().item()
    assert final < first / 20, (first, final)


def test_large_scene_is_culled_and_memory_bounded():
    g = torch.Generator().manual_seed(0)
    shapes = []
    for _ in range(256):
        c = torch.rand(2, generator=g) * 600
        shapes.append(circle_shape(c.tolist(), float(10 + 60 * torch.rand(1, generator=g)),
                                   fill=(*torch.rand(3, generator=g).tolist(), 0.8)))
    scene = Scene(600, 600, shapes)
    ls = layers(scene, 600, 600)
    area = sum(b[2] * b[3] for b, _, _ in ls)
    assert area < 0.1 * 256 * 600 * 600        # boxes, not 256 full canvases
    for p in scene.parameters():
        p.requires_grad_(True)
    render(scene).mean().backward()
    assert all(s.points.grad is not None for s in shapes)


def test_scale_and_supersampling_agree():
    scene = read_svg(ICONS[0])
    a = ours(scene, 96)
    with torch.no_grad():
        b = render(scene, 96, 96, samples=3).permute(1, 2, 0).double().numpy()
    assert psnr(a, b) >= 40.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scene = read_svg(ICONS[0])
    a = ours(scene, 128)
    with torch.no_grad():
        b = render(scene.to("cuda"), 128, 128).permute(1, 2, 0).double().cpu().numpy()
    assert np.abs(a - b).max() < 1e-4


def test_diffvg_backend_is_optional():
    scene = read_svg(ICONS[0])
    try:
        import pydiffvg  # noqa: F401
    except ImportError:
        from core.errors import UserError
        with pytest.raises(UserError, match="pydiffvg"):
            render(scene, 64, 64, backend="diffvg")
    else:  # pragma: no cover - only where pydiffvg is installed
        with torch.no_grad():
            a = render(scene, 128, 128).permute(1, 2, 0).double().numpy()
            b = render(scene, 128, 128, backend="diffvg", samples=4).permute(1, 2, 0).double().cpu().numpy()
        assert psnr(a, b) >= 30.0
    with pytest.raises(ValueError):
        render(scene, 64, 64, backend="nope")


# --- the batched path (raster_batched.py) against the per-shape loop -------------------------

def _blobs(n, size, seed=0, stroke=False):
    """Random closed cubic blobs (as bench/vector.py's scenes), optionally stroked and open."""
    from core.vector.scene import Shape
    g = torch.Generator().manual_seed(seed)
    shapes = []
    for k in range(n):
        c = torch.rand(2, generator=g) * size
        r = (0.05 + 0.2 * torch.rand(1, generator=g)) * size
        ang = torch.arange(12) * (2 * math.pi / 12)
        rad = r * (1 + 0.3 * (torch.rand(12, generator=g) * 2 - 1))
        pts = c + torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], 1)
        fill = torch.cat([torch.rand(3, generator=g), 0.5 + 0.5 * torch.rand(1, generator=g)])
        s = Shape(pts, [(4, True)], fill=fill)
        if stroke and k % 2:
            s = Shape(torch.cat([pts, pts[:1]]), [(4, False)], fill=None if k % 4 == 1 else fill,
                      stroke=torch.tensor([0.1, 0.2, 0.3, 0.7]), stroke_width=torch.tensor(2.5),
                      stroke_cap=("round", "butt", "square")[k % 3])
        shapes.append(s)
    return Scene(size, size, shapes)


def _paths_scenes():
    return {
        "fill-rules-opacity": (parse_svg(FILL_RULES_SVG), 128),
        "strokes-all-caps": (parse_svg(STROKES_SVG), 128),
        "fd-scene": (_scene64(torch.float32), 64),
        "thin-and-covered": (Scene(64, 64, [
            polygon_shape([(-5, -5), (70, -5), (70, 70), (-5, 70)], fill=(0.5, 0.5, 0.5, 1)),
            polygon_shape([(10.3, 10.1), (50.2, 10.1), (50.2, 10.4), (10.3, 10.4)], fill=(0, 0, 0, 1))]), 64),
        "evenodd-only": (Scene(64, 64, [
            polygon_shape([(32, 4), (48, 60), (6, 24), (58, 24), (16, 60)], fill=(0.9, 0.6, 0.1, 0.8),
                          fill_rule="evenodd"),
            polygon_shape([(10, 10), (40, 12), (38, 40), (12, 38)], fill=(0.1, 0.3, 0.9, 0.7),
                          fill_rule="evenodd")]), 64),
        "icon": (read_svg(ICONS[1]), 96),
        "blobs-32": (_blobs(32, 128), 128),
        "blobs-strokes-open": (_blobs(24, 96, seed=3, stroke=True), 96),
    }


def _render_path(scene, size, path):
    """White-background RGB by the loop, or by the batched path with one composite mode."""
    if path == "loop":
        return render(scene, size, size, path="loop")
    from core.vector.raster_batched import render_batched
    p = scene.shapes[0].points
    canvas = torch.ones(4, size, size, dtype=p.dtype)
    return render_batched(scene, size, size, canvas, composite_mode=path.split("-")[1])[:3]


@pytest.mark.parametrize("mode", ["batched-scan", "batched-boxes"])
@pytest.mark.parametrize("name", list(_paths_scenes()))
def test_batched_path_matches_the_loop(name, mode):
    """Same image and gradients (points, colours, widths) from both paths, to 1e-5, with
    either composite (the scan over paint order, or box by box)."""
    scene, size = _paths_scenes()[name]
    weights = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    results = []
    for path in ("loop", mode):
        s = scene.clone()
        params = s.parameters()
        for p in params:
            p.requires_grad_(True)
        img = _render_path(s, size, path)
        (img * weights).sum().backward()
        results.append((img.detach(), [p.grad for p in params]))
    (img_a, grads_a), (img_b, grads_b) = results
    assert (img_a - img_b).abs().max() <= 1e-5
    assert any(g is not None and g.abs().max() > 0 for g in grads_a)
    for ga, gb, p in zip(grads_a, grads_b, scene.parameters()):
        # no gradient at all (None) and an all-zero one are the same answer
        ga = torch.zeros_like(p) if ga is None else ga
        gb = torch.zeros_like(p) if gb is None else gb
        assert (ga - gb).abs().max() <= 1e-5 * max(1.0, float(ga.abs().max())), name


def test_batched_path_with_supersampling_and_rgba():
    scene, _ = _paths_scenes()["fill-rules-opacity"]
    a = render_rgba(scene, 48, 48, samples=2, path="loop")
    b = render_rgba(scene, 48, 48, samples=2, path="batched")
    assert (a - b).abs().max() <= 1e-5


def test_batched_composite_is_alpha_over_in_paint_order():
    """Three overlapping translucent squares: the centre pixel by hand, top layer last."""
    cols = [(1.0, 0, 0, 0.5), (0, 1.0, 0, 0.25), (0, 0, 1.0, 0.75)]
    sq = [polygon_shape([(4 + k, 4 + k), (20 + k, 4 + k), (20 + k, 20 + k), (4 + k, 20 + k)], fill=c)
          for k, c in enumerate(cols)]
    expected = np.ones(3)
    for *rgb, a in cols:
        expected = (1 - a) * expected + a * np.array(rgb)
    for mode in ("batched-scan", "batched-boxes"):
        img = _render_path(Scene(32, 32, sq), 32, mode)
        assert np.allclose(img[:, 12, 12].double().numpy(), expected, atol=1e-6), mode


def test_path_choice():
    from core.vector.rasterizer import choose_path
    one, many = Scene(64, 64, _blobs(1, 64).shapes), _blobs(8, 64)
    assert choose_path(one) == "loop" and choose_path(many) == "batched"
    assert choose_path(one, "batched") == "batched"
    with pytest.raises(ValueError):
        choose_path(one, "nope")


def test_batched_edge_sides_with_a_far_off_point():
    """A control point far off the canvas (edges spanning huge heights: the all-edges
    fallback of the band lookup) renders as the loop does."""
    far = polygon_shape([(4, 4), (28, 4), (28, 28), (4, 28)], fill=(0.2, 0.4, 0.6, 1.0))
    far.points = far.points.clone()
    far.points[4] = torch.tensor([16.0, 1e9])
    ok = polygon_shape([(8, 8), (24, 8), (24, 24), (8, 24)], fill=(1, 0, 0, 0.5))
    scene = Scene(32, 32, [far, ok])
    with torch.no_grad():
        a, b = render(scene, path="loop"), render(scene, path="batched")
    assert torch.isfinite(b).all() and (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("path", ["loop", "batched"])
def test_a_shape_with_a_nan_point_is_not_drawn_and_the_rest_is(path):
    """An optimiser step that blew up leaves a non-finite control point: that shape is skipped,
    the others render (and get gradients) exactly as without it."""
    def shapes():
        return [circle_shape((10, 10), 6, (1, 0, 0, 1)), circle_shape((22, 22), 6, (0, 0, 1, 1)),
                circle_shape((16, 16), 5, (0, 1, 0, 0.5))]
    broken, plain = shapes(), shapes()
    broken[1].points.data[0, 0] = float("nan")
    for sh in broken + plain:
        sh.points.requires_grad_(True)
    target = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    img = render(Scene(32, 32, broken), path=path)
    ref = render(Scene(32, 32, [plain[0], plain[2]]), path=path)
    assert torch.isfinite(img).all() and torch.allclose(img, ref, atol=1e-6)
    ((img - target) ** 2).sum().backward()
    ((ref - target) ** 2).sum().backward()
    for i, j in ((0, 0), (2, 2)):
        assert torch.allclose(broken[i].points.grad, plain[j].points.grad, atol=1e-6)
