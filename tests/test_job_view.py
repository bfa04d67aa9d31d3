"""How tabs show a running job (tabs.common): status lines, elapsed time and time left, notes,
and the last word after a Stop. A fake clock makes the times exact."""
from __future__ import annotations

from core.errors import Cancelled
from core.events import Notice, Progress, Result
from tabs.common import JobClock, duration_text, job_updates, status_text


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_time_left_follows_the_pace_of_the_current_phase():
    now = FakeClock()
    clock = JobClock(now)
    now.t = 130.0  # 30 s of loading before the first step
    assert clock.tick(Progress(1, 11, "Denoising 1/11")) == "30 s elapsed"   # no pace yet
    now.t = 134.0
    # 1 step in 4 s since the phase began, 9 steps left: 36 s
    assert clock.tick(Progress(2, 11, "Denoising 2/11")) == "34 s elapsed · about 36 s left"
    now.t = 142.0
    # 3 steps in 12 s since the phase began (4 s each), 7 left: 28 s
    assert clock.tick(Progress(4, 11, "Denoising 4/11")) == "42 s elapsed · about 28 s left"
    now.t = 150.0  # a new phase (another message): its own pace, from its own first event
    assert clock.tick(Progress(1, 3, "Scoring 1/3")) == "50 s elapsed"
    now.t = 160.0
    assert clock.tick(Progress(2, 3, "Scoring 2/3")) == "1 min 00 s elapsed · about 10 s left"
    now.t = 161.0
    assert clock.tick(Progress(3, 3, "Scoring 3/3")) == "1 min 01 s elapsed"   # done: nothing left


def test_a_loss_in_the_message_does_not_start_a_new_phase():
    now = FakeClock()
    clock = JobClock(now)
    clock.tick(Progress(1, 5, "Training step 1/5: loss 0.5123"))
    now.t = 110.0
    assert clock.tick(Progress(3, 5, "Training step 3/5: loss 0.0911")).endswith("about 10 s left")


def test_percent_only_where_the_message_does_not_count_already():
    assert status_text(Progress(3, 3, "Encoding training images 3/3")) == "**Encoding training images 3/3**"
    assert status_text(Progress(1, 4, "Loading")) == "**Loading** (25%)"
    assert status_text(Progress(0, 0, "Waiting for the accelerator")) == "**Waiting for the accelerator**"


def test_durations_read_naturally():
    assert [duration_text(x) for x in (0, 8.4, 59.6, 125, 3600 + 4 * 60 + 30)] == \
        ["0 s", "8 s", "1 min 00 s", "2 min 05 s", "1 h 04 min"]


def test_notes_stay_above_the_progress_line_and_a_stop_has_the_last_word():
    def events():
        yield Notice("The prompt was shortened.")
        yield Progress(1, 4, "Denoising 1/4")
        exc = Cancelled("stopped")
        exc.reason = "The job reached the 30-minute limit."
        raise exc

    updates = list(job_updates(events(), stopped="**Stopped.** Nothing was kept."))
    assert updates[0].status == "The prompt was shortened."
    assert updates[1].status.startswith("The prompt was shortened.\n\n**Denoising 1/4** · ")
    assert updates[-1].stopped and updates[-1].event is None
    assert updates[-1].status == ("The prompt was shortened.\n\n**The job reached the 30-minute limit.**"
                                  "\n\n**Stopped.** Nothing was kept.")


def test_a_finished_job_ends_with_its_result():
    result = Result(info={"x": 1})
    updates = list(job_updates(iter([Progress(1, 1, "Step 1/1"), result]), stopped="-", done="**Made.**"))
    assert updates[-1].event is result and updates[-1].status == "**Made.**" and not updates[-1].stopped
