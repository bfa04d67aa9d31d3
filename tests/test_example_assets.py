"""The example images are ours: each is drawn by assets/examples/make.py, and the committed file
is what the script draws (so nobody swaps in a third-party picture)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def load_maker():
    spec = importlib.util.spec_from_file_location("example_maker", ROOT / "assets/examples/make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_drawn_by_our_script_and_small():
    maker = load_maker()
    committed = sorted(p.name for p in (ROOT / "assets/examples").glob("*.png"))
    assert committed == sorted(maker.EXAMPLES)
    for name, draw in maker.EXAMPLES.items():
        on_disk = Image.open(ROOT / "assets/examples" / name)
        assert on_disk.mode == "RGB" and max(on_disk.size) <= 320
        drawn = np.asarray(draw(), dtype=np.float64)
        assert drawn.shape == np.asarray(on_disk).shape
        # the same drawing (a newer Pillow may anti-alias an edge differently)
        assert np.abs(drawn - np.asarray(on_disk, dtype=np.float64)).mean() < 2.0, name
        assert np.asarray(on_disk).std() > 10, f"{name} is nearly blank"
