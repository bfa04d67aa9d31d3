"""The Personalize tab in the launched app (`python app.py --model tiny`): its API endpoints
through gradio_client, and the page in headless Chromium."""
from __future__ import annotations

import re
import time

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


def train_args(files, steps=4, prior=True, name="api dog", visitor="alice"):
    # files, identifier, class, method, steps, lr, rank, prior, lambda, class images, batch, accumulation,
    # gradient checkpointing, snr gamma, sample every, checkpoint every, resume, seed, name,
    # text-encoder LoRA rank (0 = off), visitor id
    # (the browser's; on a private instance like this one everything belongs to "local" anyway)
    return [[handle_file(f) for f in files], "sks", "dog", "LoRA", steps, 1e-3, 4, prior, 1.0, 2, 1, 1, False,
            0, 2, 0, True, 0, name, 0, visitor]


def gen_args(prompts, *slots, visitor="alice"):
    slots = list(slots) + [None, 1.0] * 3
    return [prompts, 0, 3, 5.0, *slots[:6], visitor]


def drawn_lines(page, selector) -> list[tuple[str, int]]:
    """(stroke colour, number of points) of each line the plot's SVG draws."""
    found = page.evaluate("""sel => [...document.querySelectorAll(sel + ' g.mark-line path')].map(
        p => [p.getAttribute('stroke') || '', p.getAttribute('d') || ''])""", selector)
    return [(stroke, len(re.findall(r"[ML]", d))) for stroke, d in found
            if stroke and stroke != "none" and re.search(r"L", d)]


def arrays(gallery):
    return np.stack([np.asarray(Image.open(item["image"]["path"] if isinstance(item.get("image"), dict)
                                           else item["image"]).convert("RGB"), dtype=np.float32)
                     for item in gallery])


@pytest.fixture(scope="module")
def pz_app(tmp_path_factory):
    """The app for this module (start_app gives it one intra-op thread: training beside a
    browser on two shared cores otherwise oversubscribes OpenMP, 20 s/step instead of 1 s)."""
    app = start_app(tmp_path_factory.mktemp("pz-app"))
    yield app
    app.stop()


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


def test_api_generate_export_import_round_trip(client, pz_app, trained, tmp_path):
    aid = str(trained[3]["adapter_id"])
    prompts = "a sks dog on the beach\na sks dog"
    plain, st = client.predict(*gen_args(prompts), api_name="/personalize_generate")
    adapted, st2 = client.predict(*gen_args(prompts, aid, 1.0), api_name="/personalize_generate")
    assert "Done" in st2 and f"#{aid}" in st2
    assert len(adapted) == 2
    assert np.abs(arrays(adapted) - arrays(plain)).mean() > 1.0

    # another page load (a reload: a new session, and here another visitor id) still has it: on a
    # private instance the library belongs to "local", not to the page that trained it
    other = Client(pz_app.url, verbose=False)
    again, st3 = other.predict(*gen_args(prompts, aid, 1.0, visitor="bob"), api_name="/personalize_generate")
    assert "Done" in st3 and f"#{aid}" in st3
    np.testing.assert_array_equal(arrays(again), arrays(adapted))

    path, msg = client.predict(aid, "alice", api_name="/personalize_export")
    assert "kohya" in msg and str(path).endswith(".safetensors")
    msg = client.predict(handle_file(path), "alice", api_name="/personalize_import")
    m = re.search(r"#(\d+), kohya format", msg)
    assert m, msg
    reimported, _ = client.predict(*gen_args(prompts, m.group(1), 1.0), api_name="/personalize_generate")
    np.testing.assert_allclose(arrays(reimported), arrays(adapted), atol=2.0)


def test_api_language_drift(client, trained):
    """The class prompt with and without the adapter, same seeds: at weight 0 the two halves are
    the same images (similarity 1 for every seed); at weight 1 the class has moved."""
    aid = str(trained[3]["adapter_id"])
    off, status, md = client.predict(aid, 0.0, 0, 3, 5.0, "alice", api_name="/personalize_drift")
    assert "Done" in status and '"a dog"' in md
    frozen, adapted = arrays(off[:4]), arrays(off[4:])
    np.testing.assert_array_equal(frozen, adapted)
    assert re.findall(r"\| \d+ \| ([\d.]+) \|", md) == ["1.000"] * 4
    on, status, md = client.predict(aid, 1.0, 0, 3, 5.0, "alice", api_name="/personalize_drift")
    np.testing.assert_array_equal(arrays(on[:4]), frozen)  # the frozen half does not depend on the weight
    assert np.abs(arrays(on[4:]) - frozen).mean() > 0.5
    assert "Mean" in md and len(re.findall(r"\| \d+ \| ([-\d.]+) \|", md)) == 4


def test_api_train_with_text_encoder_lora(client, tmp_path):
    args = train_args(subject_files(tmp_path, 1), steps=2, prior=False, name="te dog")
    args[-2] = 2  # text-encoder LoRA rank
    status, plot, samples, info = client.predict(*args, api_name="/personalize_train")
    assert "Done" in status and info["text_encoder_lora"] == ["text_encoder", "text_encoder_2"]


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
        client.predict(handle_file(str(pickle)), None, api_name="/personalize_import")
    wrong = tmp_path / "other.safetensors"
    save_file({"unet.mid_block.nothing_here.to_q.lora_A.weight": torch.zeros(4, 32),
               "unet.mid_block.nothing_here.to_q.lora_B.weight": torch.zeros(32, 4)}, str(wrong))
    with pytest.raises(AppError, match="does not fit"):
        client.predict(handle_file(str(wrong)), None, api_name="/personalize_import")
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
    # a short run without prior preservation first (one curve), then the default run with it:
    # the plot must draw the new run's three curves, not only the first run's "total"
    page.get_by_text("Training settings").filter(visible=True).first.click()
    page.locator("#pz-prior input[type=checkbox]").uncheck()
    page.locator("#pz-steps input").fill("2")
    page.locator("#pz-steps input").press("Tab")
    page.locator("#pz-train").click()
    page.wait_for_function("() => document.querySelector('#pz-status').innerText.includes('Done')",
                           timeout=240_000)
    assert len(drawn_lines(page, "#pz-loss")) == 1
    page.locator("#pz-prior input[type=checkbox]").check()
    page.locator("#pz-steps input").fill("12")  # the preset's: samples at steps 6 and 12
    page.locator("#pz-steps input").press("Tab")
    page.locator("#pz-train").click()
    page.wait_for_function("() => !document.querySelector('#pz-status').innerText.includes('Done')",
                           timeout=30_000)
    page.wait_for_function("() => document.querySelector('#pz-status').innerText.includes('Done')",
                           timeout=240_000)
    assert page.locator("#pz-samples img").count() >= 2
    # the three loss curves are really drawn (not just the axes): one SVG line path each, over
    # several steps, in three colours
    deadline = time.monotonic() + 15
    while len(drawn_lines(page, "#pz-loss")) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    lines = drawn_lines(page, "#pz-loss")
    assert len(lines) == 3 and len({stroke for stroke, _ in lines}) == 3, lines
    assert all(points >= 2 for _, points in lines), lines
    legend = page.locator("#pz-loss").inner_text()
    assert all(name in legend for name in ("total", "instance", "prior")), legend
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
    # a reload is a new session: the subject is still in the library lists (owner "local")
    page.reload()
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-adapter-1 input").click()
    page.wait_for_function("() => [...document.querySelectorAll('ul[role=listbox] li, [role=option]')]"
                           ".some(o => o.innerText.includes('sks teapot'))", timeout=30_000)


def test_shared_instance_keeps_each_visitors_adapters(tmp_path_factory, tmp_path):
    """--multi-user: the adapter belongs to the visitor id that trained it (kept in the browser,
    so it survives reloads), not to the page session; another visitor cannot use it."""
    app = start_app(tmp_path_factory.mktemp("pz-shared"), "--multi-user")
    try:
        files = subject_files(tmp_path, 1)
        alice, bob = (Client(app.url, verbose=False).predict(api_name="/visitor") for _ in range(2))
        _, _, _, info = Client(app.url, verbose=False).predict(
            *train_args(files, steps=1, prior=False, name="alice dog", visitor=alice),
            api_name="/personalize_train")
        aid = str(info["adapter_id"])
        _, st = Client(app.url, verbose=False).predict(*gen_args("a sks dog", aid, 1.0, visitor=alice),
                                                       api_name="/personalize_generate")
        assert "Done" in st and f"#{aid}" in st  # alice again, from a new session
        with pytest.raises(AppError, match="adapter was not found"):
            Client(app.url, verbose=False).predict(*gen_args("a sks dog", aid, 1.0, visitor=bob),
                                                   api_name="/personalize_generate")
        assert app.alive()
    finally:
        app.stop()
