"""Shared pieces of the security tests: a shared (multi-user) live app, API clients, and the
hostile files an attacker would send."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import start_app


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    """`python app.py --model tiny --multi-user`, as a public Space runs it."""
    app = start_app(tmp_path_factory.mktemp("shared"), "--multi-user")
    yield app
    app.stop()


# plain HTTP (raw_call, raw_error) sends every input: those an endpoint took on after the visitor
# token, at their defaults (each test's raw call adds them: `[*inputs, token, *AFTER_TOKEN[api]]`)
AFTER_TOKEN = {"/blora_generate": [1, 0.5],         # candidates (best of N), preference content <-> style
               "/personalize_generate": [None, 1.0, 1, 0.5],  # library style, its weight; best of N, preference
               "/svg_icon_set": [None, 1.0],          # library style, its weight
               "/styledrop_train": [None],            # library style (a new loop from its images)
               "/adain": [None]}                      # library style


def client(app, **kw):
    """A fresh API session, as an attacker who skips the UI would open one."""
    from gradio_client import Client

    return Client(app.url, verbose=False, **kw)


def new_token(app) -> str:
    return client(app).predict(api_name="/visitor")


def polyglot(path: Path) -> Path:
    """A file that is at once an SVG with script (an `onload` and a <script>) and a valid
    PhotoCD image that Pillow decodes: the SVG, an XML comment opened, padding so that
    "PCD_" sits at byte 2048, image data up to past offset 196608, the comment closed."""
    head = (b'<svg xmlns="http://www.w3.org/2000/svg" onload="fetch(\'/pwned-onload\')">'
            b'<script>fetch("/pwned-script")</script><!--')
    data = head + b" " * (2048 - len(head)) + b"PCD_"
    data += b"A" * (196608 + 768 * 512 * 3 - len(data)) + b"--></svg>"
    path.write_bytes(data)
    return path


def picture(path: Path, seed: int = 0, size=(64, 64)) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    arr[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = rng.integers(0, 255, 3, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def raw_call(app, api_name: str, args: list, timeout: float = 120) -> tuple[str, object]:
    """An endpoint called over plain HTTP (Gradio's REST route), as a script would: the body is
    whatever JSON we write, NaN and Infinity included (gradio_client refuses to send those).
    Returns (the last event: "complete" or "error", its data)."""
    import json

    import requests

    name = api_name.strip("/")
    r = requests.post(f"{app.url}gradio_api/call/{name}", data=json.dumps({"data": args}),
                      headers={"Content-Type": "application/json"}, timeout=timeout)
    r.raise_for_status()
    stream = requests.get(f"{app.url}gradio_api/call/{name}/{r.json()['event_id']}", timeout=timeout)
    event, data = None, None
    for line in stream.text.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):].strip()
        elif line.startswith("data: ") and event in ("complete", "error"):
            data = json.loads(line[len("data: "):])
    return event, data


def raw_error(app, api_name: str, args: list) -> str:
    """The error message an endpoint answers `args` with (failing the test if it succeeds)."""
    event, data = raw_call(app, api_name, args)
    assert event == "error", (api_name, event, str(data)[:300])
    return (data or {}).get("error") or ""


def upload(app, path: Path) -> dict:
    """A file sent to the app's upload route, as the data a raw call passes for it."""
    import requests

    with open(path, "rb") as f:
        r = requests.post(f"{app.url}gradio_api/upload", files={"files": (Path(path).name, f)}, timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}
