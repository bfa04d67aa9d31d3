"""No active content from our origin: uploads are decoded and written again as images under
our own names, nothing under the data dir is served, and result files reach visitors through
Gradio's cache, an SVG only as a download."""
from __future__ import annotations

from pathlib import Path

import requests

from .conftest import client, new_token, picture, polyglot, raw_call, upload

SAFE_INLINE = {"image/png", "image/jpeg", "image/webp", "image/gif"}


def fetch(app, url_or_path: str) -> requests.Response:
    url = url_or_path if url_or_path.startswith("http") else f"{app.url}gradio_api/file={url_or_path}"
    return requests.get(url, timeout=30)


def assert_inert(resp: requests.Response) -> None:
    """What a browser would never run: an image type, or a download of opaque bytes."""
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    disposition = resp.headers.get("content-disposition", "")
    assert ctype in SAFE_INLINE or (disposition.startswith("attachment") and ctype == "application/octet-stream"), \
        (resp.url, ctype, disposition)


def test_a_polyglot_upload_is_stored_as_a_plain_image(shared_app, tmp_path):
    """An SVG with script that is also a valid PhotoCD image, uploaded as AdaIN training content:
    staged as a PNG decoded from the pixels, under our own name; no byte of the SVG is kept;
    the reply names no server path."""
    token = new_token(shared_app)
    evil = upload(shared_app, polyglot(tmp_path / "evil.svg"))
    style = upload(shared_app, picture(tmp_path / "style.png", 3))
    event, data = raw_call(shared_app, "/adain_train", [[evil], [style], "", "", "poly", 1, 1, 40, 32, 1, 1, True,
                                                       token])
    assert event == "complete", data
    status = data[2]
    assert status.startswith("Finished at step 1") and "/" not in status.split("run 'poly'")[-1]
    staged = sorted((shared_app.data_dir / "adain" / "runs").rglob("poly/content/*"))
    assert [p.name for p in staged] == ["00000.png"]
    assert staged[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for f in shared_app.data_dir.rglob("*"):
        if f.is_file() and f.suffix != ".log" and f.stat().st_size < 50_000_000:
            assert b"pwned" not in f.read_bytes(), f  # the script is nowhere in what we keep
    # Gradio's own copy of the upload goes out as a download, never as an SVG page
    assert_inert(fetch(shared_app, evil["path"]))


def test_nothing_under_the_data_dir_is_served(shared_app, tmp_path):
    c = client(shared_app)
    c.predict(*["a cat", "", 0, 2, 5.0, 64, 64, "", None, "", True, True, False, False, False, 0.0, 1.0, 1.0],
              api_name="/style_aligned")
    from gradio_client import handle_file

    c.predict(handle_file(str(picture(tmp_path / "v.png", 1))), "vtracer", 4, 2, 48, api_name="/vectorize")
    c.predict(None, None, None, new_token(shared_app), api_name="/personalize_library")  # opens the library
    files = [f for f in shared_app.data_dir.rglob("*") if f.is_file()]
    kinds = {f.suffix for f in files}
    assert {".svg", ".png", ".db"} <= kinds and any(f.name == ".owner-key" for f in files)
    for f in files:
        r = fetch(shared_app, str(f))
        assert r.status_code in (403, 404), (f, r.status_code)


def test_results_go_out_through_the_cache_and_svg_as_a_download(shared_app, tmp_path):
    from gradio_client import handle_file

    c = client(shared_app, download_files=False)
    png, status, svg, png2, info = c.predict(handle_file(str(picture(tmp_path / "r.png", 2))), "vtracer", 4, 2, 48,
                                             api_name="/vectorize")
    assert "Done" in status
    for item in (png, svg, png2):
        url = item["url"]
        assert str(shared_app.data_dir) not in url and "/svg/" not in item["path"]
        r = fetch(shared_app, url)
        assert r.status_code == 200
        assert_inert(r)
    assert fetch(shared_app, svg["url"]).headers["content-disposition"].startswith("attachment")
    assert "<svg" in fetch(shared_app, svg["url"]).text  # the download is the real SVG


def test_a_repeated_image_is_not_rewritten_while_it_is_served(tmp_path):
    """Gradio names cached images by their bytes; returning the same image again must not
    truncate and rewrite the file a browser may be reading (an AdaIN training stream repeats
    its sample images with every update)."""
    import os

    from gradio import processing_utils as pu
    from PIL import Image

    from tabs.gradio_fixes import cached_images_written_once

    assert cached_images_written_once()
    img = Image.new("RGB", (32, 32), (200, 30, 30))
    first = pu.save_pil_to_cache(img, str(tmp_path))
    os.utime(first, (1_000_000, 1_000_000))
    again = pu.save_pil_to_cache(img.copy(), str(tmp_path))
    assert again == first and os.stat(first).st_mtime == 1_000_000  # left alone, not written again
    assert Image.open(first).size == (32, 32) and not list(Path(first).parent.glob(".*tmp*"))
