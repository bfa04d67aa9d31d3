"""A visitor's tour: every tab of the running app opens in headless Chromium, shows its
controls, and leaves a screenshot in test-artifacts/."""
from __future__ import annotations

import importlib

import pytest

from tabs import TAB_MODULES

from .conftest import ARTIFACTS, screenshot

TITLES = [importlib.import_module(m).TITLE for m in TAB_MODULES]


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
