"""Text from visitors inside markup, and paths inside messages."""
from __future__ import annotations

import html

from tabs.common import html_text, md_text, scrub_paths


def test_html_text_is_inert_in_html_and_in_a_template_literal():
    evil = "${fetch(`/x`)}<img src=x onerror=alert(1)>\\u0041'\"&"
    out = html_text(evil)
    for c in "$`\\<>\"'{}":
        assert c not in out, c
    assert html.unescape(out) == evil  # what the viewer reads is exactly the visitor's text
    # evaluated as a JavaScript template literal, as Gradio's gr.HTML does, nothing is interpolated
    assert "${" not in out and "`" not in out


def test_md_text_has_no_markup_of_its_own():
    out = md_text("![t](http://evil/p.png) **b** [l](javascript:alert(1)) <b>x</b> `c` # h")
    assert "![" not in out and "](" not in out and "**" not in out.replace("\\*", "")
    assert "<b>" not in out and "`" not in out.replace("\\`", "")
    assert len(md_text("x" * 10_000)) <= 200


def test_scrub_paths():
    assert scrub_paths("The weights /data/studio/adain/runs/_v-1/r/decoder.safetensors are bad") == \
        "The weights …/decoder.safetensors are bad"
    assert scrub_paths(r"see C:\Users\ada\photo.png") == "see …/photo.png"
    for keep in ("ask /visitor for one", "https://huggingface.co/stabilityai/sdxl", "lr 1e-4 / (1 + 5e-5 x step)",
                 "3/4 of it", "a/b relative"):
        assert scrub_paths(keep) == keep
