"""The B-LoRA Mix tab in the launched app (`python app.py --model tiny`): gradio_client on the
`blora_train` / `blora_generate` endpoints, and headless Chromium as a user would."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from .conftest import screenshot, start_app

STYLE_TRANSFER = "Image style transfer"


def picture_file(path, kind: int):
    rng = np.random.default_rng(kind)
    a = np.zeros((96, 80, 3)) + ((200, 40, 40) if kind == 0 else (40, 160, 60))
    a[20:60, 20:60] = (240, 220, 40) if kind == 0 else (250, 250, 250)
    Image.fromarray(np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)).save(path)
    return str(path)


def colored_pixels(png: bytes) -> int:
    """Strongly coloured pixels (plot lines; the axes, grid and text are grey)."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    return int(((a.max(-1) - a.min(-1)) > 80).sum())


def train_args(files, steps=3, **kw):
    a = dict(paths=files, trig="", name_v="", joint_v=False, steps_v=steps, lr_v=3e-3, rank_v=4, sample_every_v=0,
             ckpt_v=0, gc_v=False, seed_v=0, resume_v=True, visitor_v="alice")
    a.update(kw)
    return list(a.values())


@pytest.fixture(scope="module")
def client(live_app):
    return Client(live_app.url, verbose=False)


def test_api_train_then_the_four_uses(client, live_app, tmp_path):
    from gradio_client.exceptions import AppError

    files = [handle_file(picture_file(tmp_path / f"img{i}.png", i)) for i in range(2)]
    status, plot, samples, info = client.predict(*train_args(files), api_name="/blora_train")
    assert "Done" in status, status
    made = info["adapters"]
    assert len(made) == 2 and all(a["parts"] == {"content": 32, "style": 32} for a in made)
    assert [r[0] for r in plot["data"]] == [1, 2, 3]  # the last B-LoRA's curve
    assert samples  # samples while training
    thumbs, content, style = client.predict(None, None, "alice", api_name="/blora_library")
    assert len(thumbs) >= 2  # one thumbnail per B-LoRA
    a, b = (str(m["adapter_id"]) for m in made)
    gallery, status, used = client.predict(STYLE_TRANSFER, a, 1.0, b, 0.5, "", 0, 2, 5.0, "alice",
                                           api_name="/blora_generate")
    assert len(gallery) == 1 and "Done" in status
    assert [(h["part"], str(h["adapter_id"]), h["weight"], h["block"]) for h in used["halves"]] == [
        ("content", a, 1.0, "up_blocks.0.attentions.0"), ("style", b, 0.5, "up_blocks.0.attentions.1")]
    trig = {str(m["adapter_id"]): m["trigger"] for m in made}
    assert used["prompts"] == [f"A {trig[a]} in {trig[b]} style"]
    for use, parts, n in (("Text-based stylization", ["content"], 4), ("Consistent style", ["style"], 4),
                          ("Style-content mixing", ["content", "style"], 1)):
        gallery, _, used = client.predict(use, a, 1.0, b, 1.0, "", 0, 2, 5.0, "alice", api_name="/blora_generate")
        assert [h["part"] for h in used["halves"]] == parts and len(gallery) == n
    # custom prompts, the style half alone
    gallery, _, used = client.predict("Custom prompts", None, 1.0, b, 1.0, "A cat in [s] style\nA tree in [s] style",
                                      0, 2, 5.0, "alice", api_name="/blora_generate")
    assert len(gallery) == 2 and used["prompts"][0] == f"A cat in {trig[b]} style"
    with pytest.raises(AppError, match="needs a style B-LoRA"):
        client.predict(STYLE_TRANSFER, a, 1.0, None, 1.0, "", 0, 2, 5.0, "alice", api_name="/blora_generate")
    with pytest.raises(AppError, match="Upload between 1 and"):
        client.predict(*train_args([]), api_name="/blora_train")
    assert live_app.alive()


def test_shared_instance_keeps_each_visitors_b_loras(tmp_path_factory, tmp_path):
    """--multi-user: a B-LoRA belongs to the visitor id that trained it (kept in the browser, so
    a reload finds it), not to the page session; another visitor neither lists nor uses it."""
    from gradio_client.exceptions import AppError

    app = start_app(tmp_path_factory.mktemp("blora-shared"), "--multi-user")
    try:
        files = [handle_file(picture_file(tmp_path / "img.png", 0))]
        carol, dave = (Client(app.url, verbose=False).predict(api_name="/visitor") for _ in range(2))
        _, _, _, info = Client(app.url, verbose=False).predict(*train_args(files, steps=1, visitor_v=carol),
                                                               api_name="/blora_train")
        aid = str(info["adapters"][0]["adapter_id"])
        later = Client(app.url, verbose=False)  # carol again, from a new page session
        thumbs, _, _ = later.predict(None, None, carol, api_name="/blora_library")
        assert len(thumbs) == 1
        _, status, _ = later.predict(STYLE_TRANSFER, aid, 1.0, aid, 1.0, "", 0, 2, 5.0, carol,
                                     api_name="/blora_generate")
        assert "Done" in status
        thumbs, _, _ = Client(app.url, verbose=False).predict(None, None, dave, api_name="/blora_library")
        assert not thumbs
        with pytest.raises(AppError, match="not found|not in the list of choices"):
            Client(app.url, verbose=False).predict(STYLE_TRANSFER, aid, 1.0, aid, 1.0, "", 0, 2, 5.0, dave,
                                                   api_name="/blora_generate")
        assert app.alive()
    finally:
        app.stop()


@pytest.mark.browser
def test_browser_train_pick_and_transfer(live_app, page, tmp_path):
    page.goto(live_app.url)
    page.get_by_role("tab", name="B-LoRA Mix").click()
    page.locator("#bl-files input[type=file]").set_input_files(
        [picture_file(tmp_path / "a.png", 0), picture_file(tmp_path / "b.png", 1)])
    page.wait_for_function("() => document.querySelectorAll('#bl-crops img').length >= 2", timeout=60_000)
    page.get_by_text("Training settings").click()
    for elem, value in (("#bl-steps", "4"), ("#bl-sample-every", "2")):
        box = page.locator(f"{elem} input")
        box.fill(value)
        box.press("Tab")
    page.locator("#bl-train").click()
    page.wait_for_function("() => document.querySelector('#bl-status').innerText.includes('Done')", timeout=120_000)
    assert page.locator("#bl-samples img").count() >= 1
    # the loss curves are drawn, not just the axes: coloured pixels in the plot
    deadline = time.monotonic() + 15
    while colored_pixels(page.locator("#bl-loss").screenshot()) < 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert colored_pixels(page.locator("#bl-loss").screenshot()) >= 200
    page.wait_for_function("() => document.querySelectorAll('#bl-library img').length >= 2", timeout=30_000)
    # pick the newest as content, the other as style, from the gallery
    page.locator("#bl-library .thumbnail-item").nth(0).click()
    page.locator("#bl-pick-as label", has_text="style").click()
    page.locator("#bl-library .thumbnail-item").nth(1).click()
    page.wait_for_function(
        "() => document.querySelector('#bl-content input').value.startsWith('#')"
        " && document.querySelector('#bl-style input').value.startsWith('#')"
        " && document.querySelector('#bl-content input').value !== document.querySelector('#bl-style input').value",
        timeout=15_000)
    assert "Linear" in page.locator("#bl-content-w").inner_text()
    assert "linearly" in page.locator("#bl-weight-note").inner_text()
    assert "No negative prompt" in page.locator("#bl-negative-note").inner_text()
    page.locator("#bl-use-0").click()  # Image style transfer, one click
    page.wait_for_function("() => document.querySelector('#bl-gen-status').innerText.includes('Done')",
                           timeout=60_000)
    assert page.locator("#bl-gallery img").count() >= 1
    assert "content #" in page.locator("#bl-gen-status").inner_text()
    screenshot(page, "blora-mix")
