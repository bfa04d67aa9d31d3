"""In Chromium: every file URL the app hands out opens without running script, and a visitor's
text shown to other visitors (a published StyleDrop loop's prompts) is shown as text."""
from __future__ import annotations

import pytest

from .conftest import client, new_token, picture, polyglot, upload

pytestmark = pytest.mark.browser
SA = ["a cat\na dog", "", 0, 2, 5.0, 64, 64, "", None, "", True, True, False, False, False, 0.0, 1.0, 1.0]


def urls(value) -> list[str]:
    """Every file URL in an API result (download_files=False gives FileData dicts)."""
    if isinstance(value, dict):
        found = [value["url"]] if isinstance(value.get("url"), str) else []
        return found + [u for v in value.values() if isinstance(v, (dict, list, tuple)) for u in urls(v)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in urls(v)]
    return []


def watch(page) -> list[str]:
    """The URLs of requests a script would make (the payloads all fetch /pwned-...)."""
    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url) if "pwned" in req.url else None)
    page.on("dialog", lambda d: (seen.append(f"dialog:{d.message}"), d.dismiss()))
    return seen


def test_every_file_url_opens_without_script(shared_app, browser, tmp_path):
    from gradio_client import handle_file

    c = client(shared_app, download_files=False)
    token = new_token(shared_app)
    img = handle_file(str(picture(tmp_path / "p.png", 1)))
    handed_out = []
    handed_out += urls(c.predict(img, "vtracer", 4, 2, 48, api_name="/vectorize"))
    handed_out += urls(c.predict("a cat", "iconographic", "scratch", 4, 1, 1, 100, 0, 1, 2, "",
                                 api_name="/svg_generate"))
    handed_out += urls(c.predict("a cat\na dog", 4, 2, 48, 0, 1, 5.0, api_name="/svg_icon_set"))
    handed_out += urls(c.predict(*SA, api_name="/style_aligned"))
    handed_out += urls(c.predict([img], [img], "", 1.0, False, False, None, 64, "built-in", token, api_name="/adain"))
    _, _, _, info = c.predict([img], "sks", "dog", "LoRA", 1, 1e-3, 2, False, 1.0, 1, 1, 1, False, 0, 0, 0, False,
                              0, "", 0, token, api_name="/personalize_train")
    handed_out += urls(c.predict(str(info["adapter_id"]), token, api_name="/personalize_export"))
    evil = upload(shared_app, polyglot(tmp_path / "evil.svg"))  # what a visitor sent, at the URL Gradio gives it
    handed_out.append(f"{shared_app.url}gradio_api/file={evil['path']}")
    assert any(u.endswith(".svg") for u in handed_out) and any(u.endswith(".safetensors") for u in handed_out)
    assert len(handed_out) >= 12

    context = browser.new_context(accept_downloads=True)
    try:
        page = context.new_page()
        seen = watch(page)
        opened = downloaded = 0
        for url in handed_out:
            try:
                page.goto(url, wait_until="load")
                opened += 1
            except Exception as exc:  # noqa: BLE001 - a download instead of a page is the safe outcome
                assert "Download is starting" in str(exc), (url, str(exc)[:200])
                downloaded += 1
            assert seen == [], (url, seen)
        assert opened and downloaded  # images inline, SVGs (and adapters) as downloads
    finally:
        context.close()


def test_a_published_loops_prompts_are_text_for_every_viewer(shared_app, browser, tmp_path):
    """A loop owner's content prompts carry a script for a gr.HTML template (`${...}`, which
    Gradio evaluates as a JavaScript template literal) and for HTML; another visitor's page
    shows both as text, and nothing runs."""
    from gradio_client import handle_file

    token = new_token(shared_app)
    payloads = ["${fetch('/pwned-template')}", "<img src=x onerror=\"fetch('/pwned-html')\">"]
    out = client(shared_app).predict(None, [handle_file(str(picture(tmp_path / "s.png", 4)))], "a house",
                                     "watercolor painting", "", 1, 1e-3, 2, False, 0, "\n".join(payloads), 1, 1, 5.0,
                                     0, token, api_name="/styledrop_train")
    loop_id = out[-1]["loop_id"]
    client(shared_app).predict(str(loop_id), True, token, api_name="/styledrop_publish")

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        seen = watch(page)
        page.goto(shared_app.url)
        page.get_by_role("tab", name="StyleDrop Loop").click()
        tile = page.locator("#sd-grid .sd-tile .sd-content").first
        tile.wait_for(timeout=60_000)
        shown = page.locator("#sd-grid .sd-content").all_inner_texts()
        assert payloads[0] in shown and payloads[1] in shown, shown  # not "[object Promise]"
        assert page.locator("#sd-grid img[src='x']").count() == 0  # no element made from the text
        assert seen == []
    finally:
        context.close()
