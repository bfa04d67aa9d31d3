"""The README's headless example works as written against `python app.py --model tiny` (only the
port differs: the test app listens on a free one)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def headless_example(n: int = 0) -> str:
    """The n-th Python block of the README's "Use it headless" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it headless", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[n]


@pytest.mark.slow
def test_the_headless_example_runs_verbatim_in_tiny_mode(live_app):
    code = headless_example()
    assert 'Client("http://127.0.0.1:7860/")' in code
    code = code.replace("http://127.0.0.1:7860/", live_app.url)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    scores, consistency = out.stdout.strip().rsplit("] ", 1)
    assert len(scores.strip("[").split(",")) == 3           # a CLIP score per prompt
    assert 0.0 <= float(consistency) <= 1.0 + 1e-6


@pytest.mark.slow
def test_the_library_style_example_runs_verbatim_in_tiny_mode(live_app):
    """Save a style in AdaIN, use it in AdaIN, for an icon set and for a StyleDrop loop, as the
    README shows."""
    code = headless_example(1).replace("http://127.0.0.1:7860/", live_app.url)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    *loop_status, line = out.stdout.strip().splitlines()              # the two prints (the first: Markdown lines)
    key, rest = line.split(" ", 1)
    loop_status = "\n".join(loop_status)
    assert re.fullmatch(r"s\d+", key) and rest.startswith("Done: 1 image(s)"), out.stdout
    assert "**Done.** 2 icons." in rest and rest.endswith("the library style's image"), out.stdout
    assert "Done: round 1" in loop_status and "trained on 1 style" in loop_status, out.stdout


def test_every_picture_and_file_the_readme_links_exists():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://", "mailto:"))]
    assert any(link.startswith("assets/screenshots/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == [], missing
