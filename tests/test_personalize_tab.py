"""The Personalize tab in the launched app (`python app.py --model tiny`): its API endpoints
through gradio_client, and the page in headless Chromium."""
from __future__ import annotations

import re

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from .conftest import screenshot, start_app


def subject_files(tmp_path, n=2, size=(90, 70)):
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        p = tmp_path / f"subject{i}.png"
        arr = np.clip(np.array([210, 50, 40]) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths


def train_args(files, steps=4, prior=True, name="api dog"):
    # files, identifier, class, method, steps, lr, rank, prior, lambda, class images, batch, accumulation,
    # gradient checkpointing, snr gamma, sample every, checkpoint every, resume, seed, name
    return [[handle_file(f) for f in files], "sks", "dog", "LoRA", steps, 1e-3, 4, prior, 1.0, 2, 1, 1, False,
            0, 2, 0, True, 0, name]


def gen_args(prompts, *slots):
    slots = list(slots) + [None, 1.0] * 3
    return [prompts, 0, 3, 5.0, *slots[:6]]


def arrays(gallery):
    return np.stack([np.asarray(Image.open(item["image"]["path"] if isinstance(item.get("image"), dict)
                                           else item["image"]).convert("RGB"), dtype=np.float32)
                     for item in gallery])


@pytest.fixture(scope="module")
def pz_app(tmp_path_factory):
    """The app for this module, with one intra-op thread: training beside a browser on two
    shared cores otherwise oversubscribes OpenMP (measured: 20 s/step instead of 1 s/step)."""
    import os
    import subprocess

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        app = start_app(tmp_path_factory.mktemp("pz-app"))
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    yield app
    app.proc.terminate()
    try:
        app.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        app.proc.kill()


@pytest.fixture(scope="module")
def client(pz_app):
    return Client(pz_app.url, verbose=False)


@pytest.fixture(scope="module")
def trained(client, tmp_path_factory):
    files = subject_files(tmp_path_factory.mktemp("pz"))
    status, plot, samples, info = client.predict(*train_args(files), api_name="/personalize_train")
    return status, plot, samples, info


def test_api_train_streams_and_saves(trained):
    status, plot, samples, info = trained
    assert "Done" in status and "api dog" in status
    assert info["adapter_id"] >= 1 and info["trainable_params"] > 0
    assert len(samples) >= 2  # samples at step 2 and at the end
    data = plot.get("data") or (plot.get("value") or {}).get("data")
    assert len(data) >= 4 and {"total", "instance", "prior"} <= {row[-1] for row in data}


def test_api_generate_export_import_round_trip(client, trained, tmp_path):
    aid = str(trained[3]["adapter_id"])
    prompts = "a sks dog on the beach\na sks dog"
    plain, st = client.predict(*gen_args(prompts), api_name="/personalize_generate")
    adapted, st2 = client.predict(*gen_args(prompts, aid, 1.0), api_name="/personalize_generate")
    assert "Done" in st2 and f"#{aid}" in st2
    assert len(adapted) == 2
    assert np.abs(arrays(adapted) - arrays(plain)).mean() > 1.0

    path, msg = client.predict(aid, api_name="/personalize_export")
    assert "kohya" in msg and str(path).endswith(".safetensors")
    msg = client.predict(handle_file(path), api_name="/personalize_import")
    m = re.search(r"#(\d+), kohya format", msg)
    assert m, msg
    reimported, _ = client.predict(*gen_args(prompts, m.group(1), 1.0), api_name="/personalize_generate")
    np.testing.assert_allclose(arrays(reimported), arrays(adapted), atol=2.0)


@pytest.mark.parametrize("kind,message", [
    ("no-files", "Upload between 1 and 20"),
    ("not-an-image", "could not be read"),
    ("empty-class", "class"),
    ("bad-identifier", "one short word"),
])
def test_bad_training_input_is_a_clear_error(client, pz_app, tmp_path, kind, message):
    files = subject_files(tmp_path, 1)
    args = train_args(files, steps=1, prior=False)
    if kind == "no-files":
        args[0] = []
    elif kind == "not-an-image":
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"this is text")
        args[0] = [handle_file(str(bad))]
    elif kind == "empty-class":
        args[2] = " "
    elif kind == "bad-identifier":
        args[1] = "two words!"
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/personalize_train")
    assert pz_app.alive()


def test_bad_imports_are_clear_errors(client, tmp_path):
    import torch
    from safetensors.torch import save_file

    pickle = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(2)}, pickle)
    with pytest.raises(AppError, match="pickle"):
        client.predict(handle_file(str(pickle)), api_name="/personalize_import")
    wrong = tmp_path / "other.safetensors"
    save_file({"unet.mid_block.nothing_here.to_q.lora_A.weight": torch.zeros(4, 32),
               "unet.mid_block.nothing_here.to_q.lora_B.weight": torch.zeros(32, 4)}, str(wrong))
    with pytest.raises(AppError, match="does not fit"):
        client.predict(handle_file(str(wrong)), api_name="/personalize_import")
    with pytest.raises(AppError, match="adapter"):
        client.predict(*gen_args("a cat", "999999", 1.0), api_name="/personalize_generate")


@pytest.mark.browser
def test_browser_personalize(pz_app, page, tmp_path):
    files = subject_files(tmp_path, 2)
    page.goto(pz_app.url)
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-files input[type=file]").set_input_files(files)
    page.wait_for_function("() => document.querySelectorAll('#pz-crops img').length >= 2", timeout=60_000)
    page.locator("#pz-class textarea, #pz-class input").first.fill("teapot")
    page.wait_for_function("() => document.querySelector('#pz-idnote').innerText.includes('a sks teapot')",
                           timeout=20_000)
    page.locator("#pz-train").click()
    page.wait_for_function("() => document.querySelector('#pz-status').innerText.includes('Done')",
                           timeout=240_000)
    assert page.locator("#pz-samples img").count() >= 2
    assert page.locator("#pz-loss canvas, #pz-loss svg").count() >= 1
    status = page.locator("#pz-status").inner_text()
    assert "sks teapot" in status
    screenshot(page, "personalize-trained")
    # the new adapter is selected in slot 1: generate with it
    page.wait_for_function("() => (document.querySelector('#pz-adapter-1 input') || {}).value"
                           " && document.querySelector('#pz-adapter-1 input').value.includes('sks teapot')",
                           timeout=30_000)
    page.locator("#pz-generate").click()
    page.wait_for_function("() => document.querySelector('#pz-gen-status').innerText.includes('Done')"
                           " && document.querySelectorAll('#pz-gallery img').length >= 2", timeout=120_000)
    assert "a sks teapot on the beach" in page.locator("#pz-gallery").inner_html() or \
        page.locator("#pz-gallery img").count() >= 2
    screenshot(page, "personalize-generated")
