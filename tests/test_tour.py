"""A visitor's tour: every tab of the running app opens in headless Chromium, shows its
controls, and leaves a screenshot in test-artifacts/; and a newcomer's first run of each tab's
main action, from a fresh page, using only an Example and the primary button (issue 16).

`STUDIO_SCREENSHOTS=1` also writes one screenshot per tab into assets/screenshots/ (the
README's pictures); ordinary runs leave the tree as it is."""
from __future__ import annotations

import importlib
import io
import os
from dataclasses import dataclass

import pytest

from tabs import TAB_MODULES

from .conftest import ARTIFACTS, ROOT, screenshot

TITLES = [importlib.import_module(m).TITLE for m in TAB_MODULES]

VIEWPORT = {"width": 1280, "height": 800}
ASSET_SCREENSHOTS = ROOT / "assets" / "screenshots"
ASSET_MAX_BYTES = 150_000
RUN_TIMEOUT_MS = 240_000


@pytest.mark.browser
def test_every_tab_opens(live_app, page):
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_app.url)
    for title in TITLES:
        tab = page.get_by_role("tab", name=title, exact=True)
        tab.click()
        page.wait_for_timeout(300)
        assert tab.get_attribute("aria-selected") == "true", title
        panel = page.locator("[role=tabpanel]:visible").first
        assert panel.locator("button:visible").count() >= 1, f"{title}: no visible button"
        path = screenshot(page, "tab-" + title.lower().replace(" ", "-").replace("/", "-"))
        assert path.stat().st_size > 10_000
    assert not errors, errors
    assert len(list(ARTIFACTS.glob("tab-*.png"))) >= len(TITLES)


@dataclass(frozen=True)
class FirstRun:
    """One tab's first run: open `tab` (and `subtab`), click the first sample of the Examples
    labelled `examples`, wait until `filled` (JS) holds, click `button`, wait until `done` (JS)
    holds; `output` is the main output that must be in view with the button."""

    name: str
    tab: str
    examples: str
    button: str
    output: str
    done: str
    filled: str = "true"
    subtab: str | None = None


def _text_has(selector: str, text: str) -> str:
    return f"(document.querySelector('{selector}') || {{innerText: ''}}).innerText.includes('{text}')"


def _images(selector: str, n: int = 1) -> str:
    return f"document.querySelectorAll('{selector} img').length >= {n}"


TOUR = [
    FirstRun("style-aligned", "Style-Aligned Set", "Examples: click one, then Generate set", "#sa-generate",
             "#sa-gallery", done=f"{_text_has('#sa-status', 'Done')} && {_images('#sa-gallery')}"),
    FirstRun("adain", "AdaIN Transfer", "Examples: click one, then Stylize", "#adain-run", "#adain-gallery",
             filled=f"{_text_has('#adain-contents', 'content-house')} && {_text_has('#adain-styles', 'style-waves')}",
             done=f"{_text_has('#adain-info', 'Done')} && {_images('#adain-gallery')}"),
    FirstRun("personalize", "Personalize", "Example: click it, then Train", "#pz-train", "#pz-loss",
             filled=f"{_images('#pz-crops', 3)} && {_text_has('#pz-idnote', 'a sks mug')}",
             done=f"{_text_has('#pz-status', 'Done')} && !!document.querySelector('#pz-loss svg')"),
    FirstRun("styledrop", "StyleDrop Loop", "Examples: click one, then Start a new loop", "#sd-new", "#sd-grid",
             filled=f"{_images('#sd-style-view')} && {_text_has('#sd-text', 'ocean waves in woodblock print style')}",
             done=f"{_text_has('#sd-status', 'Done')} && {_images('#sd-grid')}"),
    FirstRun("blora", "B-LoRA Mix", "Example: click it, then Train B-LoRA", "#bl-train", "#bl-loss",
             filled=_images("#bl-crops", 2),
             done=f"{_text_has('#bl-status', 'Done')} && !!document.querySelector('#bl-loss svg')"),
    FirstRun("svg", "Text-to-SVG", "Examples: click one, then Generate SVG", "#svg-generate", "#svg-preview",
             done=f"{_text_has('#svg-status', 'Done')} && {_images('#svg-preview')}"),
    FirstRun("svg-from-image", "Text-to-SVG", "Examples: click one, then Vectorize", "#vec-run", "#vec-preview",
             subtab="From an image", filled=_images("#vec-image-view"),
             done=f"{_text_has('#vec-status', 'Done')} && {_images('#vec-preview')}"),
]


def in_view(box: dict | None, slack: float = 2.0) -> bool:
    """Inside the viewport (give or take `slack` px: a block's border lands at fractional pixels)."""
    return (box is not None and box["x"] >= -slack and box["y"] >= -slack
            and box["x"] + box["width"] <= VIEWPORT["width"] + slack
            and box["y"] + box["height"] <= VIEWPORT["height"] + slack)


def save_asset(png: bytes, name: str) -> None:
    """A viewport screenshot as a README picture, in a 256-colour palette (under ASSET_MAX_BYTES)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    ASSET_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 1024, 800):
        small = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        out = io.BytesIO()
        small.quantize(256).save(out, format="PNG", optimize=True)
        if out.tell() <= ASSET_MAX_BYTES:
            break
    (ASSET_SCREENSHOTS / f"{name}.png").write_bytes(out.getvalue())


@pytest.mark.browser
@pytest.mark.parametrize("run", TOUR, ids=[r.name for r in TOUR])
def test_first_run_from_an_example(live_app, page, run):
    """From a fresh page: an Example, then the primary button; the output appears, and the button
    and its output are both inside a 1280x800 viewport."""
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_viewport_size(VIEWPORT)
    page.goto(live_app.url)
    page.get_by_role("tab", name=run.tab, exact=True).click()
    if run.subtab:
        page.get_by_role("tab", name=run.subtab, exact=True).click()
    label = page.get_by_text(run.examples, exact=True).filter(visible=True).first
    label.wait_for()
    samples = page.locator(".block", has=label).last.locator("tr.tr-body, button.gallery-item")
    samples.first.click()
    page.wait_for_function(f"() => {run.filled}", timeout=60_000)
    button = page.locator(run.button)
    button.click()
    page.wait_for_function(f"() => {run.done}", timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(500)  # the last frame drawn
    output = page.locator(run.output)
    # the visitor scrolls as little as it takes to see the output whole: the button must still be
    # in view (the two sit side by side), whatever the click on the Example scrolled before
    output.scroll_into_view_if_needed()
    page.wait_for_timeout(200)
    boxes = {"button": button.bounding_box(), "output": output.bounding_box()}
    assert all(in_view(box) for box in boxes.values()), f"{run.name}: not both in a 1280x800 view: {boxes}"
    path = screenshot(page, f"first-run-{run.name}")
    assert path.stat().st_size > 10_000
    if os.environ.get("STUDIO_SCREENSHOTS") == "1" and run.name != "svg-from-image":
        save_asset(page.screenshot(), run.name)
    assert not errors, errors
