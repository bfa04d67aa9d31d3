"""The StyleDrop Loop tab in the launched app (`python app.py --model tiny --multi-user`), through
gradio_client and through headless Chromium, including a restart of the server."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from .conftest import ROOT, free_port, screenshot
from tests.browserkit import wait_for_text


class App:
    """The app on a port chosen once, so a restart keeps the origin (and the browser's visitor id)."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port, self.proc = data_dir, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 240) -> None:
        log = self.data_dir / "app.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--model", "tiny", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--multi-user"],
            cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited early:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"app did not come up:\n{log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = App(tmp_path_factory.mktemp("styledrop-app"))
    a.start()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def style_png(tmp_path_factory):
    rng = np.random.default_rng(0)
    arr = np.zeros((96, 96, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, 96)[None, :].astype(np.uint8)
    arr[..., 2] = rng.integers(0, 255, (96, 96))
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(arr).save(path)
    return path


def train_args(loop, files, prompts="a cat\na tree\na boat", visitor="alice"):
    # loop, files, content, style, name, steps, lr, rank, gc, seed, prompts, samples, sample steps, guidance,
    # grid seed, visitor
    return [loop, files, "a gradient", "neon", "", 3, 1e-2, 4, False, 0, prompts, 1, 2, 5.0, 0, visitor]


def test_api_loop_with_several_raters(app, style_png):
    from gradio_client.exceptions import AppError

    c = Client(app.url, verbose=False)
    # visitor tokens the app issued (a shared instance refuses invented ones)
    alice, bob, carol = (c.predict(api_name="/visitor") for _ in range(3))
    out = c.predict(*train_args("", [handle_file(str(style_png))], visitor=alice), api_name="/styledrop_train")
    status, info, grid = out[0], out[-1], out[6]
    assert "Done: round 1" in status
    assert info["round"] == 1 and info["trainable_params"] == 4096
    tiles = grid["tiles"]
    assert [t["content"] for t in tiles] == ["a cat", "a tree", "a boat"]
    lid, rid = str(info["loop_id"]), str(info["round_id"])
    # someone else can't rate a private loop, nor train it
    with pytest.raises(AppError, match="not found"):
        c.predict(tiles[0]["id"], 1, bob, api_name="/styledrop_rate")
    c.predict(lid, True, alice, api_name="/styledrop_publish")  # shared for rating
    r = c.predict(tiles[0]["id"], 1, bob, api_name="/styledrop_rate")
    assert (r["up"], r["down"], r["mine"]) == (1, 0, 1)
    r = c.predict(tiles[0]["id"], -1, carol, api_name="/styledrop_rate")
    assert (r["up"], r["down"], r["mine"], r["liked"]) == (1, 1, -1, False)
    r = c.predict(tiles[0]["id"], 1, alice, api_name="/styledrop_rate")
    assert (r["up"], r["down"], r["mine"], r["liked"]) == (2, 1, 1, True)
    r = c.predict(tiles[0]["id"], 1, bob, api_name="/styledrop_rate")  # bob again: still one vote
    assert (r["up"], r["down"]) == (2, 1)
    with pytest.raises(AppError, match="owner"):
        c.predict(*train_args(lid, [], visitor=bob), api_name="/styledrop_train")
    # CLIP feedback: top-1 by style score (w = 0)
    out = c.predict(lid, rid, "top_k", 1, 0.5, 0.0, False, alice, api_name="/styledrop_clip")
    tiles = out[4]["tiles"]
    best = max(tiles, key=lambda t: float(re.search(r"style (-?[\d.]+)", t["scores"]).group(1)))
    assert [t["id"] for t in tiles if t["clip"]] == [best["id"]]
    assert "CLIP picked 1" in out[3] and "top 1" in out[3]
    # more candidates for the round
    out = c.predict(lid, rid, "a fish", 2, 2, 5.0, 7, alice, api_name="/styledrop_generate")
    assert "2 more candidates" in out[0] and len(out[5]["tiles"]) == 5
    # round 2 from the liked ones
    liked = sum(t["liked"] for t in out[5]["tiles"])
    out = c.predict(*train_args(lid, [], visitor=alice), api_name="/styledrop_train")
    assert out[-1]["round"] == 2 and len(out[-1]["trained_on"]["liked_candidates"]) == liked
    assert "| 2 |" in out[7] and "| 1 |" in out[7]
    # the round's adapter in use (StyleDrop + DreamBooth endpoint, here without a subject)
    gal, msg = c.predict(str(out[-1]["adapter_id"]), 1.0, None, 1.0, "a sks dog in neon style", 3, 2, 5.0, alice,
                         api_name="/styledrop_combine")
    assert len(gal) == 1 and f"#{out[-1]['adapter_id']} × 1" in msg


@pytest.mark.browser
def test_browser_loop_two_rounds_then_restart(app, page, style_png):
    page.goto(app.url)
    page.get_by_role("tab", name="StyleDrop Loop").click()
    page.locator("#sd-style-files input[type=file]").set_input_files(str(style_png))
    page.wait_for_function("() => document.querySelectorAll('#sd-style-view img').length >= 1", timeout=60_000)
    page.locator("#sd-style textarea, #sd-style input").first.fill("neon gradient")
    page.locator("#sd-new").click()
    wait_for_text(page, "#sd-status", "Done: round 1", timeout=180_000)
    page.wait_for_function("() => document.querySelectorAll('#sd-grid .sd-tile').length >= 4", timeout=30_000)
    wait_for_text(page, "#sd-params", "4,096 trained parameters", timeout=30_000, show=("#sd-status",))
    tiles = page.locator("#sd-grid .sd-tile")
    # thumbs up by click on the first, by keyboard (U) on the second; thumbs down (D) on the third
    tiles.nth(0).locator("button.sd-up").click()
    wait_for_text(page, "#sd-counts", "liked (net ≥ 1): 1", timeout=30_000, show=("#sd-status",))
    page.locator("#sd-grid .sd-tile").nth(1).focus()
    page.keyboard.press("u")
    wait_for_text(page, "#sd-counts", "liked (net ≥ 1): 2", timeout=30_000, show=("#sd-status",))
    page.wait_for_function("() => document.activeElement && document.activeElement.classList.contains('sd-tile')",
                           timeout=10_000)
    page.keyboard.press("d")  # focus moved on to the third tile
    wait_for_text(page, "#sd-counts", "thumbs down 1", timeout=30_000, show=("#sd-status",))
    counts = page.locator("#sd-counts").inner_text()
    assert "thumbs up 2" in counts and "your ratings: 3" in counts
    assert page.locator("#sd-grid .sd-mine-up").count() == 2 and page.locator("#sd-grid .sd-mine-down").count() == 1
    screenshot(page, "styledrop-round1-rated")
    page.locator("#sd-next").click()
    wait_for_text(page, "#sd-status", "Done: round 2", timeout=180_000)
    rounds = page.locator("#sd-rounds").inner_text()
    assert "1 style + 0 liked" in rounds and "1 style + 2 liked" in rounds
    assert "CLIP text" in rounds and "CLIP style" in rounds
    assert "Round 2" in page.locator("#sd-counts").inner_text()
    # the round's loss curve is really drawn (an SVG line over several points), not just axes
    points = page.evaluate("""() => [...document.querySelectorAll('#sd-loss g.mark-line path')]
        .map(p => (p.getAttribute('d') || '').split(/[ML]/).length - 1)""")
    assert points and max(points) >= 2, points
    screenshot(page, "styledrop-round2")
    # restart the server on the same data folder; the same browser reloads the page
    app.stop()
    app.start()
    page.reload()
    page.get_by_role("tab", name="StyleDrop Loop").click()
    wait_for_text(page, "#sd-rounds", "1 style + 2 liked", timeout=60_000, show=("#sd-status",))
    assert "Round 2" in page.locator("#sd-counts").inner_text()
    assert page.locator("#sd-grid .sd-tile").count() >= 4
    # round 1 is still there with this browser's ratings
    page.locator("#sd-round input").click()
    page.get_by_role("option", name="Round 1").click()
    wait_for_text(page, "#sd-counts", "Round 1", timeout=30_000, show=("#sd-status",))
    counts = page.locator("#sd-counts").inner_text()
    assert "liked (net ≥ 1): 2" in counts and "your ratings: 3" in counts
    assert page.locator("#sd-grid .sd-mine-up").count() == 2
    screenshot(page, "styledrop-after-restart")
