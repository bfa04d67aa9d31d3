"""The Text-to-SVG tab: its handlers called directly (no server) on the tiny engine, the typed
results they read (core/vector/results.py), then the launched tiny app: gradio_client on the
three api_names, and a browser run with streaming frames, downloads and Stop."""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from core.events import Result
from core.vector import results
from core.vector.rasterizer import render
from core.vector.svg_io import parse_svg
from tabs.svg import STOPPED_EMPTY, STOPPED_KEPT, SvgTab
from tests.browserkit import set_number, wait_for_text
from tests.tabkit import example_inputs, fake_request, last, make_ctx

from .conftest import screenshot

cairosvg = pytest.importorskip("cairosvg")


# --------------------------------------------------------------------------- handlers, called directly

def text_kwargs(**over):
    kw = dict(prompt="a paper plane", style="iconographic", start="baseline", paths=6, k=2, steps=3, guidance=100,
              seed=0, sample_steps=2, live_steps=3, negative="")
    kw.update(over)
    return kw


def disc_png(path: Path) -> str:
    from PIL import ImageDraw

    img = Image.new("RGB", (48, 48), "white")
    ImageDraw.Draw(img).ellipse((10, 10, 38, 38), fill=(220, 120, 20))
    img.save(path)
    return str(path)


@pytest.fixture
def tab(tiny_engine, tmp_path):
    return SvgTab(make_ctx(tiny_engine, tmp_path))


def is_skip(value) -> bool:
    return value == gr.skip()


def test_text_to_svg_streams_candidates_frames_and_the_last_sds_step(tab):
    (cands, preview, status, svg_file, png_file, info), updates = last(tab.generate(**text_kwargs(),
                                                                                    request=fake_request()))
    assert len(cands) == 2 and sum("(best)" in cap for _, cap in cands) == 1
    scores = [float(cap.split()[1]) for _, cap in cands]
    assert "(best)" in cands[int(np.argmax(scores))][1]
    assert info["clip_scores"][info["best"]] == max(info["clip_scores"]) and len(info["losses"]) == 3
    assert not {"files", "folder", "svgs"} & set(info)               # no server paths in the details
    # issue 16 item 9: the closing line keeps the last SDS step (the frame before it shows only for a moment)
    assert status == f"**Done.** SDS 3/3 · final loss {info['losses'][-1]:.4g} · {info['paths']} paths."
    statuses = [u[2] for u in updates if isinstance(u[2], str)]
    assert any(line.startswith("**SDS 3/3") for line in statuses)
    assert statuses.index("**Candidates ranked by CLIP.**") < min(i for i, line in enumerate(statuses) if "SDS" in line)
    assert Path(svg_file).read_text() == info["svg"] and Path(preview).read_bytes() == Path(png_file).read_bytes()
    # every frame offers its SVG (frames that pile up behind a slow consumer are coalesced, but the
    # last SDS frame always comes before the result)
    frames = [u for u in updates if isinstance(u[3], str)]
    assert len(frames) >= 2 and all(u[3].endswith(".svg") and u[4].endswith(".png") for u in frames)


def test_no_sds_steps_closes_without_a_step_count(tab):
    (cands, _, status, svg_file, _, info), _ = last(tab.generate(**text_kwargs(start="scratch", style="pixel art",
                                                                              paths=4, steps=0),
                                                               request=fake_request()))
    assert status == "**Done.** 4 paths." and info["losses"] == [] and info["style"] == "pixel art"
    assert cands == [] and parse_svg(Path(svg_file).read_text()).shapes


def test_vectorize_an_image(tab, tmp_path):
    (preview, status, svg_file, png_file, info), updates = last(tab.vectorize(
        image=disc_png(tmp_path / "disc.png"), method="live", paths=3, steps=6, size=32, request=fake_request()))
    assert status == f"**Done.** {info['paths']} paths · PSNR {info['psnr']:.1f} dB at 32x32"
    assert info["init"] == "live" and info["paths"] <= 3 and not {"files", "folder"} & set(info)
    assert Path(svg_file).read_text() == info["svg"] and Path(preview).read_bytes() == Path(png_file).read_bytes()
    assert any(isinstance(u[2], str) and u[2].endswith(".svg") for u in updates[:-1])   # frames on the way


def test_icon_set(tab):
    (gallery, status, files, info), updates = last(tab.icon_set(
        prompts="a guitar\n\na sailboat", paths=3, live_steps=2, size=32, seed=0, steps=2, guidance=5.0,
        request=fake_request()))
    assert status == "**Done.** 2 icons." and len(gallery) == 2 and info["prompts"] == ["a guitar", "a sailboat"]
    assert [Path(f).name for f in files] == ["01-a-guitar.svg", "01-a-guitar.png", "02-a-sailboat.svg",
                                             "02-a-sailboat.png"]
    assert not {"svgs", "folder", "files"} & set(info)
    assert any(isinstance(u[1], str) and "vectorizing" in u[1] for u in updates)


@pytest.mark.parametrize("handler, kwargs, field", [
    ("generate", text_kwargs(paths=0), "Paths"), ("generate", text_kwargs(k=99), "K samples"),
    ("generate", text_kwargs(steps=-1), "SDS steps"), ("generate", text_kwargs(guidance=math.inf), "SDS guidance"),
    ("generate", text_kwargs(style="oil"), "Style"), ("generate", text_kwargs(start="middle"), "Start from"),
    ("generate", text_kwargs(seed=-1), "Seed"), ("generate", text_kwargs(prompt="  "), "prompt"),
    ("generate", text_kwargs(negative="x" * 2001), "Negative prompt"),
    ("vectorize", dict(image=None, method="live", paths=3, steps=2, size=32), "Upload an image"),
    ("vectorize", dict(image=None, method="potrace", paths=3, steps=2, size=32), "Method"),
    ("vectorize", dict(image=None, method="live", paths=3, steps=2, size=10), "Working size"),
    ("icon_set", dict(prompts="a", paths=3, live_steps=0, size=32, seed=0, steps=2, guidance=5.0), "LIVE steps"),
    ("icon_set", dict(prompts="a", paths=3, live_steps=2, size=32, seed=0, steps=2, guidance=50), "Guidance"),
])
def test_bad_values_are_refused_naming_the_field(tab, handler, kwargs, field):
    with pytest.raises(gr.Error, match=field):
        list(getattr(tab, handler)(**kwargs, request=fake_request()))
    assert tab.engine.jobs.running() == []


def test_stop_keeps_the_svg_written_on_stopping(tab):
    mine, other = fake_request("page-a"), fake_request("page-b")
    updates, asked = [], False
    for u in tab.generate(**text_kwargs(start="scratch", steps=3000), request=mine):
        updates.append(u)
        if isinstance(u[2], str) and "SDS" in u[2] and not asked:    # optimizing, an SVG on disk
            tab.stop(other)                                          # another page's Stop: no effect
            assert tab.engine.jobs.running()
            tab.stop(mine)
            asked = True
    _, preview, status, svg_file, png_file, info = updates[-1]
    assert status.endswith(STOPPED_KEPT) and "SDS" not in status and is_skip(info)
    assert parse_svg(Path(svg_file).read_text()).shapes and Path(preview).read_bytes() == Path(png_file).read_bytes()
    assert tab.engine.jobs.running() == [] and not tab.engine.gpu_lock.locked()


def test_stop_before_any_svg_says_none_was_made(tab):
    updates, asked = [], False
    for u in tab.generate(**text_kwargs(sample_steps=60), request=fake_request("page-c")):
        updates.append(u)
        if isinstance(u[0], list) and not asked:                    # a candidate preview: still sampling
            tab.stop(fake_request("page-c"))
            asked = True
    cands, preview, status, svg_file, png_file, info = updates[-1]
    assert status == STOPPED_EMPTY and all(is_skip(x) for x in (preview, svg_file, info))
    assert tab.engine.jobs.running() == []


def test_the_upload_preview_checks_the_image(tab, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="image to vectorize"):
        tab.show_image(str(bad))
    assert tab.show_image(disc_png(tmp_path / "d.png")).size == (48, 48) and tab.show_image(None) is None


# --------------------------------------------------------------------------- core.vector.results

def svg_result(**info) -> Result:
    base = dict(svg="<svg/>", paths=5, style="sketch", init="scratch", losses=[0.5, 0.25], folder="/srv/x",
                files=["/srv/x/a.svg", "/srv/x/a.png"], render_size=64)
    return Result(images=[Image.new("RGB", (4, 4))], info={**base, **info}, files=["/srv/x/a.svg", "/srv/x/a.png"])


def test_an_svg_run_reads_its_result():
    run = results.SvgRun.from_result(svg_result(clip_scores=[0.2, 0.3], best=1))
    assert (run.svg, run.svg_path, run.png_path, run.paths, run.style, run.init) == (
        "<svg/>", "/srv/x/a.svg", "/srv/x/a.png", 5, "sketch", "scratch")
    assert run.losses == (0.5, 0.25) and run.sds_steps == 2 and run.final_loss == 0.25
    assert run.clip_scores == (0.2, 0.3) and run.best == 1
    assert run.details == {"svg": "<svg/>", "paths": 5, "style": "sketch", "init": "scratch", "losses": [0.5, 0.25],
                           "render_size": 64, "clip_scores": [0.2, 0.3], "best": 1}
    bare = results.SvgRun.from_result(svg_result(losses=[]))
    assert bare.best is None and bare.clip_scores == () and bare.final_loss is None
    with pytest.raises(ValueError):
        results.SvgRun.from_result(Result(info=svg_result().info, files=["/srv/x/a.png", "/srv/x/a.svg"]))
    with pytest.raises(AttributeError):
        run.paths = 6                                                 # frozen


def test_stages_and_the_other_runs():
    cand = Result(images=[Image.new("RGB", (2, 2))] * 2, info={"stage": "candidates", "clip_scores": [0.1, 0.4],
                                                             "best": 1})
    assert results.stage(cand) == results.CANDIDATES and results.stage(svg_result()) is None
    c = results.Candidates.from_result(cand)
    assert c.clip_scores == (0.1, 0.4) and c.best == 1 and len(c.images) == 2
    vec = Result(images=[Image.new("RGB", (2, 2))], files=["/d/v.svg", "/d/v.png"],
                 info={"svg": "<svg/>", "psnr": 31.5, "paths": 3, "init": "vtracer", "size": [48, 32],
                       "files": ["/d/v.svg", "/d/v.png"]})
    v = results.VectorizedImage.from_result(vec)
    assert (v.psnr, v.size, v.paths, v.init, v.png_path) == (31.5, (48, 32), 3, "vtracer", "/d/v.png")
    assert "files" not in v.details
    icons = Result(images=[Image.new("RGB", (2, 2))], files=["/d/01-a.svg", "/d/01-a.png"],
                   info={"prompts": ["a"], "svgs": ["<svg/>"], "folder": "/d", "style_consistency": 0.5})
    s = results.IconSet.from_result(icons)
    assert s.prompts == ("a",) and s.svgs == ("<svg/>",) and s.details == {"prompts": ["a"], "style_consistency": 0.5}


# --------------------------------------------------------------------------- the launched app

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
    wait_for_text(page, "#svg-status", "Done", timeout=240_000)
    assert page.locator("#svg-candidates img").count() == 2
    assert "CLIP" in page.locator("#svg-candidates").inner_text()
    assert page.locator("#svg-preview img").count() == 1
    assert page.locator("#svg-file a").first.get_attribute("href").endswith(".svg")
    assert page.locator("#svg-png a").first.get_attribute("href").endswith(".png")
    screenshot(page, "text-to-svg")

    # a long run from scratch: frames stream, the SVG is downloadable mid-run, Stop keeps it
    page.get_by_text("Settings: start, paths, steps, seed").click()
    page.get_by_label("From scratch: random paths, SDS only").check()
    set_number(page, "svg-steps", 3000)
    page.locator("#svg-generate").click()
    page.wait_for_function("() => /SDS \\d+\\/3000/.test(document.querySelector('#svg-status').innerText)",
                           timeout=120_000)
    href = page.locator("#svg-file a").first.get_attribute("href")
    assert href.endswith(".svg")
    page.locator("#svg-stop").click()
    wait_for_text(page, "#svg-status", "Stopped", timeout=30_000)
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
    wait_for_text(page, "#vec-status", "Done")
    status = page.locator("#vec-status").inner_text()
    assert float(status.split("PSNR ")[1].split(" dB")[0]) >= 20      # the disc is recognisably there
    assert page.locator("#vec-preview img").count() == 1
    href = page.locator("#vec-file a").first.get_attribute("href")
    resp = page.request.get(href)
    assert href.endswith(".svg") and resp.ok and parse_svg(resp.body()).shapes
    screenshot(page, "image-to-svg")


# --------------------------------------------------------------------------- a newcomer's first run (issue 16)

def test_examples_fill_the_forms_and_the_leaf_vectorizes(tab):
    """The text Examples fill a prompt and a valid style; the image Examples fill the upload with
    our own images, and the leaf icon vectorizes with the tab's own Vectorize."""
    from core import vectorfusion
    from tabs import svg
    from tabs.common import example

    with gr.Blocks() as demo:
        SvgTab(tab.ctx).build()
    assert example_inputs(demo, "svg-examples") == ["svg-prompt", "svg-style"]
    assert example_inputs(demo, "vec-examples") == ["vec-image"]
    assert example_inputs(demo, "set-examples") == ["set-prompts"]
    assert all(style in vectorfusion.STYLES and prompt for prompt, style in svg.TEXT_EXAMPLES)
    assert svg.IMAGE_EXAMPLES[0] == "icon-leaf.png"
    (preview, status, svg_file, png_file, info), _ = last(tab.vectorize(
        image=example(svg.IMAGE_EXAMPLES[0]), method="live", paths=4, steps=4, size=32, request=fake_request()))
    assert status.startswith("**Done.**") and info["paths"] <= 4 and Path(svg_file).read_text() == info["svg"]


def test_the_settings_choice_fills_the_papers_budgets_or_ours(tab):
    # the papers' (PyTorch-SVGRender's VectorFusion config and LIVE): K = 6 samples of 50 steps,
    # 1000 SDS steps, LIVE 500 steps for each group of 16 paths (64 paths: 4 groups, 2000 steps)
    assert tab.preset_values("paper", 64) == (6, 1000, 50, 2000)
    assert tab.preset_values("paper", 20) == (6, 1000, 50, 1000)     # 16 + 4: two groups
    assert tab.preset_values("fast", 64) == (4, 500, 30, 500)        # ours: 500 LIVE steps in all
    with pytest.raises(gr.Error, match="Settings"):
        tab.preset_values("quick", 64)
    assert tab.default_preset() == "fast"                            # the tiny family: a CPU demo


def test_the_chosen_settings_reach_the_run(tab):
    (*_, status, _, _, info), _ = last(tab.generate(**text_kwargs(start="scratch", steps=2), preset="fast",
                                                    request=fake_request()))
    assert "Done" in status and info["preset"] == "fast"
    with pytest.raises(gr.Error, match="Settings"):
        list(tab.generate(**text_kwargs(), preset="best", request=fake_request()))
