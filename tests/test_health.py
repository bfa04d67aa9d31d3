"""The health banner: model, device, dtype and state, with the reason and the fix on a failure,
following the background load."""
from __future__ import annotations

import time

import pytest

from core import models
from core.engine import Engine, Health
from tabs.health import health_markdown
from tests.conftest import start_app


def facts(**kw):
    return dict(dict(model="stabilityai/stable-diffusion-xl-base-1.0", device="cpu", dtype="float32",
                     offline=False), **kw)


def test_each_state_reads_as_what_to_do():
    assert health_markdown(Health("ready", **facts())).startswith(
        "**Ready**: model `stabilityai/stable-diffusion-xl-base-1.0` on `cpu` (float32).")
    loading = health_markdown(Health("loading", **facts(), detail="Loading unet"))
    assert loading.startswith("**Loading**") and "Loading unet." in loading
    failed = health_markdown(Health("failed", **facts(), detail=(
        "Could not load the model 'x': OSError: no file at /home/op/models/x/unet/config.json\n"
        "To fix it: pass a local diffusers folder with --model /path/to/model; or try --model tiny.")))
    assert failed.startswith("**The model could not be loaded**")
    assert "\n\n**To fix it**: pass a local diffusers folder" in failed and "--model tiny" in failed
    assert "/home/op" not in failed and "…/config.json" in failed   # no server paths
    tiny = health_markdown(Health("ready", **facts(model="tiny", offline=True)))
    assert "Offline tiny models" in tiny and "256 px" in tiny


def test_engine_health_follows_the_load(tmp_path, monkeypatch):
    engine = Engine("tiny", device="cpu", data_dir=tmp_path)
    assert engine.health().state == "loading" and engine.health().model == "tiny"
    engine.load()
    assert engine.health() == Health("ready", model="tiny", device="cpu", dtype="float32", offline=True)

    def no_network(spec, device, dtype, report):
        report("Loading the unet")
        raise models._load_error(spec, OSError("We couldn't connect to 'https://huggingface.co'"))
    monkeypatch.setattr(models, "load_pipeline", no_network)
    broken = Engine("sdxl", device="cpu", data_dir=tmp_path)
    broken.load_in_background().join(10)
    h = broken.health()
    assert h.state == "failed" and "couldn't connect" in h.detail and "--model tiny" in h.detail


@pytest.mark.slow
def test_default_model_offline_shows_the_failure_and_the_fix_within_30_s(tmp_path):
    """The default model on a machine without the Hub: the banner (and its API) say so at once."""
    import requests

    started = time.monotonic()
    app = start_app(tmp_path / "data", "--model", "sdxl",
                    env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""})
    try:
        while True:
            r = requests.post(f"{app.url}gradio_api/call/health", json={"data": []}, timeout=10)
            out = requests.get(f"{app.url}gradio_api/call/health/{r.json()['event_id']}", timeout=10).text
            if '"failed"' in out or time.monotonic() - started > 30:
                break
            time.sleep(1)
        assert '"failed"' in out, out[-500:]
        assert "--model tiny" in out and "stabilityai/stable-diffusion-xl-base-1.0" in out
        assert time.monotonic() - started <= 30
    finally:
        app.stop()
