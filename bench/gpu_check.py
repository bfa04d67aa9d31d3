"""One command that measures every GPU figure of issue 19, offline, and writes a report.

    python -m bench.gpu_check                       # a GPU: sdxl-arch (SDXL shapes, random weights), fp16
    python -m bench.gpu_check --dtype bf16
    python -m bench.gpu_check --smoke               # CPU, tiny family, tiny sizes (< ~2 min); what the test runs
    python -m bench.gpu_check --model tiny --device cpu     # the same as --smoke

Sections (each guarded: a failure is reported as an `ERROR:` line and the rest still run; a
global time budget, --budget, turns the sections left into `SKIPPED:` lines):

1. style_aligned: a Style-Aligned set of 4 at 1024 px / 50 steps vs the plain batch of the
   same prompts: seconds, peak memory, ratio; with and without a shared-score shift (log 2).
2. training at 1024: DreamBooth-LoRA, B-LoRA (rank 64), StyleDrop (rank 4): s/step and peak
   memory with and without gradient checkpointing, with and without 8-bit Adam (bitsandbytes;
   the row says when the trainer fell back to torch AdamW). Cached latents: the trainer always
   encodes the VAE latents and text embeddings once up front (no switch to compare). One more
   DreamBooth-LoRA row in the low-memory mode (core/engine.py: idle text encoders on the CPU,
   checkpointing and 8-bit Adam forced; goal: within 12 GB peak at 1024), the engine switched
   into it for that row only unless the whole run is in it (--low-vram).
3. adain: frames per second at 256/512/1024, fp16 (fp32 on CPU), channels_last, with the
   style's statistics cached (the webcam case; bench/adain.py's `bench_device`).
4. rasterizer: forward+backward of random blob scenes 64/256 paths @256, 128@512, 256@600,
   the per-shape loop and the batched path side by side (bench/vector.py's scenes), the
   batched path with both composites (scan: CUDA's default; boxes: the CPU's).
5. vectorfusion: one SDS iteration at render 600 / input 512 (64 paths), and the projected
   time of a full run of 1000 iterations (SDS loop only: no candidates, no LIVE).
6. app: the whole app's peak memory with every tab's core function used once on one engine
   (Style-Aligned set, AdaIN frame, DreamBooth / B-LoRA / StyleDrop steps, VectorFusion
   iterations, image-to-SVG).

The report goes to bench/results/<UTC date>-<gpu>.md (--out to change the folder) and to
stdout. Goals (issue 19): Style-Aligned <= 1.10x the plain batch with no extra peak memory for
the shift; rasterizer 256@600 <= 20 ms; AdaIN >= 150 FPS at 512; full VectorFusion run <= 3 min.

On the device machine (see /work/.library/device/README.md): the tool copies this working tree
and nothing else; the machine has no network. Run it from the repository root as
`python -m bench.gpu_check` (bench is a package, no sys.path edits). Python packages the image
lacks travel as wheels: `pip download --only-binary=:all: --no-deps -d wheels/ PKG` here (pure-
Python wheels, `py3-none-any`, work anywhere; compiled ones such as bitsandbytes need
`--platform manylinux2014_x86_64 --python-version 3.X` matching the device's Python), list
`wheels/` in .git/info/exclude, name it in the run's `carry`, and start the command with
`pip install --no-index --find-links wheels/ PKG && python -m bench.gpu_check`.
"""
from __future__ import annotations

import os

# before torch starts OpenMP: idle threads sleep instead of spinning (on a shared, loaded CPU
# spinning threads made the rasterizer 4x slower and erratic; issue 19)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import datetime as dt
import io
import math
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("style_aligned", "training", "adain", "rasterizer", "vectorfusion", "app")


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU smoke run."""

    image: int = 1024             # Style-Aligned and training resolution
    sa_steps: int = 50
    train_steps: int = 5
    adain_sizes: tuple = (256, 512, 1024)
    adain_width: float = 1.0
    adain_iters: int = 30
    raster: tuple = ((64, 256), (256, 256), (128, 512), (256, 600))
    raster_repeats: int = 5
    vf_paths: int = 64
    vf_input: int | None = 512
    vf_steps: int = 10
    vf_full_run: int = 1000
    app_steps: int = 2
    notes: list = field(default_factory=list)


def smoke_sizes() -> Sizes:
    return Sizes(image=64, sa_steps=3, train_steps=3, adain_sizes=(64, 128), adain_width=0.25,
                 adain_iters=2, raster=((8, 64), (16, 64), (8, 96), (16, 96)), raster_repeats=1,
                 vf_paths=4, vf_input=None, vf_steps=2, app_steps=1)


class Report:
    """Sections of (label, value, unit) rows, or an error line each; markdown out."""

    def __init__(self, header: dict):
        self.header = header
        self.sections: dict[str, list[str]] = {}

    def row(self, section: str, label: str, value, unit: str = "", note: str = "") -> None:
        v = f"{value:.4g}" if isinstance(value, float) else str(value)
        line = f"| {label} | {v} | {unit} | {note} |"
        self.sections.setdefault(section, []).append(line)
        print(f"  {label}: {v} {unit} {note}".rstrip(), flush=True)

    def error(self, section: str, message: str, kind: str = "ERROR") -> None:
        self.sections.setdefault(section, []).append(f"{kind}: {message}")
        print(f"  {kind}: {message}", flush=True)

    def markdown(self) -> str:
        out = ["# GPU check", ""]
        out += [f"- {k}: {v}" for k, v in self.header.items()]
        for name in SECTIONS:
            lines = self.sections.get(name, ["ERROR: section did not run"])
            out += ["", f"## {name}", ""]
            rows = [x for x in lines if x.startswith("|")]
            if rows:
                out += ["| what | value | unit | note |", "| --- | --- | --- | --- |"]
            out += rows + [x for x in lines if not x.startswith("|")]
        return "\n".join(out) + "\n"


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> tuple[float, str]:
    """(GiB, what it is): CUDA max allocated since the last reset; CPU: process max RSS."""
    sync(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GiB (CUDA max allocated)"
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GiB (process max RSS, only grows)"


def _quiet(fn, *a, **kw):
    """Call a bench module's printing function, keeping its output for the log only."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*a, **kw)
    return out, buf.getvalue()


# --- 1. Style-Aligned ---------------------------------------------------------------------

def section_style_aligned(engine, z: Sizes, rep: Report) -> None:
    from bench.style_aligned import PROMPTS
    from core.events import Result
    from core.style_aligned import SharingOptions, style_aligned_set

    style = "in minimal flat design illustration"
    kw = {"seed": 0, "steps": z.sa_steps, "guidance": 5.0, "width": z.image, "height": z.image}

    def run(events):
        reset_peak(engine.device)
        t0 = time.perf_counter()
        last = None
        for ev in events:
            last = ev
        sync(engine.device)
        assert isinstance(last, Result), f"no result: {last!r}"
        return time.perf_counter() - t0, peak_gib(engine.device)[0]

    # warm-up at 2 steps (kernels, allocator), then one timed run each
    run(engine.generate([f"{p}, {style}" for p in PROMPTS], **{**kw, "steps": 2}))
    plain = run(engine.generate([f"{p}, {style}" for p in PROMPTS], **kw))
    sa = run(style_aligned_set(engine, PROMPTS, style, **kw))
    shift = run(style_aligned_set(engine, PROMPTS, style,
                                  options=SharingOptions(shared_score_shift=math.log(2)), **kw))
    unit = peak_gib(engine.device)[1]
    what = f"{len(PROMPTS)} images, {z.image} px, {z.sa_steps} steps"
    rep.row("style_aligned", f"plain batch ({what})", plain[0], "s")
    rep.row("style_aligned", "plain batch peak", plain[1], unit)
    rep.row("style_aligned", "Style-Aligned set", sa[0], "s")
    rep.row("style_aligned", "Style-Aligned set peak", sa[1], unit)
    rep.row("style_aligned", "set + shift log 2", shift[0], "s")
    rep.row("style_aligned", "set + shift peak", shift[1], unit)
    rep.row("style_aligned", "ratio set / plain", sa[0] / plain[0], "x", "goal <= 1.10")
    rep.row("style_aligned", "ratio set+shift / plain", shift[0] / plain[0], "x")
    rep.row("style_aligned", "extra peak for the shift", shift[1] - sa[1], "GiB", "goal <= 0")


# --- 2. training ---------------------------------------------------------------------------

def _train_row(engine, rep: Report, label: str, recipe, cfg, note: str = "") -> None:
    from bench.train import run_row
    from core.train import Trainer

    notes = []
    if cfg.use_8bit_adam and engine.device.type == "cuda":
        import importlib.util
        if importlib.util.find_spec("bitsandbytes") is None:
            notes.append("bitsandbytes missing: torch AdamW used")
    elif cfg.use_8bit_adam:
        notes.append("8-bit Adam needs CUDA: torch AdamW used")
    per_step, log = _quiet(run_row, engine, label, recipe, cfg, Trainer)
    peak, unit = peak_gib(engine.device)
    if not math.isfinite(per_step):
        raise RuntimeError(f"{label}: no step timings ({log.strip()[-200:]})")
    rep.row("training", f"{label} s/step", per_step, "s", "; ".join(notes))
    rep.row("training", f"{label} peak", peak, unit, note)


def _low_vram_row(engine, rep: Report, label: str, recipe, cfg) -> None:
    """A training row with the engine in the low-memory mode (switched on for the row only when
    the run is not in it already); the settings are what the trainer makes of them there."""
    from core.train import low_vram_settings

    switched = not engine.low_vram
    if switched:
        engine.set_low_vram(True)
    try:
        if engine.device.type == "cuda":
            torch.cuda.empty_cache()
        _train_row(engine, rep, label, recipe, low_vram_settings(cfg),
                   note="; ".join(engine.low_vram_notes) + "; goal <= 12 GiB peak at 1024")
    finally:
        if switched:
            engine.set_low_vram(False)


def section_training(engine, z: Sizes, rep: Report) -> None:
    from bench.train import images
    from core import blora, dreambooth, styledrop
    from core.train import TrainSettings

    subject = images(2, z.image)

    def cfg(**kw):
        return TrainSettings(steps=z.train_steps, learning_rate=1e-4, sample_every=0, checkpoint_every=0,
                           resume=False, eval_draws=1, **kw)

    rep.row("training", "cached latents", "always", "", "VAE latents and text embeddings encoded once up front")
    failures = []

    def guarded(label, make_recipe, row=_train_row, **kw):
        try:
            row(engine, rep, label, make_recipe(), cfg(**kw))
        except Exception as exc:  # noqa: BLE001 - one row's failure is reported, the rest run
            failures.append(label)
            rep.error("training", f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
            traceback.print_exc()

    def db():
        return dreambooth.make_recipe(engine, subject, identifier="sks", class_noun="dog", prior=False,
                                      sample_prompts=[])

    for gc in (False, True):
        for adam8 in (True, False):
            guarded(f"DreamBooth-LoRA {z.image}px ckpt={'on' if gc else 'off'} 8bit={'on' if adam8 else 'off'}",
                    db, gradient_checkpointing=gc, use_8bit_adam=adam8)
    guarded(f"DreamBooth-LoRA {z.image}px low-VRAM mode", db, row=_low_vram_row)
    if engine.xl:
        for gc in (False, True):
            guarded(f"B-LoRA rank 64 {z.image}px ckpt={'on' if gc else 'off'}",
                    lambda: blora.make_recipe(engine, subject[0], trigger="v1", rank=64, sample_prompts=[]),
                    gradient_checkpointing=gc)
    else:
        rep.error("training", "B-LoRA needs an SDXL-architecture model", "SKIPPED")
    for gc in (False, True):
        guarded(f"StyleDrop rank 4 {z.image}px ckpt={'on' if gc else 'off'}",
                lambda: styledrop.make_recipe(engine, [(subject[0], "a dog in watercolor style")], rank=4),
                gradient_checkpointing=gc)
    if failures:
        raise RuntimeError(f"{len(failures)} training row(s) failed (above)")


# --- 3. AdaIN -----------------------------------------------------------------------------

def section_adain(device, z: Sizes, rep: Report) -> None:
    from bench.adain import bench_device

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows, _ = _quiet(bench_device, device, dtype, list(z.adain_sizes), z.adain_iters, 3 if device.type == "cuda" else 1,
                     z.adain_width, True)
    for r in rows:
        goal = "goal >= 150" if r["size"] == 512 else ""
        rep.row("adain", f"{r['size']} px frame ({r['dtype']}, channels_last, cached style stats)",
                r["frame_fps"], "FPS", goal)
        rep.row("adain", f"{r['size']} px frame + style encode", r["with_style_fps"], "FPS")


# --- 4. rasterizer ------------------------------------------------------------------------

def raster_time(n: int, size: int, device, path: str, repeats: int) -> float:
    """Seconds (min over repeats, after a warm-up) of one render + MSE + backward. `path`:
    loop, batched (its automatic composite), batched-scan or batched-boxes."""
    from bench.vector import random_scene
    from core.vector.raster_batched import render_batched
    from core.vector.rasterizer import render

    scene = random_scene(n, size, device)
    for p in scene.parameters():
        p.requires_grad_(True)
    target = torch.rand(3, size, size, device=device)
    white = torch.ones(4, size, size, device=device)

    def image():
        if path.startswith("batched-"):
            return render_batched(scene, size, size, white, composite_mode=path.split("-")[1])[:3]
        return render(scene, size, size, path=path)

    def once():
        for p in scene.parameters():
            p.grad = None
        ((image() - target) ** 2).mean().backward()
        sync(device)

    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return min(times)


def section_rasterizer(device, z: Sizes, rep: Report) -> None:
    from bench.vector import random_scene
    from core.vector.rasterizer import choose_path

    auto_mode = "scan" if device.type == "cuda" else "boxes"
    other = "boxes" if auto_mode == "scan" else "scan"
    for n, size in z.raster:
        t = {path: raster_time(n, size, device, path, z.raster_repeats)
             for path in ("loop", "batched", f"batched-{other}")}
        auto = choose_path(random_scene(n, size, device), "auto")
        goal = "goal <= 20 ms" if (n, size) == (256, 600) else ""
        rep.row("rasterizer", f"{n} paths @{size} loop fwd+bwd", 1000 * t["loop"], "ms")
        rep.row("rasterizer", f"{n} paths @{size} batched fwd+bwd", 1000 * t["batched"], "ms",
                f"{auto_mode} composite; {goal}".rstrip("; "))
        rep.row("rasterizer", f"{n} paths @{size} batched, {other} composite", 1000 * t[f"batched-{other}"], "ms")
        rep.row("rasterizer", f"{n} paths @{size} loop / batched", t["loop"] / t["batched"], "x",
                f"auto picks {auto}")


# --- 5. VectorFusion ----------------------------------------------------------------------

def section_vectorfusion(engine, z: Sizes, rep: Report) -> None:
    import queue

    from core import vectorfusion as vf
    from core.jobs import Job, JobContext

    R, S = vf.sizes(engine, z.vf_input)          # 600 / 512 with input 512, as in the paper
    o = vf.VFOptions(num_paths=z.vf_paths, steps=z.vf_steps, preview_every=10**9, reinit_every=50,
                     input_size=S, seed=0)
    scene = vf.initial_scene("iconographic", z.vf_paths, R, np.random.default_rng(0))
    files = vf.SvgFiles(tempfile.mkdtemp(), "gpu-check", png_size=R)
    ctx = JobContext(Job("gpu-check", "gpu-check"), queue.Queue())
    vf.sds_loop(engine, ctx, "a lighthouse", scene, vf.VFOptions(**{**o.__dict__, "steps": 2}), files)
    reset_peak(engine.device)
    t0 = time.perf_counter()
    vf.sds_loop(engine, ctx, "a lighthouse", scene, o, files)
    sync(engine.device)
    per_iter = (time.perf_counter() - t0) / z.vf_steps
    peak, unit = peak_gib(engine.device)
    rep.row("vectorfusion", f"SDS iteration ({z.vf_paths} paths, render {R} px, input {S} px)", per_iter, "s")
    rep.row("vectorfusion", f"projected SDS run of {z.vf_full_run} iterations", per_iter * z.vf_full_run / 60, "min",
            "goal <= 3 (SDS loop only)")
    rep.row("vectorfusion", "SDS peak", peak, unit)


# --- 6. the whole app ---------------------------------------------------------------------

def section_app(engine, z: Sizes, rep: Report) -> None:
    """Every tab's core function once on one engine, the peak over all of them."""
    import queue

    from bench.train import images
    from core import adain, blora, dreambooth, styledrop
    from core import vectorfusion as vf
    from core.events import Result
    from core.jobs import Job, JobContext
    from core.style_aligned import style_aligned_set
    from core.train import TrainSettings, Trainer
    from core.vector.vectorize import run, vectorize

    def drain(events):
        last = None
        for ev in events:
            last = ev
        return last

    dev = engine.device
    reset_peak(dev)
    steps = {}
    t0 = time.perf_counter()
    last = drain(style_aligned_set(engine, ["A guitar", "A sailboat"], "in watercolor", seed=0,
                                   steps=z.app_steps, guidance=5.0, width=z.image, height=z.image))
    assert isinstance(last, Result)
    steps["Style-Aligned"] = peak_gib(dev)[0]
    net = adain.AdaINNet(z.adain_width).eval().to(dev, engine.dtype if dev.type == "cuda" else torch.float32)
    with torch.inference_mode():
        x = torch.rand(1, 3, 512 if dev.type == "cuda" else 64, 512 if dev.type == "cuda" else 64, device=dev)
        adain.stylize_tensor(net, x, [x.flip(-1)])
    steps["AdaIN"] = peak_gib(dev)[0]
    subject = images(1, z.image)
    cfg = TrainSettings(steps=z.app_steps, learning_rate=1e-4, sample_every=0, checkpoint_every=0,
                      resume=False, eval_draws=1)
    from bench.train import run_row
    for name, recipe in (
            ("DreamBooth", lambda: dreambooth.make_recipe(engine, subject, identifier="sks", class_noun="dog",
                                                          prior=False, sample_prompts=[])),
            ("B-LoRA", (lambda: blora.make_recipe(engine, subject[0], trigger="v1", rank=64, sample_prompts=[]))
             if engine.xl else None),
            ("StyleDrop", lambda: styledrop.make_recipe(engine, [(subject[0], "a dog in watercolor style")], rank=4))):
        if recipe is not None:
            _quiet(run_row, engine, name, recipe(), cfg, Trainer)
            steps[name] = peak_gib(dev)[0]
    R, S = vf.sizes(engine, z.vf_input)
    o = vf.VFOptions(num_paths=z.vf_paths, steps=z.app_steps, preview_every=10**9, input_size=S, seed=0)
    ctx = JobContext(Job("gpu-check", "gpu-check"), queue.Queue())
    vf.sds_loop(engine, ctx, "a lighthouse", vf.initial_scene("iconographic", z.vf_paths, R, np.random.default_rng(0)),
                o, vf.SvgFiles(tempfile.mkdtemp(), "gpu-check-app", png_size=R))
    steps["VectorFusion"] = peak_gib(dev)[0]
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    run(vectorize(img, num_paths=4, init="live", steps=z.app_steps * 5, size=64, device=dev))
    steps["Image-to-SVG"] = peak_gib(dev)[0]
    peak, unit = peak_gib(dev)
    rep.row("app", "whole-app peak (every tab once)", peak, unit,
            "running peak after each: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    if dev.type == "cuda":
        rep.row("app", "resident after all tabs", torch.cuda.memory_allocated(dev) / 2**30, "GiB")
    rep.row("app", "time for the tour", time.perf_counter() - t0, "s")


# --- driver -------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "device"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sdxl-arch", help="sdxl-arch on a GPU; tiny = --smoke")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32", "auto"])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny family, tiny sizes")
    ap.add_argument("--low-vram", action=argparse.BooleanOptionalAction, default=None,
                    help="the whole run in the low-memory mode (default: the app's automatic choice; "
                         "the DreamBooth-LoRA low-VRAM row is measured either way)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--budget", type=float, default=460.0, help="seconds; later sections are skipped past it")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; smoke: 1)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for <date>-<gpu>.md")
    a = ap.parse_args(argv)
    if a.model in ("tiny", "tiny-sd"):
        a.smoke = True
    if a.smoke:
        a.model = a.model if a.model in ("tiny", "tiny-sd") else "tiny"
        a.device = "cpu" if a.device == "auto" else a.device
        a.dtype = "auto"
        a.threads = a.threads or 1
    if a.threads:
        torch.set_num_threads(a.threads)
    z = smoke_sizes() if a.smoke else Sizes()
    start = time.perf_counter()

    from core.engine import Engine

    engine = Engine(a.model, device=a.device, dtype=a.dtype, data_dir=tempfile.mkdtemp(prefix="gpu-check-"),
                    low_vram=a.low_vram)
    dev = engine.device
    if not a.smoke and dev.type != "cuda":
        print(f"gpu_check: no CUDA device here ({dev}); the full sizes would take hours. "
              "Run `python -m bench.gpu_check --smoke` for the CPU form.", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu-{platform.machine()}"
    header = {"date (UTC)": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              "device": gpu, "model": a.model + (" (random weights)" if a.model == "sdxl-arch" else ""),
              "dtype": str(engine.dtype).replace("torch.", ""), "mode": "smoke (tiny sizes)" if a.smoke else "full",
              "memory mode": engine.memory_mode,
              "torch": torch.__version__, "python": platform.python_version(),
              "CPU threads": torch.get_num_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
              "command": "python -m bench.gpu_check " + " ".join(argv or sys.argv[1:])}
    if dev.type == "cuda":
        header["CUDA"] = torch.version.cuda
        header["GPU memory"] = f"{torch.cuda.get_device_properties(dev).total_memory / 2**30:.1f} GiB"
    rep = Report(header)
    print(f"gpu_check: {gpu}, {a.model}, {header['dtype']}, {header['mode']}", flush=True)
    t_load = time.perf_counter()
    try:
        engine.load()
        header["model load"] = f"{time.perf_counter() - t_load:.1f} s"
        if engine.low_vram:
            header["memory mode"] += ": " + ", ".join(engine.low_vram_notes)
    except Exception as exc:  # noqa: BLE001
        header["model load"] = f"ERROR: {type(exc).__name__}: {exc}"
    runners = {
        "style_aligned": lambda: section_style_aligned(engine, z, rep),
        "training": lambda: section_training(engine, z, rep),
        "adain": lambda: section_adain(dev, z, rep),
        "rasterizer": lambda: section_rasterizer(dev, z, rep),
        "vectorfusion": lambda: section_vectorfusion(engine, z, rep),
        "app": lambda: section_app(engine, z, rep),
    }
    for name in SECTIONS:
        if name not in a.only:
            rep.error(name, "not selected (--only)", "SKIPPED")
            continue
        elapsed = time.perf_counter() - start
        if elapsed > a.budget:
            rep.error(name, f"time budget of {a.budget:.0f} s spent ({elapsed:.0f} s)", "SKIPPED")
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            runners[name]()
        except Exception as exc:  # noqa: BLE001 - one section's failure never stops the others
            traceback.print_exc()
            rep.error(name, f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rep.sections.setdefault(name, []).append(f"(section time {time.perf_counter() - t0:.1f} s)")
    header["total time"] = f"{time.perf_counter() - start:.1f} s"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    path = out / f"{stamp}-{_slug(gpu)}{'-smoke' if a.smoke else ''}.md"
    path.write_text(rep.markdown(), encoding="utf-8")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
