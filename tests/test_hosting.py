"""Hosting: login, upload limits, visitor privacy keys, and rules for reading files."""
from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, start_app


@pytest.fixture(scope="module")
def private_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("private"), "--auth", "ada:s3cret")
    yield app
    app.stop()


def test_login_protects_a_private_instance(private_app):
    from gradio_client import Client

    with pytest.raises(Exception):  # noqa: B017 - whatever the client's HTTP layer raises
        Client(private_app.url, verbose=False)  # no credentials: refused
    with pytest.raises(Exception):  # noqa: B017 - whatever the client's HTTP layer raises
        Client(private_app.url, auth=("ada", "wrong"), verbose=False)
    client = Client(private_app.url, auth=("ada", "s3cret"), verbose=False)
    gallery, status, _, info = client.predict(
        "a cat", "", 0, 2, 5.0, 64, 64, "", None, "", True, True, False, False, False, 0.0, 1.0, 1.0,
        api_name="/style_aligned")
    assert len(gallery) == 1 and "Done" in status


def test_upload_size_limit(live_app, tmp_path):
    """Uploads over 50 MB are refused by the server before any handler sees them."""
    import requests

    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.seek(51 * 2**20)
        f.write(b"\0")
    with big.open("rb") as f:
        r = requests.post(live_app.url + "gradio_api/upload", files={"files": ("big.png", f, "image/png")},
                          timeout=60)
    assert r.status_code in (400, 413), r.status_code
    assert live_app.alive()


def _python_sources() -> list[Path]:
    return [p for d in ("core", "tabs") for p in (ROOT / d).rglob("*.py")] + [ROOT / "app.py"]


def test_no_unsafe_loading_in_the_code():
    """torch.load only with weights_only=True; no pickle, no trust_remote_code, and core/
    never imports gradio."""
    for path in _python_sources():
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if re.search(r"\btorch\.load\(", line) and not line.lstrip().startswith(("#", "`")) \
                    and "`torch.load(" not in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
        assert not re.search(r"\bpickle\.loads?\(", text), path
        assert "trust_remote_code=True" not in text, path
        if path.parts[-2] == "core" or "core" in path.relative_to(ROOT).parts[:1]:
            assert not re.search(r"^\s*(import gradio|from gradio)", text, re.M), path


def test_zero_gpu_decorator(monkeypatch):
    """On a ZeroGPU Space the GPU handlers go through spaces.GPU with their duration; elsewhere
    they are left as they are."""
    import importlib.machinery
    import sys
    import types

    from tabs.common import gpu

    def handler(x):
        return x + 1

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert gpu(30)(handler) is handler

    seen = []
    fake = types.ModuleType("spaces")
    fake.__spec__ = importlib.machinery.ModuleSpec("spaces", None)

    def GPU(duration):  # named like the package's decorator
        def wrap(fn):
            seen.append(duration)
            return lambda *a, **k: ("on-gpu", fn(*a, **k))
        return wrap

    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    wrapped = gpu(45)(handler)
    assert wrapped(1) == ("on-gpu", 2) and seen == [45]


def test_results_from_a_data_dir_outside_cwd_and_temp(tmp_path):
    """As on a Space (`--data-dir /data/studio`, app in /home/user/app): the data folder is
    neither under the working directory nor under the temp directory. Result files made there
    (SVG/PNG downloads) still reach the visitor; the library itself (SQLite, adapters) does not."""
    from gradio_client import Client, handle_file
    from PIL import Image

    temp = tmp_path / "temp"
    temp.mkdir()
    app = start_app(tmp_path / "persist", env={"TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(temp / "gradio")})
    try:
        img = Image.new("RGB", (64, 48), "white")
        img.paste((30, 90, 200), (8, 8, 40, 40))
        img.save(tmp_path / "square.png")
        client = Client(app.url, verbose=False)
        _, status, svg_file, png_file, info = client.predict(handle_file(str(tmp_path / "square.png")), "vtracer",
                                                             4, 6, 48, api_name="/vectorize")
        assert "Done" in status and Path(svg_file).read_text().lstrip().startswith(("<svg", "<?xml"))
        assert Path(png_file).stat().st_size > 0
        private = tmp_path / "persist" / "library" / "adapters.sqlite"  # the library's kind of file
        private.parent.mkdir(parents=True, exist_ok=True)
        private.write_bytes(b"SQLite format 3\0")
        svg_dir = tmp_path / "persist" / "svg"  # the results themselves, where they are kept
        kept = [p for p in svg_dir.rglob("*") if p.is_file()]
        assert any(p.suffix == ".svg" for p in kept)
        for path in (private, tmp_path / "persist" / ".owner-key", *kept):
            assert path.exists()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{app.url}gradio_api/file={path}", timeout=10)
            assert refused.value.code in (403, 404)
    finally:
        app.stop()
