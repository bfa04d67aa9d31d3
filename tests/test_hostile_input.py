"""Hostile and unusual input: every upload either works correctly or gets a clear error."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.errors import UserError
from core.images import MAX_PIXELS, load_image
from core.style_aligned import build_prompts


def png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_corrupt_truncated_empty(tmp_path):
    good = png_bytes(Image.new("RGB", (32, 32), (10, 20, 30)))
    for name, data, msg in [("zero", b"", "empty"), ("text", b"hello world", "could not be read"),
                            ("truncated", good[: len(good) // 2], "could not be read"),
                            ("garbage", bytes(range(256)) * 10, "could not be read")]:
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        with pytest.raises(UserError, match=msg):
            load_image(str(path))
    with pytest.raises(UserError, match="No image"):
        load_image(None)
    with pytest.raises(UserError, match="zero pixels|empty"):
        load_image(np.zeros((0, 10, 3), np.uint8))


def test_decompression_bomb_and_huge_images(tmp_path):
    # a 20000x20000 PNG compresses to a few hundred kB but would need 1.2 GB decoded
    big = Image.new("1", (20000, 20000))
    path = tmp_path / "bomb.png"
    big.save(path, optimize=True)
    assert path.stat().st_size < 5_000_000
    with pytest.raises(UserError, match="megapixels"):
        load_image(str(path))
    assert 20000 * 20000 > MAX_PIXELS


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "LA", "RGBA", "I;16", "I", "F", "1"])
def test_modes_become_rgb(mode):
    base = Image.new("RGB", (40, 30), (200, 100, 50))
    if mode in ("I;16", "I", "F"):
        img = Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).convert(mode) \
            if mode != "I;16" else Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16))
    elif mode == "LA":
        img = base.convert("LA")
    else:
        img = base.convert(mode)
    out = load_image(png_bytes(img, "TIFF" if mode in ("CMYK", "I", "F") else "PNG"))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_sixteen_bit_keeps_range():
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = np.asarray(load_image(png_bytes(Image.fromarray(arr))))
    assert out.min() <= 2 and out.max() >= 250  # scaled to 8 bits, not clipped


def test_alpha_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = np.asarray(load_image(png_bytes(img)))
    assert (out == 255).all()


def test_palette_with_transparency():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    out = np.asarray(load_image(png_bytes(img, transparency=0)))
    assert (out == 255).all()


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = np.asarray(load_image(buf.getvalue()))
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50


def test_exif_rotation_applied():
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = load_image(png_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 60)
    arr = np.asarray(out)
    assert arr[:10].mean() > 200 and arr[-10:].mean() < 60  # the band is now on top


def test_max_side():
    out = load_image(Image.new("RGB", (3000, 1000)), max_side=600)
    assert out.size == (600, 200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=300), max_size=12), st.text(max_size=200))
def test_prompt_lists_fuzzed(prompts, style):
    try:
        out = build_prompts(prompts, style)
    except UserError as exc:
        assert "prompt" in str(exc)
        return
    assert 1 <= len(out) <= 8 and all(p.strip() for p in out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=2000))
def test_prompts_fuzzed_through_the_tokenizer(tiny_engine, text):
    """Any text (empty, control characters, other scripts, very long) is cleaned and
    tokenized without error, within the encoder's 77 tokens once truncated."""
    from core.jobs import Job, JobContext
    import queue

    events = queue.Queue()
    cleaned = tiny_engine.clean_prompt(text, JobContext(Job("t", "fuzz"), events))
    assert not any(ord(c) < 32 and c not in "\t\n" for c in cleaned)
    ids = tiny_engine.pipe.tokenizer(cleaned, truncation=True, max_length=77).input_ids
    assert len(ids) <= 77
    if len(tiny_engine.pipe.tokenizer(cleaned).input_ids) > 77:
        assert not events.empty()  # the user is told about the truncation


def test_other_scripts_generate(tiny_engine):
    from core.events import Result
    ev = list(tiny_engine.generate(["一只猫 🐱 кошка قطة"], steps=1))[-1]
    assert isinstance(ev, Result) and ev.images
