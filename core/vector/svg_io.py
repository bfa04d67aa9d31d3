"""SVG in and out: the subset icon sets use, read safely, written cleanly.

Reading (`parse_svg`):
- XML goes through defusedxml: no entity expansion, no external entities or DTDs fetched,
  nothing read from disk or the network. Malformed XML, entities, huge or non-finite
  coordinates and oversized documents raise `UserError` with what is wrong.
- Elements: path (every command, absolute and relative, arcs converted to cubics), rect
  (rounded too), circle, ellipse, line, polyline, polygon, nested g/a/svg with transforms
  (matrix, translate, scale, rotate, skewX, skewY). Paint: fill, fill-opacity, fill-rule,
  stroke, stroke-opacity, stroke-width, opacity (folded into fill and stroke alpha), color /
  currentColor, the style attribute, and colors in every CSS form (#rgb, #rgba, #rrggbb,
  #rrggbbaa, rgb(), rgba(), hsl(), hsla(), named colors, transparent).
- <use> of an element in the same document (href="#id", x/y offset; no external files).
- Not supported, skipped with a logged warning: text, image, CSS style sheets,
  clip paths and masks; a gradient paint becomes the mean of its stop colors.
- Strokes: butt, round and square caps; joins are always drawn round (the rasterizer's
  distance-based stroke), so SVG's default miter joins differ at sharp corners (logged).

Writing (`scene_to_svg`): a viewBox, one <path> per shape, hex colors with *-opacity, fill-rule
when even-odd, round joins and the shape's caps on strokes, so cairosvg renders what our
rasterizer does.
"""
from __future__ import annotations

import colorsys
import logging
import math
import re

import numpy as np
import torch
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from PIL import ImageColor

from ..errors import UserError
from .scene import Scene, Shape

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 2**20
MAX_SHAPES = 20_000
MAX_SEGMENTS = 1_000_000
MAX_COORD = 1e7
KAPPA = 0.5522847498307936

_SKIP_QUIET = {"defs", "title", "desc", "metadata", "linearGradient", "radialGradient",
               "stop", "symbol", "namedview", "sodipodi:namedview", "pattern", "marker", "filter"}
_GROUPS = {"g", "a", "svg", "switch", "symbol"}
_INHERITED = ("fill", "fill-opacity", "fill-rule", "stroke", "stroke-opacity",
              "stroke-width", "stroke-linecap", "stroke-linejoin", "color", "visibility", "display")


# ----------------------------------------------------------------------------- numbers

_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _num(text, default=None, what="number"):
    if text is None:
        return default
    m = _NUM.match(text.strip())
    if not m:
        if default is not None:
            return default
        raise UserError(f"The SVG has an invalid {what}: {text[:40]!r}.")
    return _check(float(m.group(0)))


def _check(v: float) -> float:
    if not math.isfinite(v):
        raise UserError("The SVG contains a non-finite coordinate (inf or NaN).")
    if abs(v) > MAX_COORD:
        raise UserError(f"The SVG contains a huge coordinate ({v:g}); the limit is {MAX_COORD:g}.")
    return v


def _numbers(text: str) -> list[float]:
    return [_check(float(x)) for x in _NUM.findall(text or "")]


# ----------------------------------------------------------------------------- colors

def parse_color(text: str, current=(0.0, 0.0, 0.0, 1.0)):
    """CSS color -> RGBA floats in [0, 1]; None for 'none'. Raises ValueError if unknown."""
    s = text.strip().lower()
    if s in ("none", ""):
        return None
    if s == "transparent":
        return (0.0, 0.0, 0.0, 0.0)
    if s == "currentcolor":
        return current
    if s.startswith("#"):
        h = s[1:]
        if not re.fullmatch(r"[0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8}", h):
            raise ValueError(f"bad hex color {text!r}")
        if len(h) in (3, 4):
            h = "".join(c * 2 for c in h)
        vals = [int(h[i:i + 2], 16) / 255 for i in range(0, len(h), 2)]
        return tuple(vals) if len(vals) == 4 else (*vals, 1.0)
    m = re.fullmatch(r"(rgba?|hsla?)\((.*)\)", s)
    if m:
        parts = [p for p in re.split(r"[\s,/]+", m.group(2).strip()) if p]
        if len(parts) not in (3, 4):
            raise ValueError(f"bad color {text!r}")

        def comp(p, scale):
            v = float(p.rstrip("%").replace("deg", ""))
            return v / 100 if p.endswith("%") else v / scale

        alpha = min(max(comp(parts[3], 1), 0), 1) if len(parts) == 4 else 1.0
        if m.group(1).startswith("rgb"):
            rgb = [min(max(comp(p, 255), 0), 1) for p in parts[:3]]
        else:
            hue = float(parts[0].replace("deg", "")) / 360 % 1
            sat, light = comp(parts[1], 100), comp(parts[2], 100)
            rgb = colorsys.hls_to_rgb(hue, min(max(light, 0), 1), min(max(sat, 0), 1))
        return (*rgb, alpha)
    if s in ImageColor.colormap:
        r, g, b = ImageColor.getrgb(s)[:3]
        return (r / 255, g / 255, b / 255, 1.0)
    raise ValueError(f"unknown color {text!r}")


# ----------------------------------------------------------------------------- transforms

def parse_transform(text: str | None) -> np.ndarray:
    m = np.eye(3)
    if not text:
        return m
    for name, args in re.findall(r"(\w+)\s*\(([^)]*)\)", text):
        v = _numbers(args)
        t = np.eye(3)
        try:
            if name == "matrix":
                t[:2, :] = np.array(v[:6]).reshape(3, 2).T
            elif name == "translate":
                t[0, 2], t[1, 2] = v[0], (v[1] if len(v) > 1 else 0.0)
            elif name == "scale":
                t[0, 0], t[1, 1] = v[0], (v[1] if len(v) > 1 else v[0])
            elif name == "rotate":
                a = math.radians(v[0])
                r = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
                if len(v) >= 3:
                    tr, back = np.eye(3), np.eye(3)
                    tr[:2, 2], back[:2, 2] = (v[1], v[2]), (-v[1], -v[2])
                    r = tr @ r @ back
                t = r
            elif name == "skewX":
                t[0, 1] = math.tan(math.radians(v[0]))
            elif name == "skewY":
                t[1, 0] = math.tan(math.radians(v[0]))
            else:
                raise UserError(f"The SVG has an unknown transform {name!r}.")
        except IndexError:
            raise UserError(f"The SVG transform {name}({args}) is missing numbers.") from None
        m = m @ t
    return m


# ----------------------------------------------------------------------------- path data

class _PathBuilder:
    """Collects subpaths as cubic segments [(p0, c1, c2, p3), ...]."""

    def __init__(self):
        self.subpaths: list[tuple[list, bool]] = []
        self.segs: list = []
        self.start = self.cur = np.zeros(2)

    def move(self, p):
        self.finish(False)
        self.start = self.cur = np.asarray(p, float)

    def cubic(self, c1, c2, p):
        p = np.asarray(p, float)
        self.segs.append((self.cur, np.asarray(c1, float), np.asarray(c2, float), p))
        self.cur = p

    def line(self, p):
        p = np.asarray(p, float)
        self.cubic(self.cur + (p - self.cur) / 3, self.cur + 2 * (p - self.cur) / 3, p)

    def quad(self, c, p):
        c, p = np.asarray(c, float), np.asarray(p, float)
        self.cubic(self.cur + 2 / 3 * (c - self.cur), p + 2 / 3 * (c - p), p)

    def close(self):
        if self.segs and np.linalg.norm(self.cur - self.start) > 1e-9:
            self.line(self.start)
        if self.segs:
            s = self.segs[-1]
            self.segs[-1] = (s[0], s[1], s[2], self.start.copy())
        self.finish(True)
        self.cur = self.start

    def finish(self, closed):
        if self.segs:
            self.subpaths.append((self.segs, closed))
        self.segs = []

    def arc(self, rx, ry, phi, large, sweep, p):
        p = np.asarray(p, float)
        p1 = self.cur
        if np.allclose(p1, p):
            return
        rx, ry = abs(rx), abs(ry)
        if rx == 0 or ry == 0:
            self.line(p)
            return
        phi = math.radians(phi % 360)
        cp, sp = math.cos(phi), math.sin(phi)
        dx, dy = (p1 - p) / 2
        x1, y1 = cp * dx + sp * dy, -sp * dx + cp * dy
        lam = x1 * x1 / (rx * rx) + y1 * y1 / (ry * ry)
        if lam > 1:
            rx, ry = rx * math.sqrt(lam), ry * math.sqrt(lam)
        num = rx * rx * ry * ry - rx * rx * y1 * y1 - ry * ry * x1 * x1
        den = rx * rx * y1 * y1 + ry * ry * x1 * x1
        coef = math.sqrt(max(0.0, num / den)) if den > 0 else 0.0
        if large == sweep:
            coef = -coef
        cxp, cyp = coef * rx * y1 / ry, -coef * ry * x1 / rx
        mid = (p1 + p) / 2
        center = np.array([cp * cxp - sp * cyp, sp * cxp + cp * cyp]) + mid

        def ang(ux, uy, vx, vy):
            return math.atan2(ux * vy - uy * vx, ux * vx + uy * vy)

        t1 = ang(1, 0, (x1 - cxp) / rx, (y1 - cyp) / ry)
        dt = ang((x1 - cxp) / rx, (y1 - cyp) / ry, (-x1 - cxp) / rx, (-y1 - cyp) / ry)
        if not sweep and dt > 0:
            dt -= 2 * math.pi
        elif sweep and dt < 0:
            dt += 2 * math.pi
        n = max(1, math.ceil(abs(dt) / (math.pi / 2) - 1e-9))
        step = dt / n
        k = 4 / 3 * math.tan(step / 4)
        rot = np.array([[cp, -sp], [sp, cp]])

        def pt(x, y):
            return center + rot @ np.array([rx * x, ry * y])

        for i in range(n):
            a, b = t1 + i * step, t1 + (i + 1) * step
            end = p if i == n - 1 else pt(math.cos(b), math.sin(b))
            self.cubic(pt(math.cos(a) - k * math.sin(a), math.sin(a) + k * math.cos(a)),
                       pt(math.cos(b) + k * math.sin(b), math.sin(b) - k * math.cos(b)), end)


_CMD = re.compile(r"[MmLlHhVvCcSsQqTtAaZz]")
_ARGS = {"m": 2, "l": 2, "h": 1, "v": 1, "c": 6, "s": 4, "q": 4, "t": 2, "a": 7, "z": 0}


def _tokens(d: str):
    """Yield commands and numbers; arc flags may be written without separators ('a1 1 0 00 1 1')."""
    i, n = 0, len(d)
    cmd, argi = None, 0
    while i < n:
        c = d[i]
        if c in " \t\r\n,":
            i += 1
            continue
        if _CMD.match(c):
            cmd, argi = c.lower(), 0
            yield c
            i += 1
            continue
        if cmd == "a" and argi % 7 in (3, 4) and c in "01":
            yield float(c)
            argi += 1
            i += 1
            continue
        m = _NUM.match(d, i)
        if not m:
            raise UserError(f"The SVG path data has an unexpected character {c!r} at {i}: "
                            f"{d[max(0, i - 10):i + 10]!r}.")
        yield _check(float(m.group(0)))
        argi += 1
        i = m.end()


def parse_path_data(d: str) -> _PathBuilder:
    pb = _PathBuilder()
    toks = list(_tokens(d or ""))
    i, cmd, last_ctrl, last_cmd = 0, None, None, ""
    while i < len(toks):
        tok = toks[i]
        if isinstance(tok, str):
            cmd = tok
            i += 1
            if cmd in "Zz":
                pb.close()
                last_ctrl, last_cmd = None, "z"
                continue
        elif cmd is None:
            raise UserError("The SVG path data does not start with a command (M).")
        elif cmd in "Zz":
            raise UserError("The SVG path data has numbers after Z.")
        k = _ARGS[cmd.lower()]
        args = toks[i:i + k]
        if len(args) < k or any(isinstance(a, str) for a in args):
            raise UserError(f"The SVG path command {cmd!r} is missing numbers.")
        i += k
        rel = cmd.islower()
        c = cmd.lower()
        o = pb.cur if rel else np.zeros(2)
        if c == "m":
            pb.move(o + args[:2])
            cmd = "l" if rel else "L"          # further pairs are implicit line-tos
            last_ctrl = None
        elif c == "l":
            pb.line(o + args[:2])
            last_ctrl = None
        elif c == "h":
            pb.line((args[0] + (pb.cur[0] if rel else 0), pb.cur[1]))
            last_ctrl = None
        elif c == "v":
            pb.line((pb.cur[0], args[0] + (pb.cur[1] if rel else 0)))
            last_ctrl = None
        elif c == "c":
            c2 = o + args[2:4]
            pb.cubic(o + args[0:2], c2, o + args[4:6])
            last_ctrl = c2
        elif c == "s":
            c1 = 2 * pb.cur - last_ctrl if last_cmd in "cs" and last_ctrl is not None else pb.cur
            c2 = o + args[0:2]
            pb.cubic(c1, c2, o + args[2:4])
            last_ctrl = c2
        elif c == "q":
            q = o + args[0:2]
            pb.quad(q, o + args[2:4])
            last_ctrl = q
        elif c == "t":
            q = 2 * pb.cur - last_ctrl if last_cmd in "qt" and last_ctrl is not None else pb.cur
            pb.quad(q, o + args[0:2])
            last_ctrl = q
        elif c == "a":
            pb.arc(args[0], args[1], args[2], bool(args[3]), bool(args[4]), o + args[5:7])
            last_ctrl = None
        last_cmd = c
    pb.finish(False)
    return pb


# ----------------------------------------------------------------------------- elements

def _ellipse(pb, cx, cy, rx, ry):
    k = KAPPA
    pb.move((cx + rx, cy))
    pb.cubic((cx + rx, cy + k * ry), (cx + k * rx, cy + ry), (cx, cy + ry))
    pb.cubic((cx - k * rx, cy + ry), (cx - rx, cy + k * ry), (cx - rx, cy))
    pb.cubic((cx - rx, cy - k * ry), (cx - k * rx, cy - ry), (cx, cy - ry))
    pb.cubic((cx + k * rx, cy - ry), (cx + rx, cy - k * ry), (cx + rx, cy))
    pb.close()


def _geometry(tag, el) -> _PathBuilder | None:
    g = lambda name, default=0.0: _num(el.get(name), default, f"{tag} {name}")  # noqa: E731
    pb = _PathBuilder()
    if tag == "path":
        return parse_path_data(el.get("d", ""))
    if tag == "rect":
        x, y, w, h = g("x"), g("y"), g("width"), g("height")
        if w <= 0 or h <= 0:
            return None
        rx, ry = el.get("rx"), el.get("ry")
        rx = _num(rx, None) if rx not in (None, "auto") else None
        ry = _num(ry, None) if ry not in (None, "auto") else None
        rx = ry if rx is None else rx
        ry = rx if ry is None else ry
        rx, ry = min(max(rx or 0, 0), w / 2), min(max(ry or 0, 0), h / 2)
        if rx > 0 and ry > 0:
            pb.move((x + rx, y))
            pb.line((x + w - rx, y))
            pb.arc(rx, ry, 0, False, True, (x + w, y + ry))
            pb.line((x + w, y + h - ry))
            pb.arc(rx, ry, 0, False, True, (x + w - rx, y + h))
            pb.line((x + rx, y + h))
            pb.arc(rx, ry, 0, False, True, (x, y + h - ry))
            pb.line((x, y + ry))
            pb.arc(rx, ry, 0, False, True, (x + rx, y))
        else:
            pb.move((x, y)); pb.line((x + w, y)); pb.line((x + w, y + h)); pb.line((x, y + h))
        pb.close()
    elif tag == "circle":
        r = g("r")
        if r <= 0:
            return None
        _ellipse(pb, g("cx"), g("cy"), r, r)
    elif tag == "ellipse":
        rx, ry = g("rx"), g("ry")
        if rx <= 0 or ry <= 0:
            return None
        _ellipse(pb, g("cx"), g("cy"), rx, ry)
    elif tag == "line":
        pb.move((g("x1"), g("y1")))
        pb.line((g("x2"), g("y2")))
        pb.finish(False)
    elif tag in ("polyline", "polygon"):
        v = _numbers(el.get("points", ""))
        if len(v) < 4:
            return None
        pts = np.array(v[: len(v) // 2 * 2]).reshape(-1, 2)
        pb.move(pts[0])
        for p in pts[1:]:
            pb.line(p)
        if tag == "polygon":
            pb.close()
        else:
            pb.finish(False)
    return pb


def _style(el) -> dict:
    props = {k: v for k, v in el.attrib.items()}
    for decl in (el.get("style") or "").split(";"):
        if ":" in decl:
            k, v = decl.split(":", 1)
            props[k.strip()] = v.replace("!important", "").strip()
    return props


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


class _Reader:
    def __init__(self, root):
        self.ids = {el.get("id"): el for el in root.iter() if el.get("id")}
        self.shapes: list[Shape] = []
        self.segments = 0
        self.warned: set[str] = set()
        self.using: list = []

    def warn(self, msg):
        if msg not in self.warned:
            self.warned.add(msg)
            log.warning("SVG: %s", msg)

    def paint(self, value, current, what):
        if value is None:
            return None
        v = value.strip()
        if v.startswith("url("):
            ref = re.match(r"url\(\s*['\"]?#([^)'\"]+)['\"]?\s*\)\s*(.*)", v)
            grad = self.ids.get(ref.group(1)) if ref else None
            if grad is not None and _local(grad.tag).endswith("Gradient"):
                cols = []
                for stop in grad.iter():
                    if _local(stop.tag) == "stop":
                        st = _style(stop)
                        try:
                            c = parse_color(st.get("stop-color", "black"), current)
                        except ValueError:
                            continue
                        if c is not None:
                            op = _num(st.get("stop-opacity"), 1.0)
                            cols.append((*c[:3], c[3] * op))
                if cols:
                    self.warn(f"gradient {what} approximated by the mean of its stop colors")
                    return tuple(np.mean(np.array(cols), 0).tolist())
            if ref and ref.group(2):
                return self.paint(ref.group(2), current, what)
            self.warn(f"unsupported {what} paint {v[:40]!r} skipped")
            return None
        try:
            return parse_color(v, current)
        except ValueError:
            self.warn(f"unknown {what} color {v[:40]!r}; using black")
            return (0.0, 0.0, 0.0, 1.0)

    def walk(self, el, matrix, inherited, opacity, referenced=False):
        tag = _local(el.tag)
        if not tag or (tag in _SKIP_QUIET and not (referenced and tag == "symbol")):
            return
        props = dict(inherited)
        own = _style(el)
        props.update({k: own[k] for k in _INHERITED if k in own})
        if props.get("display", "").strip() == "none":
            return
        opacity *= min(max(_num(own.get("opacity"), 1.0), 0.0), 1.0)
        m = matrix @ parse_transform(el.get("transform"))
        if tag in _GROUPS:
            if tag == "svg" and el is not self.root:
                tr = np.eye(3)
                tr[:2, 2] = (_num(el.get("x"), 0.0), _num(el.get("y"), 0.0))
                m = m @ tr
            for child in el:
                self.walk(child, m, props, opacity)
            return
        if tag == "use":
            ref = (el.get("href") or el.get("{http://www.w3.org/1999/xlink}href") or "").strip()
            target = self.ids.get(ref[1:]) if ref.startswith("#") else None
            if target is None or target in self.using or len(self.using) > 8:
                self.warn(f"<use> of {ref[:40]!r} skipped (only in-document references, no cycles)")
                return
            tr = np.eye(3)
            tr[:2, 2] = (_num(el.get("x"), 0.0), _num(el.get("y"), 0.0))
            self.using.append(target)
            try:
                self.walk(target, m @ tr, props, opacity, referenced=True)
            finally:
                self.using.pop()
            return
        if tag not in ("path", "rect", "circle", "ellipse", "line", "polyline", "polygon"):
            self.warn(f"<{tag}> is not supported and was skipped")
            return
        if props.get("visibility", "visible").strip() in ("hidden", "collapse"):
            return
        pb = _geometry(tag, el)
        if pb is None or not pb.subpaths:
            return
        current = self.paint(props.get("color", "black"), (0, 0, 0, 1), "color") or (0, 0, 0, 1)
        fill = self.paint(props.get("fill", "black"), current, "fill")
        stroke = self.paint(props.get("stroke", "none"), current, "stroke")
        width = _num(props.get("stroke-width"), 1.0)
        if fill is not None:
            fill = (*fill[:3], fill[3] * opacity * min(max(_num(props.get("fill-opacity"), 1.0), 0), 1))
        if stroke is not None:
            stroke = (*stroke[:3], stroke[3] * opacity * min(max(_num(props.get("stroke-opacity"), 1.0), 0), 1))
        if stroke is not None and width <= 0:
            stroke = None
        if tag in ("line", "polyline"):
            fill = fill if tag == "polyline" else None
        if fill is None and stroke is None:
            return
        pts, subs = [], []
        for segs, closed in pb.subpaths:
            for s in segs:
                pts += [s[0], s[1], s[2]]
            if not closed:
                pts.append(segs[-1][3])
            subs.append((len(segs), closed))
        p = np.asarray(pts, float)
        p = p @ m[:2, :2].T + m[:2, 2]
        if not np.isfinite(p).all() or np.abs(p).max() > MAX_COORD:
            raise UserError("The SVG has huge or non-finite coordinates after its transforms.")
        self.segments += sum(n for n, _ in subs)
        if self.segments > MAX_SEGMENTS or len(self.shapes) >= MAX_SHAPES:
            raise UserError(f"The SVG is too complex (more than {MAX_SHAPES} shapes or "
                            f"{MAX_SEGMENTS} segments).")
        f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))
        rule = "evenodd" if props.get("fill-rule", "nonzero").strip() == "evenodd" else "nonzero"
        cap = props.get("stroke-linecap", "butt").strip()
        cap = cap if cap in ("butt", "round", "square") else "butt"
        if stroke is not None and props.get("stroke-linejoin", "miter").strip() != "round":
            self.warn("stroke joins are drawn round (miter and bevel joins are not supported)")
        self.shapes.append(Shape(f32(p), subs, None if fill is None else f32(fill),
                                 None if stroke is None else f32(stroke),
                                 None if stroke is None else f32(width * scale), rule, cap))


def _size(root):
    vb = _numbers(root.get("viewBox", "").replace(",", " "))
    if len(vb) == 4 and vb[2] > 0 and vb[3] > 0:
        return vb
    w = _num(root.get("width"), None) if root.get("width") and "%" not in root.get("width") else None
    h = _num(root.get("height"), None) if root.get("height") and "%" not in root.get("height") else None
    w, h = w or 300.0, h or 150.0
    if w <= 0 or h <= 0:
        raise UserError("The SVG has a zero or negative width/height.")
    return [0.0, 0.0, w, h]


def parse_svg(source: str | bytes) -> Scene:
    """SVG text -> Scene in viewBox units (origin moved to 0,0). Raises UserError when bad."""
    if isinstance(source, str):
        source = source.encode("utf-8")
    if len(source) > MAX_BYTES:
        raise UserError(f"The SVG is larger than {MAX_BYTES // 2**20} MB.")
    if not source.strip():
        raise UserError("The SVG is empty.")
    try:
        root = SafeET.fromstring(source, forbid_dtd=False, forbid_entities=True,
                                 forbid_external=True)
    except DefusedXmlException:
        raise UserError("The SVG declares XML entities or external references, which are not "
                        "allowed. Export it again without a DOCTYPE/ENTITY section.") from None
    except SafeET.ParseError as exc:
        raise UserError(f"The SVG is not well-formed XML: {exc}.") from None
    if _local(root.tag) != "svg":
        raise UserError(f"The file is XML but not SVG (root element <{_local(root.tag)}>).")
    minx, miny, w, h = _size(root)
    reader = _Reader(root)
    reader.root = root
    base = np.eye(3)
    base[:2, 2] = (-minx, -miny)
    reader.walk(root, base, {}, 1.0)
    return Scene(w, h, reader.shapes)


def read_svg(path) -> Scene:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UserError(f"The SVG file could not be read: {exc.strerror}.") from None
    return parse_svg(data)


# ----------------------------------------------------------------------------- writing

def _fmt(v: float, digits: int) -> str:
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _hex(c) -> str:
    r, g, b = (int(round(min(max(float(x), 0.0), 1.0) * 255)) for x in c[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def path_data(shape: Shape, digits: int = 3) -> str:
    p = shape.points.detach().cpu().double().numpy()
    out, o = [], 0
    f = lambda q: f"{_fmt(q[0], digits)} {_fmt(q[1], digits)}"  # noqa: E731
    for n, closed in shape.subpaths:
        cnt = 3 * n + (0 if closed else 1)
        sp = p[o:o + cnt]
        out.append("M" + f(sp[0]))
        for k in range(n):
            end = sp[(3 * k + 3) % cnt] if closed else sp[3 * k + 3]
            out.append("C" + " ".join(f(q) for q in (sp[3 * k + 1], sp[3 * k + 2], end)))
        if closed:
            out.append("Z")
        o += cnt
    return "".join(out)


def scene_to_svg(scene: Scene, digits: int = 3) -> str:
    """A clean SVG: viewBox, optional background rect, one <path> per shape."""
    w, h = _fmt(scene.width, digits), _fmt(scene.height, digits)
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" '
             f'width="{w}" height="{h}">']
    if scene.background is not None:
        lines.append(f'<rect width="{w}" height="{h}" fill="{_hex(scene.background)}"/>')
    for s in scene.shapes:
        attrs = [f'd="{path_data(s, digits)}"']
        if s.fill is not None:
            fc = s.fill.detach().cpu().tolist()
            attrs.append(f'fill="{_hex(fc)}"')
            if fc[3] < 0.9995:
                attrs.append(f'fill-opacity="{_fmt(min(max(fc[3], 0), 1), 4)}"')
            if s.fill_rule == "evenodd":
                attrs.append('fill-rule="evenodd"')
        else:
            attrs.append('fill="none"')
        if s.stroke is not None and s.stroke_width is not None and float(s.stroke_width) > 0:
            sc = s.stroke.detach().cpu().tolist()
            attrs.append(f'stroke="{_hex(sc)}" stroke-width="{_fmt(float(s.stroke_width), digits)}"')
            if sc[3] < 0.9995:
                attrs.append(f'stroke-opacity="{_fmt(min(max(sc[3], 0), 1), 4)}"')
            attrs.append(f'stroke-linejoin="round" stroke-linecap="{s.stroke_cap}"')
        lines.append("<path " + " ".join(attrs) + "/>")
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(scene: Scene, path, digits: int = 3) -> None:
    """Write atomically (temp file + rename), so a cancelled job never leaves half an SVG."""
    from ..files import atomic_write

    atomic_write(path, scene_to_svg(scene, digits))
