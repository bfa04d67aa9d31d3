"""The Style-Aligned tab's handlers, called directly (no server) on the tiny engine."""
from __future__ import annotations

import math

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from core.style_aligned import MAX_SET, SharingOptions
from tabs.style_aligned import StyleAlignedTab
from tests.tabkit import fake_request, last, make_ctx

pytestmark = pytest.mark.usefixtures("one_thread")

SHARING = dict(adain_queries=True, adain_keys=True, adain_values=False, share_group_norm=False,
               full_attention_share=False, shared_score_shift=0.0, shared_score_scale=1.0, share_fraction=1.0)


@pytest.fixture
def tab(tiny_engine, tmp_path):
    return StyleAlignedTab(make_ctx(tiny_engine, tmp_path))


def call(tab, prompts="a cat\na dog", *, steps=2, width=64, height=64, request=None, **over):
    kw = dict(prompts=prompts, style="flat", seed=1, steps=steps, guidance=5.0, width=width, height=height,
              negative="", reference_file=None, reference_prompt="", **SHARING)
    kw.update(over)
    return tab.generate(**kw, request=request or fake_request())


def test_generate_streams_previews_then_the_set_with_its_scores(tab):
    (gallery, status, table, info), updates = last(call(tab, "a cat\na dog\na cow", width=72, height=64))
    assert [im.size for im in gallery] == [(72, 64)] * 3
    assert status.endswith("**Done.**")
    previews = [u[0] for u in updates[:-1] if isinstance(u[0], list)]
    assert previews and all(len(p) == 3 for p in previews)   # a preview of every image, while it runs
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[1] for r in rows] == ["a cat, flat", "a dog, flat", "a cow, flat"]
    assert "(reference)" in rows[0] and "(reference)" not in "".join(rows[1:])
    scores = [float(r.rstrip(" |").split(" | ")[-1]) for r in rows]
    assert scores == pytest.approx(info["clip_text_scores"], abs=5e-4)


def test_each_setting_reaches_its_own_field():
    base = StyleAlignedTab.sharing_options(**SHARING)
    assert base == SharingOptions(**SHARING)
    flipped = {"adain_queries": False, "adain_keys": False, "adain_values": True, "share_group_norm": True,
               "full_attention_share": True, "shared_score_shift": 0.69, "shared_score_scale": 0.5,
               "share_fraction": 0.25}
    for name, value in flipped.items():
        opts = StyleAlignedTab.sharing_options(**{**SHARING, name: value})
        changed = {k for k in SHARING if getattr(opts, k) != getattr(base, k)}
        assert changed == {name}, name
        assert getattr(opts, name) == value


@pytest.mark.parametrize("over, field", [
    (dict(steps=0), "Steps"), (dict(guidance=math.nan), "Guidance"), (dict(width="wide"), "Width"),
    (dict(shared_score_shift=3.0), "Shared-score shift"), (dict(adain_keys="yes"), "AdaIN on keys"),
    (dict(seed=-1), "Seed"), (dict(style="x" * 1001), "Style text"),
])
def test_bad_values_are_refused_naming_the_field(tab, over, field):
    with pytest.raises(gr.Error, match=field):
        list(call(tab, **over))
    assert tab.engine.jobs.running() == []


def test_too_many_prompts_is_a_clear_error(tab):
    prompts = "\n".join(f"thing {i}" for i in range(MAX_SET + 1))
    with pytest.raises(gr.Error, match=str(MAX_SET)):
        list(call(tab, prompts))


def test_stop_reaches_only_this_pages_job(tab):
    mine, other = fake_request("page-a"), fake_request("page-b")
    updates = []
    for u in call(tab, steps=40, request=mine):
        updates.append(u)
        if isinstance(u[0], list):            # the first preview: the job is denoising
            tab.stop(other)                   # another page's Stop: no effect
            assert tab.engine.jobs.running()
            tab.stop(mine)
    gallery, status, table, info = updates[-1]
    assert "Stopped" in status and "not finished" in status
    assert table == "" and info is None   # no scores for an unfinished set (nor an earlier set's)
    assert tab.engine.jobs.running() == [] and not tab.engine.gpu_lock.locked()
    steps_seen = [u for u in updates if isinstance(u[1], str) and "Style-aligned set" in u[1]]
    assert 1 <= len(steps_seen) < 40


def test_reference_preview_checks_and_shrinks_the_upload(tab, tmp_path):
    bad = tmp_path / "ref.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(gr.Error, match="reference image"):
        tab.show_reference(str(bad))
    good = tmp_path / "wide.png"
    Image.fromarray(np.full((100, 2000, 3), 200, np.uint8)).save(good)
    shown = tab.show_reference(str(good))
    assert max(shown.size) == 1024 and shown.size[0] > shown.size[1]
    assert tab.show_reference(None) is None


def test_the_progress_line_counts_steps(tab):
    statuses = [u[1] for u in call(tab, "a cat", steps=3) if isinstance(u[1], str)]
    assert [s for s in statuses if "set " in s][-1].startswith("**Style-aligned set 3/3")
