"""Shared fixtures. Nothing here (or in any test) reaches the network: the tiny model family
is built in-process and the Hub is switched off for the whole session."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest
import torch

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    small tensors on two shared, busy cores run fastest single-threaded (two OpenMP threads spin
    against each other: measured 10-100x slower steps); restored for the other modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory):
    """The SDXL-class tiny engine, loaded once for the session."""
    from core.engine import Engine

    engine = Engine("tiny", data_dir=tmp_path_factory.mktemp("engine-data"))
    engine.load()
    return engine


@pytest.fixture(scope="session")
def tiny_sd_engine(tmp_path_factory):
    from core.engine import Engine

    engine = Engine("tiny-sd", data_dir=tmp_path_factory.mktemp("engine-sd-data"))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A tiny engine of the module's own, with its own data folder (library, runs): what one
    module trains or stops leaves nothing for the next. A module may override it."""
    from core.engine import Engine

    e = Engine("tiny", data_dir=tmp_path_factory.mktemp("module-engine"))
    e.load()
    return e


def pytest_terminal_summary(terminalreporter, config):
    """The random order's seed at the end of every run, also under -q (pytest-randomly prints it
    only in the header)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"test order: random, seed {seed} (the same order again: -p randomly "
                                    f"--randomly-seed={seed})")


ENGINE_FIXTURES = ("engine", "tiny_engine", "tiny_sd_engine")


def tidy(engine) -> None:
    """A shared engine as every test may expect it: no stray peft adapter (a run's "train-..." or
    a "blora-..." that a failed assertion left; resident library adapters stay), every adapter
    disabled, nothing trainable, eval mode."""
    from core import library

    if getattr(engine, "pipe", None) is None:
        return
    resident = set(library.adapters(engine).loaded().values())
    for model in (engine.pipe.unet, *library.text_encoders(engine).values()):
        for name in library.peft_names(model):
            if name not in resident:
                library.delete_adapter(model, name)
        library.disable_all(model)
        model.requires_grad_(False).eval()


@pytest.fixture(autouse=True)
def _shared_engines_left_tidy(request):
    """After every test that used a shared engine, pass or fail: `tidy` it, so what a failing
    test left behind cannot fail the tests that come after it, in whatever order."""
    engines = [request.getfixturevalue(n) for n in ENGINE_FIXTURES if n in request.fixturenames]
    yield
    for engine in engines:
        tidy(engine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveApp:
    def __init__(self, url: str, proc: subprocess.Popen, data_dir: Path, log: Path):
        self.url, self.proc, self.data_dir, self.log = url, proc, data_dir, log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_app(data_dir: Path, *extra: str, timeout: float = 240, env: dict | None = None) -> LiveApp:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "app.log"
    # one torch thread: the app shares 2 cores with Chromium and the test process
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--model", "tiny", "--port", str(port),
         "--data-dir", str(data_dir), *extra],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as r:
                if r.status == 200:
                    return LiveApp(url, proc, data_dir, log)
        except urllib.error.HTTPError:  # answering, behind a login
            return LiveApp(url, proc, data_dir, log)
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app did not come up in {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def live_app(tmp_path_factory):
    """`python app.py --model tiny` running in a subprocess for the whole session."""
    app = start_app(tmp_path_factory.mktemp("live-app"))
    yield app
    app.stop()


@pytest.fixture(scope="session")
def playwright():
    """The one Playwright driver of the session: its sync API allows one at a time, so every
    browser (this file's, a module's own with other flags) is launched from it, in any order."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("STUDIO_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright):
    """Headless Debian Chromium through Playwright (never a downloaded browser)."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"])
    yield b
    b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    yield pg
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
