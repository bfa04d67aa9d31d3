"""Draw the example images that every tab's Examples use: all made here, procedurally, with
Pillow and NumPy (no third-party images). Run from the repository root to redraw them:

    python assets/examples/make.py

Each image is small (at most 320 px) so that an example runs in seconds on a CPU."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SIZE = 256


def _gradient(top, bottom, size=(SIZE, SIZE)) -> Image.Image:
    t = np.linspace(0, 1, size[1])[:, None, None]
    arr = (1 - t) * np.array(top, float) + t * np.array(bottom, float)
    return Image.fromarray(np.broadcast_to(arr, (size[1], size[0], 3)).astype(np.uint8))


def house() -> Image.Image:
    """A content picture: a house on a hill under a sky with a sun."""
    im = _gradient((120, 170, 235), (230, 240, 250))
    d = ImageDraw.Draw(im)
    d.ellipse((180, 24, 228, 72), fill=(250, 210, 70))
    d.ellipse((-60, 170, 200, 330), fill=(90, 160, 80))
    d.ellipse((110, 180, 360, 330), fill=(70, 140, 70))
    d.rectangle((70, 130, 160, 205), fill=(215, 120, 90))
    d.polygon([(60, 132), (115, 88), (170, 132)], fill=(140, 60, 50))
    d.rectangle((104, 165, 126, 205), fill=(90, 60, 40))
    for x in (80, 136):
        d.rectangle((x, 145, x + 16, 160), fill=(250, 240, 180))
    return im


def cat() -> Image.Image:
    """A content picture: a cat's face, flat shapes."""
    im = _gradient((245, 225, 200), (235, 200, 170))
    d = ImageDraw.Draw(im)
    d.polygon([(62, 110), (80, 40), (120, 90)], fill=(120, 120, 125))
    d.polygon([(194, 110), (176, 40), (136, 90)], fill=(120, 120, 125))
    d.ellipse((50, 70, 206, 220), fill=(140, 140, 145))
    for x in (95, 161):
        d.ellipse((x - 14, 120, x + 14, 150), fill=(120, 200, 90))
        d.ellipse((x - 4, 124, x + 4, 146), fill=(20, 20, 20))
    d.polygon([(120, 168), (136, 168), (128, 178)], fill=(230, 140, 150))
    for side in (-1, 1):
        for k in (-1, 0, 1):
            d.line((128 + side * 20, 180, 128 + side * 75, 175 + 10 * k), fill=(60, 60, 60), width=2)
    return im


def waves() -> Image.Image:
    """A style picture: banded waves in indigo and cream, with foam dots."""
    h = w = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(float)
    phase = np.sin(x / 18.0 + np.sin(y / 40.0) * 2.0) * 10 + y
    band = (phase / 22.0) % 1.0
    palette = np.array([(20, 40, 90), (40, 80, 140), (90, 140, 190), (235, 230, 210)], float)
    idx = np.clip((band * 4).astype(int), 0, 3)
    arr = palette[idx]
    rng = np.random.default_rng(3)
    im = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(140):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(2, 5)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(245, 242, 230))
    return im


def mosaic() -> Image.Image:
    """A style picture: a Voronoi mosaic of warm tiles with dark grout."""
    rng = np.random.default_rng(7)
    seeds = rng.random((60, 2)) * SIZE
    colours = rng.choice(np.array([(200, 80, 50), (230, 160, 60), (240, 210, 120), (90, 120, 80),
                                   (60, 90, 130), (180, 60, 90)], float), 60)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    dist = (x[..., None] - seeds[:, 0]) ** 2 + (y[..., None] - seeds[:, 1]) ** 2
    part = np.sort(dist, axis=-1)
    arr = colours[np.argmin(dist, axis=-1)]
    grout = (np.sqrt(part[..., 1]) - np.sqrt(part[..., 0])) < 2.5
    arr[grout] = (40, 35, 30)
    return Image.fromarray(arr.astype(np.uint8))


def ink() -> Image.Image:
    """A style picture: loose black brush strokes on warm paper."""
    rng = np.random.default_rng(11)
    im = Image.new("RGB", (SIZE, SIZE), (238, 228, 205))
    d = ImageDraw.Draw(im)
    for _ in range(26):
        x, y = rng.random(2) * SIZE
        angle = rng.random() * math.pi
        points = []
        for _step in range(12):
            angle += rng.normal(0, 0.25)
            x, y = x + 9 * math.cos(angle), y + 9 * math.sin(angle)
            points.append((x, y))
        d.line(points, fill=(25, 22, 20), width=int(rng.integers(2, 8)), joint="curve")
    return im.filter(ImageFilter.GaussianBlur(0.8))


def mug(variant: int) -> Image.Image:
    """A subject for personalization: the same red mug with a white star, three views."""
    backgrounds = [(225, 232, 240), (240, 228, 210), (214, 236, 214)]
    im = _gradient(backgrounds[variant], tuple(int(c * 0.85) for c in backgrounds[variant]))
    d = ImageDraw.Draw(im)
    dx = (-30, 0, 30)[variant]
    s = (1.0, 0.8, 1.15)[variant]

    def p(x, y):
        return 128 + dx + (x - 128) * s, 140 + (y - 140) * s
    d.ellipse((*p(60, 200), *p(196, 230)), fill=(120, 110, 100))               # shadow
    d.rectangle((*p(72, 80), *p(172, 210)), fill=(200, 40, 40))
    d.ellipse((*p(72, 66), *p(172, 94)), fill=(150, 25, 25))
    d.ellipse((*p(72, 196), *p(172, 222)), fill=(200, 40, 40))
    d.arc((*p(150, 105), *p(205, 175)), -90, 90, fill=(200, 40, 40), width=int(12 * s))
    cx, cy = p(122, 145)
    star = [(cx + (22 if k % 2 == 0 else 9) * s * math.sin(k * math.pi / 5),
             cy - (22 if k % 2 == 0 else 9) * s * math.cos(k * math.pi / 5)) for k in range(10)]
    d.polygon(star, fill=(250, 250, 245))
    return im


def leaf_icon() -> Image.Image:
    """An icon to vectorize: a green leaf in a circle, flat colours."""
    im = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.ellipse((24, 24, 232, 232), fill=(250, 220, 120))

    def lens(side: int) -> list[tuple[float, float]]:  # one half of the leaf, along its midrib
        pts = []
        for k in range(25):
            t = k / 24
            u, w = -70 + 140 * t, side * 42 * math.sin(math.pi * t) ** 0.8
            pts.append((128 + (u - w) / math.sqrt(2), 128 + (-u - w) / math.sqrt(2)))
        return pts
    d.polygon(lens(1) + lens(0)[::-1], fill=(60, 150, 70))
    d.polygon(lens(-1) + lens(0)[::-1], fill=(85, 180, 95))
    d.line((78, 178, 182, 74), fill=(30, 90, 40), width=5)
    return im


EXAMPLES = {
    "content-house.png": house, "content-cat.png": cat,
    "style-waves.png": waves, "style-mosaic.png": mosaic, "style-ink.png": ink,
    "subject-mug-1.png": lambda: mug(0), "subject-mug-2.png": lambda: mug(1),
    "subject-mug-3.png": lambda: mug(2), "icon-leaf.png": leaf_icon,
}


def path(name: str) -> str:
    """The committed example file `name` (as the tabs' Examples use it)."""
    return str(HERE / name)


def main() -> None:
    for name, draw in EXAMPLES.items():
        draw().save(HERE / name, optimize=True)
        print(name)


if __name__ == "__main__":
    main()
