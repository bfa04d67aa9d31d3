"""The vector scene: shapes made of cubic Bezier chains, painted in order.

A `Shape` is what SVG calls one path element: one or more subpaths (each a chain of cubic
Bezier segments, closed or open), a fill (RGBA, straight alpha, nonzero or even-odd rule) and
an optional stroke (RGBA and full width, as SVG writes it). All geometry is in the scene's
user units: `Scene.width` x `Scene.height` (an SVG viewBox whose origin is moved to 0,0).

Control points of one subpath are stored once: a closed subpath of n segments has 3n points
(P0 C0 D0 P1 C1 D1 ... and the last segment ends at P0), an open one 3n + 1. Lines and
quadratic segments are converted to cubics exactly when they are read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

FILL_RULES = ("nonzero", "evenodd")


@dataclass
class Shape:
    points: torch.Tensor                        # [M, 2] control points of all subpaths
    subpaths: list[tuple[int, bool]]            # (number of cubic segments, closed) per subpath
    fill: torch.Tensor | None = None            # [4] RGBA in [0, 1], straight alpha
    stroke: torch.Tensor | None = None          # [4] RGBA
    stroke_width: torch.Tensor | None = None    # scalar, the full SVG width
    fill_rule: str = "nonzero"
    stroke_cap: str = "round"                   # round | butt | square (joins are always round)

    def __post_init__(self):
        if self.fill_rule not in FILL_RULES:
            raise ValueError(f"fill_rule must be one of {FILL_RULES}, not {self.fill_rule!r}")
        expected = sum(3 * n + (0 if closed else 1) for n, closed in self.subpaths)
        if self.points.shape != (expected, 2):
            raise ValueError(f"points has shape {tuple(self.points.shape)}; the subpaths "
                             f"{self.subpaths} need ({expected}, 2)")

    @property
    def num_segments(self) -> int:
        return sum(n for n, _ in self.subpaths)

    def segment_index(self) -> np.ndarray:
        """[S, 4] indices into `points` of each cubic segment's control points."""
        rows, offset = [], 0
        for n, closed in self.subpaths:
            count = 3 * n + (0 if closed else 1)
            for k in range(n):
                rows.append([offset + 3 * k, offset + 3 * k + 1, offset + 3 * k + 2,
                             offset + (3 * k + 3) % count if closed else offset + 3 * k + 3])
            offset += count
        return np.asarray(rows, dtype=np.int64).reshape(-1, 4)

    def segments(self) -> torch.Tensor:
        """[S, 4, 2] control points per cubic segment (differentiable gather)."""
        idx = torch.as_tensor(self.segment_index(), device=self.points.device)
        return self.points[idx]

    def parameters(self) -> list[torch.Tensor]:
        return [t for t in (self.points, self.fill, self.stroke, self.stroke_width) if t is not None]

    def to(self, device=None, dtype=None) -> "Shape":
        def mv(t):
            return None if t is None else t.detach().to(device=device, dtype=dtype)
        return Shape(mv(self.points), list(self.subpaths), mv(self.fill), mv(self.stroke),
                     mv(self.stroke_width), self.fill_rule, self.stroke_cap)

    def clone(self) -> "Shape":
        """A copy with tensors of its own (detached): changing one never changes the other."""
        def cp(t):
            return None if t is None else t.detach().clone()
        return Shape(cp(self.points), list(self.subpaths), cp(self.fill), cp(self.stroke),
                     cp(self.stroke_width), self.fill_rule, self.stroke_cap)


@dataclass
class Scene:
    width: float
    height: float
    shapes: list[Shape] = field(default_factory=list)
    background: tuple[float, float, float] | None = None   # RGB in [0, 1]; None: transparent

    def parameters(self) -> list[torch.Tensor]:
        return [p for s in self.shapes for p in s.parameters()]

    def to(self, device=None, dtype=None) -> "Scene":
        return Scene(self.width, self.height, [s.to(device, dtype) for s in self.shapes],
                     self.background)

    def clone(self) -> "Scene":
        """A copy with tensors of its own (`to` shares them when nothing moves)."""
        return Scene(self.width, self.height, [s.clone() for s in self.shapes], self.background)


def _t(values, device=None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)


def circle_shape(center, radius: float, fill=(0, 0, 0, 1), segments: int = 4,
                 device=None) -> Shape:
    """A closed cubic chain approximating a circle (kappa = 4/3 tan(pi / 2n))."""
    cx, cy = float(center[0]), float(center[1])
    k = 4.0 / 3.0 * math.tan(math.pi / (2 * segments))
    pts = []
    for i in range(segments):
        a0 = 2 * math.pi * i / segments
        a1 = 2 * math.pi * (i + 1) / segments
        p0 = (cx + radius * math.cos(a0), cy + radius * math.sin(a0))
        p1 = (cx + radius * math.cos(a1), cy + radius * math.sin(a1))
        c0 = (p0[0] - k * radius * math.sin(a0), p0[1] + k * radius * math.cos(a0))
        c1 = (p1[0] + k * radius * math.sin(a1), p1[1] - k * radius * math.cos(a1))
        pts += [p0, c0, c1]
    return Shape(_t(pts, device), [(segments, True)], fill=_t(fill, device))


def polygon_shape(vertices, fill=(0, 0, 0, 1), closed: bool = True, stroke=None,
                  stroke_width: float | None = None, fill_rule: str = "nonzero",
                  device=None) -> Shape:
    """Straight-edged polygon/polyline as exact cubic segments (controls at 1/3 and 2/3)."""
    v = np.asarray(vertices, dtype=np.float64)
    n = len(v) if closed else len(v) - 1
    pts = []
    for i in range(n):
        a, b = v[i], v[(i + 1) % len(v)]
        pts += [a, a + (b - a) / 3.0, a + 2.0 * (b - a) / 3.0]
    if not closed:
        pts.append(v[-1])
    return Shape(_t(pts, device), [(n, closed)],
                 fill=None if fill is None else _t(fill, device),
                 stroke=None if stroke is None else _t(stroke, device),
                 stroke_width=None if stroke_width is None else _t(stroke_width, device),
                 fill_rule=fill_rule)


def shape_area(shape: Shape) -> float:
    """Area (px^2) of the control polygon of each subpath, summed (shoelace formula)."""
    p = shape.points.detach().double().cpu().numpy()
    total, o = 0.0, 0
    for n, closed in shape.subpaths:
        q = p[o:o + 3 * n + (0 if closed else 1)]
        total += abs(0.5 * np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1]))
        o += len(q)
    return total
