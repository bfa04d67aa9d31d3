"""Nobody hogs the accelerator of a shared instance: bounded work per request, one job per
owner at a time, a time limit per job that hands the slot on with a clear message, and a Stop
that works through the API."""
from __future__ import annotations

import re
import time

import pytest

from ..conftest import start_app
from .conftest import AFTER_TOKEN, client, new_token, picture, raw_error


@pytest.fixture(scope="module")
def limited_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("limited"), "--multi-user", "--max-job-minutes", "0.1")  # 6 s
    yield app
    app.stop()


def train_args(tmp_path, token, steps):
    from gradio_client import handle_file

    c = handle_file(str(picture(tmp_path / "c.png", 1)))
    s = handle_file(str(picture(tmp_path / "s.png", 2)))
    return [[c], [s], "", "", "long", steps, 1, 40, 32, 10_000, 10_000, False, token]


def wait_for(job, text, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outs = job.outputs()
        if any(text in str(o) for o in outs):
            return
        if job.done():
            break
        time.sleep(0.1)
    raise AssertionError(f"never saw {text!r}: {[str(o)[:120] for o in job.outputs()[-3:]]}")


def latest_step(job) -> int:
    steps = [int(m.group(1)) for o in job.outputs() for m in [re.search(r"step (\d+)/", str(o))] if m]
    return max(steps, default=0)


def test_a_job_over_its_time_limit_gives_the_slot_to_the_next(limited_app, tmp_path):
    from gradio_client import handle_file

    a = new_token(limited_app)
    msg = raw_error(limited_app, "/adain_train", [None, None, "", "", "x", 10**9, 1, 40, 32, 1, 1, False, a])
    assert "Steps must be from 1 to 200000" in msg  # bounded work, whatever the caller asks
    job_a = client(limited_app).submit(*train_args(tmp_path, a, 200_000), api_name="/adain_train")
    wait_for(job_a, "step ")  # A holds the accelerator
    # A cannot start a second job meanwhile, from any page
    msg = raw_error(limited_app, "/personalize_generate",
                    ["a {v} {c}", 0, 2, 5.0, None, 1.0, None, 1.0, None, 1.0, a, *AFTER_TOKEN["/personalize_generate"]])
    assert "You already have a job (adain-train) running or waiting" in msg
    # B waits in line, then runs once A's time is up
    started = time.monotonic()
    png, status, svg, _, _ = client(limited_app).predict(handle_file(str(picture(tmp_path / "v.png", 3))), "vtracer",
                                                         4, 2, 48, api_name="/vectorize")
    assert "Done" in status and time.monotonic() - started < 60
    _, _, last_a, _ = job_a.result()
    assert "at most 6 seconds" in last_a and "decoder saved" in last_a, last_a  # stopped, and said why
    assert limited_app.alive()


def test_stop_works_through_the_api(shared_app, tmp_path):
    token = new_token(shared_app)
    c = client(shared_app)
    job = c.submit(*train_args(tmp_path, token, 200_000), api_name="/adain_train")
    wait_for(job, "step ")
    stopped_at = time.monotonic()
    c.predict(api_name="/adain_stop")  # the same API session that started it
    _, _, status, _ = job.result(timeout=120)
    assert status.startswith("Stopped at step") and time.monotonic() - stopped_at < 60, status
    # another session's Stop does not reach someone else's job
    job = c.submit(*train_args(tmp_path, token, 200_000), api_name="/adain_train")
    wait_for(job, "step ")
    client(shared_app).predict(api_name="/adain_stop")
    before = latest_step(job)
    deadline = time.monotonic() + 120
    while latest_step(job) <= before + 2 and time.monotonic() < deadline:  # it trains on
        assert not job.done(), job.outputs()[-1]
        time.sleep(0.05)
    assert latest_step(job) > before + 2
    c.predict(api_name="/adain_stop")
    assert job.result(timeout=120)[2].startswith("Stopped at step")
