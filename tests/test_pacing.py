"""core.pacing: when a loop previews (by hand, on a clock the test turns) and the SDS loop's
frames under a preview share."""
from __future__ import annotations

import time

import pytest

from core.events import Progress
from core.pacing import PhaseTimer, PreviewPacer


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_without_a_share_the_cadence_alone_decides():
    p = PreviewPacer(every=3, clock=Clock())
    assert p.due(1)                         # the first time asked: always
    with p.showing():
        pass
    assert [s for s in range(1, 10) if p.due(s)] == [3, 6, 9]
    assert p.due(10, last=True)


def test_a_share_lets_a_preview_through_only_within_its_budget():
    """share 0.1, previews of 1 s each: a preview is due when (spent + 1) <= 0.1 (elapsed + 1),
    i.e. at 19 s of loop time for the second one, at 29 s for the third (by hand; steps of 0.5 s)."""
    clock = Clock()
    p = PreviewPacer(every=1, share=0.1, clock=clock)
    assert p.due(0)
    with p.showing():
        clock.now += 1.0                    # the first preview: 1 s
    seen = []
    for step in range(1, 60):
        clock.now += 0.5                    # one step of work
        if p.due(step):
            seen.append((step, clock.now))
            with p.showing():
                clock.now += 1.0
    # the second preview when 2 <= 0.1 (t + 1), t >= 19; the third when 3 <= 0.1 (t + 1), t >= 29
    assert [t for _, t in seen[:2]] == [19.0, 29.0]
    spent = len(seen) + 1
    assert spent <= 0.1 * clock.now + 1     # the share held, but for the one preview in flight
    assert p.due(999, last=True)            # the last step: always


def test_the_share_must_be_a_fraction():
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            PreviewPacer(share=bad)


def test_the_phase_timer_adds_up_per_phase():
    t = PhaseTimer()
    for _ in range(2):
        with t("a"):
            time.sleep(0.02)
    with t("b"):
        time.sleep(0.02)
    assert t.seconds["a"] >= 0.04 and t.seconds["b"] >= 0.02
    assert sum(t.split().values()) == pytest.approx(1.0)
    assert t.split()["a"] > t.split()["b"]


def test_sds_frames_under_a_share_when_writing_is_slow(tiny_engine, tmp_path, monkeypatch):
    """Writing a frame made to take 0.5 s, share 0.1, a frame asked for at every step: the loop
    shows its start and its end, and the steps between stream as plain progress (a second
    frame would need 9.5 s of loop time, far more than 6 tiny steps take)."""
    from core import vectorfusion as vf

    slow_write = vf.SvgFiles.write

    def write(self, svg):
        time.sleep(0.5)
        return slow_write(self, svg)

    monkeypatch.setattr(vf.SvgFiles, "write", write)
    o = vf.VFOptions(num_paths=4, steps=6, preview_every=1, preview_share=0.1, seed=1)
    events = list(vf.text_to_svg(tiny_engine, "a cup", o, init="scratch", data_dir=tmp_path))
    frames = [e for e in events if isinstance(e, vf.SvgProgress)]
    plain = [e for e in events if isinstance(e, Progress) and not isinstance(e, vf.SvgProgress)
             and e.message.startswith("SDS")]
    assert [f.step for f in frames] == [0, 6]
    assert sorted(e.step for e in plain) == [1, 2, 3, 4, 5]
    assert len(events[-1].info["losses"]) == 6
    # without the share: a frame at every step
    monkeypatch.setattr(vf.SvgFiles, "write", slow_write)
    events = list(vf.text_to_svg(tiny_engine, "a cup", vf.VFOptions(num_paths=4, steps=6, preview_every=1, seed=1),
                                 init="scratch", data_dir=tmp_path))
    assert [f.step for f in events if isinstance(f, vf.SvgProgress)] == [0, 1, 2, 3, 4, 5, 6]


def test_a_bad_share_is_refused(tiny_engine, tmp_path):
    from core import vectorfusion as vf
    from core.errors import UserError

    with pytest.raises(UserError, match="share of time for previews"):
        list(vf.text_to_svg(tiny_engine, "a cup", vf.VFOptions(num_paths=4, steps=2, preview_share=2.0),
                            init="scratch", data_dir=tmp_path))
