"""What the operator of a public instance sees and sets: a start-up line, one-line user errors
with prompts cut short, refused risky flag combinations, and a login that cannot be guessed."""
from __future__ import annotations

import pytest
import requests

from ..conftest import start_app
from .conftest import raw_error


def test_start_up_line(shared_app):
    log = shared_app.log.read_text()
    line = next(ln for ln in log.splitlines() if "Style studio: model" in ln)
    for fact in ("model tiny on cpu", "data dir ", "multi-user on", "auth off", "job time limit 30 min",
                 "risky flags: none"):
        assert fact in line, line


def test_user_errors_are_one_log_line_and_prompts_are_cut(shared_app):
    before = shared_app.log.stat().st_size
    huge = "a red panda " * 10_000  # 120,000 characters
    msg = raw_error(shared_app, "/style_aligned", [huge, "", 0, 2, 5.0, 64, 64, "", None, "", True, True, False, False,
                                                   False, 0.0, 1.0, 1.0, "", 1.0, 1, 0.5, None])
    assert "Prompts is 120,000 characters long" in msg
    added = shared_app.log.read_bytes()[before:].decode()
    assert "Traceback" not in added and len(added) < 2_000
    assert "Prompts is 120,000 characters long" in added  # logged once, in one line
    assert huge[:200] not in added


def test_server_paths_are_refused_on_a_shared_instance():
    import app

    with pytest.raises(SystemExit):
        app.parse_args(["--multi-user", "--allow-server-paths"])
    assert app.parse_args(["--allow-server-paths"]).allow_server_paths  # a private instance may


def test_login_guard_locks_out_guessing():
    from core.throttle import LoginGuard

    now = [0.0]
    guard = LoginGuard(lambda u, p: (u, p) == ("ada", "s3cret"), free=5, window_s=60, lockout_s=60,
                       clock=lambda: now[0])
    assert guard("ada", "s3cret")
    for i in range(5):
        assert not guard("ada", f"guess{i}")
    assert guard("ada", "s3cret")          # five wrong: not locked yet
    assert not guard("ada", "guess5")      # the sixth locks the name
    assert not guard("ada", "s3cret")      # the right password tells nothing while locked
    now[0] += 61
    assert guard("ada", "s3cret")          # a minute later
    for i in range(60):                    # spraying across names locks every name
        guard(f"user{i}", "x")
    assert not guard("ada", "s3cret")


def test_wrong_logins_are_throttled_on_a_live_app(tmp_path):
    app = start_app(tmp_path / "auth", "--auth", "ada:s3cret")
    try:
        def login(password):
            return requests.post(app.url + "login", data={"username": "ada", "password": password}, timeout=30)
        assert login("s3cret").status_code == 200
        codes = [login(f"guess{i}").status_code for i in range(8)]
        assert all(c >= 400 for c in codes)
        assert login("s3cret").status_code >= 400  # locked out after the guesses
    finally:
        app.stop()


def test_a_streamed_training_leaves_a_clean_log(shared_app, tmp_path):
    """Samples after every step (the same content and style images again and again): no
    "Too little data for declared Content-Length" and no traceback in the log."""
    from .conftest import client, picture

    from gradio_client import handle_file

    before = shared_app.log.stat().st_size
    img = [handle_file(str(picture(tmp_path / f"p{i}.png", i))) for i in range(2)]
    job = client(shared_app).submit(img, img, "", "", "clean-log", 30, 1, 40, 32, 1, 5, False, None,
                                    api_name="/adain_train")
    assert job.result(timeout=300)[2].startswith("Finished at step 30")
    added = shared_app.log.read_bytes()[before:].decode()
    assert "LocalProtocolError" not in added and "Traceback" not in added
