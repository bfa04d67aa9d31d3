"""The geometric primitives both rasterizer paths share (rasterizer.py, one shape at a time;
raster_batched.py, all shapes at once): the Bernstein basis of a cubic, the box-filter
response of a half-plane, range expansion, nearest-edge picking, the signed distance to an
edge, and a shape's pixel box. Kept apart so that neither path imports the other's internals."""
from __future__ import annotations

import math

import numpy as np
import torch

MAX_EDGE = 4.0        # longest polyline edge, px: bounds the (edge, pixel) pairs per edge
REACH = 1.0           # pixels farther than this from every edge are fully in or out
MAX_PIECES = 256


def bernstein(t: np.ndarray) -> np.ndarray:
    s = 1.0 - t
    return np.stack([s ** 3, 3 * s * s * t, 3 * s * t * t, t ** 3], axis=1)


def box_cdf(x: torch.Tensor, nx: torch.Tensor, ny: torch.Tensor) -> torch.Tensor:
    """P(X <= x) for X the projection of a uniform unit pixel square onto the unit normal.

    X = |nx| u + |ny| v with u, v ~ U(-1/2, 1/2): a trapezoidal density, so the CDF is
    quadratic on the ramps and linear in the middle. F(signed distance) is the area of a pixel
    on the inside of a straight edge.
    """
    a = torch.maximum(nx.abs(), ny.abs())
    b = torch.minimum(nx.abs(), ny.abs())
    h, k = 0.5 * (a + b), 0.5 * (a - b)
    ab2 = (2 * a * b).clamp_min(1e-6)
    lo = (x + h).clamp_min(0) ** 2 / ab2
    hi = 1 - (h - x).clamp_min(0) ** 2 / ab2
    mid = 0.5 + x / a
    return torch.where(x < -k, lo, torch.where(x > k, hi, mid)).clamp(0, 1)


def index_ranges(lo: torch.Tensor, hi: torch.Tensor):
    """Expand integer ranges [lo, hi) into (owner index, value) pairs."""
    cnt = (hi - lo).clamp_min(0)
    owner = torch.repeat_interleave(torch.arange(len(lo), device=lo.device), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    value = lo[owner] + torch.arange(len(owner), device=lo.device) - start[owner]
    return owner, value


def pick_nearest(pix, masked, n_pix, reach2):
    """Per pixel, the pair with the smallest finite `masked` distance below reach2 (-1: none)."""
    dmin = torch.full((n_pix,), math.inf, device=masked.device, dtype=masked.dtype)
    dmin.scatter_reduce_(0, pix, masked, "amin")
    win = (masked <= dmin[pix]) & (masked < reach2)
    pair = torch.arange(len(pix), device=pix.device)
    best = torch.full((n_pix,), -1, device=pix.device, dtype=torch.long)
    best.scatter_reduce_(0, pix[win], pair[win], "amax")
    return best


def signed_distance(A, B, e, q, side, inside, interior):
    """Differentiable signed distance (positive on the filled side) of points q to edges e."""
    Ae, Be = A[e], B[e]
    dv = Be - Ae
    rel = q - Ae
    length = (dv * dv).sum(1).clamp_min(1e-12).sqrt()
    sd_perp = side * (dv[:, 0] * rel[:, 1] - dv[:, 1] * rel[:, 0]) / length
    tt = ((rel * dv).sum(1) / (length * length)).clamp(0, 1)
    sd_end = inside * (((rel - tt[:, None] * dv) ** 2).sum(1) + 1e-12).sqrt()
    return torch.where(interior, sd_perp, sd_end)


def pixel_box(lo, hi, pad, W, H):
    x0 = max(0, int(math.floor(lo[0] - pad)))
    y0 = max(0, int(math.floor(lo[1] - pad)))
    x1 = min(W, int(math.ceil(hi[0] + pad)))
    y1 = min(H, int(math.ceil(hi[1] + pad)))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)
