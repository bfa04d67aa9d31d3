"""Steps the browser tests share (Playwright, the real app): set a slider's number, wait for a
text and, when it never comes, fail with what the page shows instead, pick a library style,
train StyleDrop's first round from a panel another tab filled.

A busy CI machine re-renders a panel while a test types into it, so a step that sets a value
checks that the value took before the test goes on."""
from __future__ import annotations

import json

import pytest


def set_number(page, elem_id: str, value: int | float, *, tries: int = 3) -> None:
    """Type `value` into the number box of the slider or number field `#elem_id` and press Enter;
    again (up to `tries` times) until the field and, for a slider, its range input hold it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    want = json.dumps(str(value))
    took = (f"() => [...document.querySelectorAll('#{elem_id} input')]"
            f".filter(i => i.type === 'number' || i.type === 'range').every(i => i.value === {want})")
    for _ in range(tries):
        box.fill(str(value))
        box.press("Enter")
        try:
            page.wait_for_function(took, timeout=5_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: the page re-rendered; type again
            continue
    shown = page.locator(f"#{elem_id} input").evaluate_all("els => els.map(e => e.type + '=' + e.value)")
    pytest.fail(f"#{elem_id} did not take {value} after {tries} tries; its inputs hold {shown}")


def wait_for_text(page, selector: str, text: str, *, timeout: float = 120_000, show: tuple[str, ...] = ()) -> str:
    """Wait until the element `selector` shows `text`; its text then. When it never does, fail
    with the text it and the elements `show` (a status line, say) hold instead."""
    probe = f"() => {{ const e = document.querySelector({json.dumps(selector)}); " \
            f"return e !== null && e.innerText.includes({json.dumps(text)}) }}"
    try:
        page.wait_for_function(probe, timeout=timeout)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: say what the page shows instead
        seen = {s: _text(page, s) for s in (selector, *show)}
        pytest.fail(f"{text!r} not in {selector} after {timeout / 1000:.0f} s; the page shows: {seen}")
    return page.locator(selector).first.inner_text()


def _text(page, selector: str) -> str:
    loc = page.locator(selector)
    return loc.first.inner_text()[-600:] if loc.count() else "(absent)"


def pick_library_style(page, prefix: str, option: str, *, exact: bool = False) -> None:
    """Open "Style from the library" in the panel `prefix` (sa, adain, set, sd, pz, svg), refresh
    its list and pick the option whose name holds `option` (or is it, when `exact`)."""
    page.locator(f"#{prefix}-library").get_by_text("Style from the library (optional)").click()
    page.locator(f"#{prefix}-library-refresh").click()
    page.locator(f"#{prefix}-library-style input").click()
    page.get_by_role("option", name=option, exact=exact).click()


def styledrop_round_one(page, *, images: int, style: str, content: str) -> str:
    """StyleDrop's panel once another tab or the library filled it: wait for its `images` style
    images, check that the style and content fields hold `style` and `content`, train round 1
    (a new loop); the status then."""
    page.wait_for_function(f"() => document.querySelectorAll('#sd-style-view img').length >= {int(images)}",
                           timeout=60_000)
    assert page.locator("#sd-style textarea, #sd-style input").first.input_value() == style
    assert page.locator("#sd-content textarea, #sd-content input").first.input_value() == content
    page.locator("#sd-new").click()
    return wait_for_text(page, "#sd-status", "Done: round 1", timeout=180_000)
