"""Every input of every endpoint, as an attacker who skips the UI sends it: NaN, infinities,
2**70, text where a number goes, megabytes where a name goes. Each gets a clear error naming
the field (never a crash, a bare "error", a repr or a path), and the server keeps serving.

The endpoints and their parameters are read from the running app (`view_api`), so a new
endpoint or a new field is covered without editing this file."""
from __future__ import annotations

import math
import re
import time


from .conftest import client, new_token, raw_error

BAD_NUMBERS = [math.nan, math.inf, 2**70, -(2**70), "1; drop table"]
VISITOR = "parameter_1"  # the BrowserState parameter (the visitor token) as view_api names it


def short(label: str) -> str:
    """The part of a field's label that its error message names."""
    return re.split(r" \(|:|,| -|;", label)[0].strip()


def endpoints(c) -> dict:
    return c.view_api(return_format="dict", print_info=False)["named_endpoints"]


def baseline(params, token):
    """Valid arguments: the UI's defaults, the visitor's token, 1 for a number with no default
    (a candidate id, a rating)."""
    def value(p):
        if p["label"] == VISITOR:
            return token
        default = p.get("parameter_default")
        return 1 if default is None and p["type"].get("type") in ("number", "integer") else default
    return [value(p) for p in params]


def assert_clear(msg: str, field: str, api: str) -> None:
    assert field.lower() in msg.lower(), f"{api}: {field!r} not named in {msg!r}"
    for bad in ("object at 0x", "Traceback", "Something went wrong", "verbose error", "/tmp/", "None"):
        assert bad not in msg, f"{api}: {msg!r}"


def test_every_numeric_input_is_checked(shared_app):
    c = client(shared_app)
    token = new_token(shared_app)
    checked = 0
    for api, ep in endpoints(c).items():
        params = ep["parameters"]
        for i, p in enumerate(params):
            if p["type"].get("type") not in ("number", "integer"):
                continue
            for bad in BAD_NUMBERS:
                args = baseline(params, token)
                args[i] = bad
                assert_clear(raw_error(shared_app, api, args), short(p["label"]), f"{api}[{p['label']}={bad!r}]")
                checked += 1
    assert checked >= 80 * len(BAD_NUMBERS)  # all tabs' numbers (88 when this was written)
    assert shared_app.alive()


def test_every_text_input_is_bounded(shared_app):
    """Half a megabyte in every text field: refused at once, naming the field."""
    c = client(shared_app)
    token = new_token(shared_app)
    huge = "x" * 500_000
    checked = 0
    for api, ep in endpoints(c).items():
        params = ep["parameters"]
        for i, p in enumerate(params):
            if p["type"].get("type") != "string" and p["label"] != VISITOR:
                continue
            args = baseline(params, token)
            args[i] = huge
            started = time.monotonic()
            msg = raw_error(shared_app, api, args)
            assert time.monotonic() - started < 20, api
            field = "visitor token" if p["label"] == VISITOR else short(p["label"])
            assert_clear(msg, field, f"{api}[{p['label']}]")
            assert huge[:1000] not in msg
            checked += 1
    assert checked >= 50
    assert shared_app.alive()
    assert shared_app.log.stat().st_size < 2_000_000  # no field was logged in full


def test_forged_and_huge_visitor_tokens_are_refused_before_the_store(shared_app):
    """A visitor token is the key to a library: an invented one, another's id with a made-up
    signature, or 20 MB of it are all refused, and nothing is written."""
    store = shared_app.data_dir / "library" / "store.db"
    size = store.stat().st_size if store.exists() else 0
    real = new_token(shared_app)
    forged = [real[:-4] + "0000" if not real.endswith("0000") else real[:-4] + "1111",
              "v1.visitor." + "0" * 32 + "." + "0" * 32, "0123456789abcdef0123456789abcdef",
              "v1.visitor." + "a" * 20_000_000]
    for token in forged:
        for api, args in (("/personalize_library", [None, None, None, token]),
                          ("/blora_library", [None, None, token]),
                          ("/styledrop_rate", [1, 1, token]),
                          ("/personalize_import", [None, token, "subject", ""])):
            msg = raw_error(shared_app, api, args)
            assert "visitor token is not valid" in msg, (api, msg)
    wal = store.with_name(store.name + "-wal")
    grown = (store.stat().st_size if store.exists() else 0) - size
    assert grown < 1_000_000 and (not wal.exists() or wal.stat().st_size < 5_000_000)
    assert shared_app.alive()


def test_ids_out_of_range_get_a_clear_message(shared_app):
    token = new_token(shared_app)
    for bad in (10**30, -1, "9" * 40, "1 OR 1=1"):
        msg = raw_error(shared_app, "/personalize_library", [bad, None, None, token])
        assert_clear(msg, "Adapter 1", "/personalize_library")
        msg = raw_error(shared_app, "/styledrop_rate", [bad, 1, token])
        assert_clear(msg, "candidate id", "/styledrop_rate")


def test_bombs_and_non_images_in_image_fields(shared_app, tmp_path):
    """A decompression bomb or a file that is not an image, sent as a webcam frame or as a
    painted layer: a clear error naming the field, and the server keeps serving."""
    from PIL import Image

    from .conftest import picture, upload

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb, optimize=True)  # 400 megapixels in a few hundred kB
    text = tmp_path / "frame.png"
    text.write_text("not an image at all")
    token = new_token(shared_app)
    style = upload(shared_app, picture(tmp_path / "s.png", 1))
    for bad in (bomb, text):
        f = upload(shared_app, bad)
        msg = raw_error(shared_app, "/adain_webcam", [f, [style], "", 1.0, 64, "built-in", token])
        assert_clear(msg, "Webcam", "/adain_webcam")
        editor = {"background": f, "layers": [f], "composite": f, "id": None}
        msg = raw_error(shared_app, "/adain", [[style], [style], "", 1.0, False, True, editor, 64, "built-in", token,
                                                  None])
        assert_clear(msg, "Regions", "/adain")
    assert shared_app.alive()


def test_requests_have_bounded_work(shared_app, tmp_path):
    """However many images a request names, a transfer styles at most 16 and mixes at most 8
    styles; a training run asks for at most 200,000 steps."""
    from .conftest import picture, upload

    token = new_token(shared_app)
    f = upload(shared_app, picture(tmp_path / "c.png", 1))
    # (plain HTTP sends every input: the library style after the token, as AFTER_TOKEN lists)
    msg = raw_error(shared_app, "/adain", [[f] * 17, [f], "", 1.0, False, False, None, 64, "built-in", token, None])
    assert "Content image(s): 17 files; at most 16" in msg
    msg = raw_error(shared_app, "/adain", [[f], [f] * 9, "", 1.0, False, False, None, 64, "built-in", token, None])
    assert "Style image(s): 9 files; at most 8" in msg
    msg = raw_error(shared_app, "/adain_train", [[f], [f], "", "", "r", 10**9, 1, 40, 32, 1, 1, False, token])
    assert "Steps must be from 1 to 200000" in msg
