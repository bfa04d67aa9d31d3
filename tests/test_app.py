"""The launched app (`python app.py --model tiny`), driven by gradio_client and by headless
Chromium as a user would."""
from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from .conftest import screenshot
from tests.browserkit import set_number, wait_for_text

ADVANCED_DEFAULTS = [True, True, False, False, False, 0.0, 1.0, 1.0]


def sa_args(prompts="A guitar\nA sailboat\nA mountain\nA hot air balloon", ref=None, ref_prompt=""):
    return [prompts, "in watercolor style", 1, 3, 5.0, 64, 64, "", ref, ref_prompt, *ADVANCED_DEFAULTS]


@pytest.fixture(scope="module")
def client(live_app):
    return Client(live_app.url, verbose=False)


def test_api_style_aligned(client):
    gallery, status, metrics_md, info = client.predict(*sa_args(), api_name="/style_aligned")
    assert len(gallery) == 4
    assert "Done" in status
    assert len(info["clip_text_scores"]) == 4 and "style_consistency" in info
    assert "Style consistency" in metrics_md
    assert info["prompts"][0] == "A guitar, in watercolor style"


@pytest.mark.parametrize("kind,content,message", [
    ("empty-prompts", None, "at least one prompt"),
    ("too-many", None, "at most"),
    ("not-an-image", b"this is text, not a picture", "could not be read"),
    ("zero-bytes", b"", "empty"),
    ("truncated-png", None, "could not be read"),
])
def test_bad_input_is_a_clear_error_and_server_survives(client, live_app, tmp_path, kind, content, message):
    from gradio_client.exceptions import AppError

    args = sa_args()
    if kind == "empty-prompts":
        args[0] = " \n \n"
    elif kind == "too-many":
        args[0] = "\n".join(f"thing {i}" for i in range(12))
    else:
        path = tmp_path / "upload.png"
        if kind == "truncated-png":
            import io
            from PIL import Image
            buf = io.BytesIO()
            Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
            content = buf.getvalue()[:60]
        path.write_bytes(content)
        args[8], args[9] = handle_file(str(path)), "a photo"
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/style_aligned")
    assert live_app.alive()
    gallery, *_ = client.predict(*sa_args("a cat"), api_name="/style_aligned")
    assert len(gallery) == 1


def test_reference_upload_via_api(client, tmp_path):
    from PIL import Image
    path = tmp_path / "ref.jpg"
    Image.new("RGB", (120, 80), (200, 40, 40)).save(path)
    gallery, status, _, info = client.predict(*sa_args("a cat\na dog", handle_file(str(path)), "a red square"),
                                              api_name="/style_aligned")
    assert len(gallery) == 3 and info["reference"] == "image"


@pytest.mark.browser
def test_browser_style_aligned_set(live_app, page):
    page.goto(live_app.url)
    page.get_by_role("tab", name="Style-Aligned Set").click()
    page.locator("#sa-prompts textarea").fill("A guitar\nA sailboat\nA mountain")
    page.locator("#sa-generate").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#sa-gallery img').length >= 3"
        " && document.querySelector('#sa-metrics').innerText.includes('Style consistency')",
        timeout=120_000)
    assert "Done" in page.locator("#sa-status").inner_text()
    metrics = page.locator("#sa-metrics").inner_text()
    assert "CLIP text score" in metrics and "A sailboat" in metrics
    screenshot(page, "style-aligned")


@pytest.mark.browser
def test_browser_progress_visible_and_stop(live_app, page):
    """A long job shows its step count and previews while it runs, and Stop ends it."""
    page.goto(live_app.url)
    page.locator("#sa-prompts textarea").fill("A guitar\nA sailboat")
    set_number(page, "sa-steps", 100)
    page.locator("#sa-generate").click()
    page.wait_for_function("() => /Style-aligned set \\d+\\/100/.test(document.querySelector('#sa-status').innerText)",
                           timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('#sa-gallery img').length >= 2", timeout=60_000)
    screenshot(page, "style-aligned-progress")
    running = page.locator("#sa-status").inner_text()
    assert "/100" in running
    page.locator("#sa-stop").click()
    wait_for_text(page, "#sa-status", "Stopped", timeout=60_000)
    # from now on record every text the status shows; the next run (2 steps) must be the next
    # thing it shows: no line of the stopped 100-step run may come after its Stopped
    page.evaluate("""() => {
        const el = document.querySelector('#sa-status');
        window.seen = [el.innerText];
        new MutationObserver(() => window.seen.push(el.innerText))
            .observe(el, {childList: true, subtree: true, characterData: true});
    }""")
    set_number(page, "sa-steps", 2)
    page.locator("#sa-generate").click()
    wait_for_text(page, "#sa-status", "Done")
    seen = page.evaluate("() => window.seen")
    assert "Stopped" in seen[0]
    assert not [text for text in seen if "/100" in text], seen
