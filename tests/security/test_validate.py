"""Every value from outside is checked at the boundary, with the field named."""
from __future__ import annotations

import math

import pytest

from core import validate as v
from core.errors import UserError

HOSTILE_NUMBERS = [math.nan, math.inf, -math.inf, 2**70, -(2**70), 1e308, "abc", "1e999", [], {}, True, "9" * 100]


@pytest.mark.parametrize("bad", HOSTILE_NUMBERS, ids=repr)
def test_hostile_numbers_are_refused_naming_the_field(bad):
    for check in (lambda x: v.whole(x, "Steps", 1, 100), lambda x: v.real(x, "Guidance", 0, 20),
                  lambda x: v.seed(x, "Seed")):
        with pytest.raises(UserError) as err:
            check(bad)
        msg = str(err.value)
        assert msg.startswith(("Steps", "Guidance", "Seed")), msg
        assert "object at 0x" not in msg and len(msg) < 200


def test_accepted_values():
    assert v.whole(3.0, "n", 1, 5) == 3 and v.whole("4", "n", 1, 5) == 4 and v.whole(None, "n", 0, 5, default=2) == 2
    assert v.real(0.5, "x", 0, 1) == 0.5 and v.real("0.25", "x", 0, 1) == 0.25
    assert v.seed(0) == 0 and v.seed(2**32 - 1) == 2**32 - 1
    with pytest.raises(UserError, match="from 0 to 4294967295"):
        v.seed(2**32)
    with pytest.raises(UserError, match="whole number"):
        v.whole(2.5, "n", 1, 5)
    with pytest.raises(UserError, match="empty"):
        v.whole(None, "n", 1, 5)


def test_record_ids():
    assert v.record_id(None, "Adapter") is None and v.record_id("", "Adapter") is None
    assert v.record_id("12", "Adapter") == 12 and v.record_id(12, "Adapter") == 12
    for bad in ("1" * 30, 10**30, -1, 0, "12; DROP TABLE", "x" * 20_000_000, 1.5, math.nan):
        with pytest.raises(UserError, match="Adapter"):
            v.record_id(bad, "Adapter")


def test_flags_text_choices_files():
    assert v.flag(True, "f") is True and v.flag(None, "f") is False and v.flag(0, "f") is False
    for bad in ("yes", "false", 2, [], 0.5):
        with pytest.raises(UserError, match="true or false"):
            v.flag(bad, "f")
    assert v.text(None, "Prompt", 10) == "" and v.text("abc", "Prompt", 10) == "abc"
    with pytest.raises(UserError, match="Prompt is 100,000 characters long; at most 10"):
        v.text("x" * 100_000, "Prompt", 10)
    with pytest.raises(UserError, match="give text"):
        v.text(["x"], "Prompt", 10)
    assert v.choice("live", "Method", ["live", "vtracer"]) == "live"
    with pytest.raises(UserError, match="Method"):
        v.choice("<script>", "Method", ["live", "vtracer"])
    assert v.files(["/a.png", {"path": "/b.png"}], "Images", 3) == ["/a.png", "/b.png"]
    with pytest.raises(UserError, match="at most 3"):
        v.files(["/a"] * 4, "Images", 3)
    with pytest.raises(UserError, match="could not read"):
        v.files([{"path": 7}], "Images", 3)


def test_shown_values_are_short_and_never_reprs():
    import io

    assert v.shown(io.BytesIO()) == "a BytesIO"
    assert len(v.shown("x" * 10_000)) <= 40
    assert "\n" not in v.shown("a\nb\x00c")
    log = v.clip_log("p" * 100_000)
    assert len(log) < 200 and "100,000 characters" in log
