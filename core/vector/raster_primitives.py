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
    """The pixels (x, y, w, h) a shape with bounds lo..hi can touch, `pad` more on each side;
    None when that is no pixel, or when a bound is not finite (a control point became NaN or
    infinite, e.g. after an optimiser step blew up: such a shape is not drawn)."""
    if not all(math.isfinite(float(v)) for v in (lo[0], lo[1], hi[0], hi[1], pad)):
        return None
    x0 = max(0, int(math.floor(lo[0] - pad)))
    y0 = max(0, int(math.floor(lo[1] - pad)))
    x1 = min(W, int(math.ceil(hi[0] + pad)))
    y1 = min(H, int(math.ceil(hi[1] + pad)))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def boundary_coverage(A, B, a, b, e, pix, q, filled, f_left_e, relevant_e, n_pix):
    """Box-filtered coverage of `n_pix` flat pixels (both rasterizer paths): `filled` (flat,
    bool) away from edges; near a boundary F(signed distance) to the nearest relevant edge of
    each (edge `e`, pixel `pix`, centre `q`) pair, combined with a facing partner edge (a sliver
    or gap thinner than a pixel: F1 + F2 - 1 or F1 + F2) or a turned one (a corner: F1 F2 convex,
    F1 + F2 - F1 F2 concave). `a`, `b` are the edges without grad, `A`, `B` with it; `f_left_e`,
    `relevant_e` per edge: which side is filled and whether filled-ness changes across it.
    Returns (coverage, the boundary pixels' indices)."""
    with torch.no_grad():
        ae, d = a[e], (b - a)[e]
        rel = q - ae
        len2 = (d * d).sum(1).clamp_min(1e-12)
        t = ((rel * d).sum(1) / len2).clamp(0, 1)
        near = ae + t[:, None] * d
        dist2 = ((q - near) ** 2).sum(1)
        relevant, f_left = relevant_e[e] & (len2 > 1e-10), f_left_e[e]   # no degenerate edges
        side = torch.where(f_left, 1.0, -1.0).to(a.dtype)
        normal = side[:, None] * torch.stack([-d[:, 1], d[:, 0]], 1) / len2.sqrt()[:, None]
        inf = torch.full_like(dist2, math.inf)
        best = pick_nearest(pix, torch.where(relevant, dist2, inf), n_pix, REACH * REACH)
        has1 = best >= 0
        p1_of_pair = best[pix]
        n1 = normal[p1_of_pair.clamp_min(0)]
        # the filled-side normal of a pair is only trustworthy where q projects inside the edge
        inner = (t > 0) & (t < 1)
        p1_inner = inner[p1_of_pair.clamp_min(0)] & (p1_of_pair >= 0)
        opposed = relevant & inner & p1_inner & ((normal * n1).sum(1) < -0.5)
        best2 = pick_nearest(pix, torch.where(opposed, dist2, inf), n_pix, REACH * REACH)
        # a corner partner: a relevant edge turning by 25..120 degrees from the nearest one
        dot = (normal * n1).sum(1)
        turned = relevant & (p1_of_pair >= 0) & (dot >= -0.5) & (dot < 0.9)
        best3 = pick_nearest(pix, torch.where(turned, dist2, inf), n_pix, REACH * REACH)
        sel = torch.nonzero(has1).squeeze(1)
        p = best[sel]
        inside = torch.where(filled[sel], 1.0, -1.0).to(a.dtype)
        two = best2[sel] >= 0
        sel2 = torch.nonzero(two).squeeze(1)
        p2 = best2[sel][sel2]
        gap_dir = (normal[p[sel2]] * (near[p2] - near[p[sel2]])).sum(1)
        # coincident opposite edges (a zero-width spike or cut): q's own status decides
        sliver = (gap_dir > 1e-4) | ((gap_dir.abs() <= 1e-4) & (inside[sel2] < 0))
        sel3 = torch.nonzero(~two & (best3[sel] >= 0)).squeeze(1)
        p3 = best3[sel][sel3]
        p1c = p[sel3]
        mid3 = ae[p3] + 0.5 * d[p3]
        convex = (normal[p1c] * (mid3 - ae[p1c])).sum(1) > 0
    base = filled.to(A.dtype)
    if len(sel) == 0:
        return base, sel
    interior = (t[p] > 0) & (t[p] < 1)
    sd = signed_distance(A, B, e[p], q[p], side[p], inside, interior)
    dn = d[p] / len2[p].sqrt()[:, None]
    cov = box_cdf(sd, -dn[:, 1], dn[:, 0])
    if len(sel2):
        interior2 = (t[p2] > 0) & (t[p2] < 1)
        sd2 = signed_distance(A, B, e[p2], q[p2], side[p2], inside[sel2], interior2)
        dn2 = d[p2] / len2[p2].sqrt()[:, None]
        cov2 = box_cdf(sd2, -dn2[:, 1], dn2[:, 0])
        both = cov[sel2] + cov2 - torch.where(sliver, 1.0, 0.0).to(cov.dtype)
        cov = cov.index_put((sel2,), both.clamp(0, 1))
    if len(sel3):
        # corners: both edges' lines, as half-planes; intersection (convex) or union (concave)
        ones = torch.ones(len(sel3), dtype=A.dtype, device=A.device)
        fa = box_cdf(signed_distance(A, B, e[p1c], q[p1c], side[p1c], ones, ones > 0),
                     -dn[sel3, 1], dn[sel3, 0])
        dn3 = d[p3] / len2[p3].sqrt()[:, None]
        fb = box_cdf(signed_distance(A, B, e[p3], q[p3], side[p3], ones, ones > 0),
                     -dn3[:, 1], dn3[:, 0])
        cov = cov.index_put((sel3,), torch.where(convex, fa * fb, fa + fb - fa * fb))
    return base.index_put((sel,), cov), sel
