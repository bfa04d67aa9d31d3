"""The UI's own text renders with any font: no emoji (they show as empty boxes where no emoji
font is installed, as on many Linux desktops and in headless browsers)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u26FF\u2700-\u2712\u2714-\u27BF\uFE0F]")  # ✓ (U+2713) is in DejaVu


def test_no_emoji_in_the_tabs_or_their_markup():
    files = sorted((ROOT / "tabs").rglob("*.py")) + sorted((ROOT / "tabs" / "static").rglob("*.*")) + [ROOT / "app.py"]
    found = [f"{f.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
             for f in files for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
             if EMOJI.search(line)]
    assert found == [], found
    assert EMOJI.search("rate with 👍") and not EMOJI.search("CLIP ✓ · liked")   # the pattern itself
