"""The Text-to-SVG tab in the launched tiny app: gradio_client on the three api_names, and a
browser run with streaming frames, downloads and Stop."""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from core.vector.rasterizer import render
from core.vector.svg_io import parse_svg

from .conftest import screenshot

cairosvg = pytest.importorskip("cairosvg")


def svg_args(prompt="a paper plane", style="iconographic", start="baseline", paths=8, k=2, steps=4,
             guidance=100, seed=0, sample_steps=2, live_steps=4, negative=""):
    return [prompt, style, start, paths, k, steps, guidance, seed, sample_steps, live_steps, negative]


@pytest.fixture(scope="module")
def client(live_app):
    return Client(live_app.url, verbose=False)


def check_downloads(svg_path: str, png_path: str, min_psnr: float = 30.0) -> str:
    """The SVG renders in cairosvg, our rasterizer agrees with it, and the PNG offered is
    cairosvg's rendering of that very SVG."""
    svg = Path(svg_path).read_text()
    scene = parse_svg(svg)
    png = np.asarray(Image.open(png_path).convert("RGB"), np.float64) / 255
    W = png.shape[1]
    cairo = np.asarray(Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg.encode(), output_width=W,
                                                               background_color="white"))).convert("RGB"),
                       np.float64) / 255
    assert np.array_equal(png, cairo)
    with torch.no_grad():
        ours = render(scene, W, png.shape[0]).permute(1, 2, 0).double().numpy()
    mse = float(np.mean((ours - cairo) ** 2))
    assert 10 * math.log10(1 / max(mse, 1e-12)) >= min_psnr
    return svg


def test_api_svg_generate(client):
    cands, preview, status, svg_file, png_file, info = client.predict(*svg_args(), api_name="/svg_generate")
    assert "Done" in status
    assert len(cands) == 2 and all("CLIP" in c["caption"] for c in cands)
    assert sum("(best)" in c["caption"] for c in cands) == 1
    assert info["clip_scores"][info["best"]] == max(info["clip_scores"])
    assert len(info["losses"]) == 4 and info["paths"] == 8
    svg = check_downloads(svg_file, png_file)
    assert svg == info["svg"]
    assert Path(preview).read_bytes() == Path(png_file).read_bytes()   # preview = the PNG download


@pytest.mark.parametrize("style", ["pixel art", "sketch"])
def test_api_svg_generate_styles_from_scratch(client, style):
    *_, svg_file, png_file, info = client.predict(*svg_args(style=style, start="scratch", paths=9, steps=2),
                                                  api_name="/svg_generate")
    check_downloads(svg_file, png_file)
    assert info["style"] == style and info["paths"] == 9


def test_api_vectorize(client, tmp_path):
    path = tmp_path / "square.png"
    img = Image.new("RGB", (64, 48), "white")
    img.paste((30, 90, 200), (8, 8, 40, 40))
    img.save(path)
    for method in ("live", "vtracer"):
        preview, status, svg_file, png_file, info = client.predict(handle_file(str(path)), method, 4, 6, 48,
                                                                   api_name="/vectorize")
        assert "Done" in status and info["init"] == method and info["paths"] <= 4
        check_downloads(svg_file, png_file)


def test_api_icon_set(client):
    gallery, status, files, info = client.predict("a guitar\na sailboat", 3, 3, 32, 0, 2, 5.0,
                                                  api_name="/svg_icon_set")
    assert "Done" in status and len(gallery) == 2 and len(files) == 4
    svgs = sorted((f for f in files if f.endswith(".svg")), key=lambda f: Path(f).name)
    pngs = sorted((f for f in files if f.endswith(".png")), key=lambda f: Path(f).name)
    assert [Path(f).stem for f in svgs] == [Path(f).stem for f in pngs] == ["01-a-guitar", "02-a-sailboat"]
    for s, p in zip(svgs, pngs):
        check_downloads(s, p)


def test_api_stop_is_the_runs_own_last_update(client):
    """Stop (svg_stop) reaches the run of the same session, and the run itself ends with the
    Stopped status and the SVG it wrote on stopping (no reply from the Stop handler, which a
    progress line already on its way could overwrite)."""
    job = client.submit(*svg_args(start="scratch", steps=3000), api_name="/svg_generate")
    deadline = time.monotonic() + 120
    while not any("SDS" in str(out[2]) for out in job.outputs()):     # optimizing, an SVG on disk
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.2)
    client.predict(api_name="/svg_stop")
    cands, preview, status, svg_file, png_file, info = job.result(timeout=60)
    assert "Stopped" in status and "SDS" not in status
    check_downloads(svg_file, png_file)


def test_api_bad_input_is_a_clear_error(client, live_app):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="prompt"):
        client.predict(*svg_args(prompt="  "), api_name="/svg_generate")
    with pytest.raises(AppError, match="could not be read|empty"):
        bad = Path(live_app.data_dir) / "bad.png"
        bad.write_bytes(b"not an image")
        client.predict(handle_file(str(bad)), "live", 4, 6, 48, api_name="/vectorize")
    assert live_app.alive()


@pytest.mark.browser
def test_browser_text_to_svg_streams_downloads_and_stops(live_app, page):
    page.goto(live_app.url)
    page.get_by_role("tab", name="Text-to-SVG").click()
    page.locator("#svg-prompt textarea").fill("a paper plane")
    page.locator("#svg-generate").click()
    page.wait_for_function("() => document.querySelector('#svg-status').innerText.includes('Done')",
                           timeout=240_000)
    assert page.locator("#svg-candidates img").count() == 2
    assert "CLIP" in page.locator("#svg-candidates").inner_text()
    assert page.locator("#svg-preview img").count() == 1
    assert page.locator("#svg-file a").first.get_attribute("href").endswith(".svg")
    assert page.locator("#svg-png a").first.get_attribute("href").endswith(".png")
    screenshot(page, "text-to-svg")

    # a long run from scratch: frames stream, the SVG is downloadable mid-run, Stop keeps it
    page.get_by_label("From scratch: random paths, SDS only").check()
    steps = page.locator("#svg-steps input[type=number]")
    steps.fill("3000")
    steps.press("Enter")
    page.locator("#svg-generate").click()
    page.wait_for_function("() => /SDS \\d+\\/3000/.test(document.querySelector('#svg-status').innerText)",
                           timeout=120_000)
    href = page.locator("#svg-file a").first.get_attribute("href")
    assert href.endswith(".svg")
    page.locator("#svg-stop").click()
    page.wait_for_function("() => document.querySelector('#svg-status').innerText.includes('Stopped')",
                           timeout=30_000)
    # the Stopped update carries the SVG written on stopping: the download is still (again) there
    page.wait_for_function("() => { const a = document.querySelector('#svg-file a');"
                           " return a !== null && a.getAttribute('href').endsWith('.svg') }", timeout=30_000)
    resp = page.request.get(page.locator("#svg-file a").first.get_attribute("href"))
    assert resp.ok and parse_svg(resp.body()).shapes
    screenshot(page, "text-to-svg-stopped")


@pytest.mark.browser
def test_browser_image_to_svg(live_app, page, tmp_path):
    path = tmp_path / "disc.png"
    img = Image.new("RGB", (64, 64), "white")
    from PIL import ImageDraw
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill=(220, 120, 20))
    img.save(path)
    page.goto(live_app.url)
    page.get_by_role("tab", name="Text-to-SVG").click()
    page.get_by_role("tab", name="From an image").click()
    page.locator("#vec-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#vec-image-view img", timeout=30_000)
    page.locator("#vec-run").click()
    page.wait_for_function("() => document.querySelector('#vec-status').innerText.includes('Done')",
                           timeout=120_000)
    status = page.locator("#vec-status").inner_text()
    assert float(status.split("PSNR ")[1].split(" dB")[0]) >= 20      # the disc is recognisably there
    assert page.locator("#vec-preview img").count() == 1
    href = page.locator("#vec-file a").first.get_attribute("href")
    resp = page.request.get(href)
    assert href.endswith(".svg") and resp.ok and parse_svg(resp.body()).shapes
    screenshot(page, "image-to-svg")
