"""What the Text-to-SVG jobs (core/vectorfusion.py) hand back, typed: a tab reads these instead of
indexing `Result.info` by string keys.

    text_to_svg   -> an intermediate Result (stage "candidates": `Candidates`), then `SvgRun`
    image_to_svg  -> `VectorizedImage`
    icon_set      -> an intermediate Result (stage "set": the raster set), then `IconSet`

Each has `from_result(result)`; `details` is the run's info without anything that tells where the
server keeps its files (`public_info`), for a page's Details panel or an API caller.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..events import Result

CANDIDATES = "candidates"   # text_to_svg: the K samples ranked by CLIP
SET = "set"                 # icon_set: the Style-Aligned raster set, before vectorizing

# info keys that name files or folders on the server (or repeat every SVG's text)
PRIVATE_KEYS = ("files", "svgs", "folder", "paths_on_disk")


def stage(result: Result) -> str | None:
    """The stage an intermediate Result closes ("candidates", "set"); None for a job's last one."""
    value = result.info.get("stage")
    return value if isinstance(value, str) else None


def public_info(info: dict[str, Any]) -> dict[str, Any]:
    """A run's info without file paths (they would tell where the server keeps them)."""
    return {k: v for k, v in info.items() if k not in PRIVATE_KEYS}


def _files(result: Result) -> tuple[str, str]:
    svg, png = (list(result.files) + [None, None])[:2]
    if not (isinstance(svg, str) and svg.endswith(".svg") and isinstance(png, str) and png.endswith(".png")):
        raise ValueError("an SVG run's Result names its SVG and PNG files, in that order")
    return svg, png


@dataclass(frozen=True)
class Candidates:
    """VectorFusion's baseline samples with their CLIP text-image scores; `best` is the one LIVE
    vectorizes."""

    images: tuple[Image.Image, ...]
    clip_scores: tuple[float, ...]
    best: int

    @classmethod
    def from_result(cls, result: Result) -> Candidates:
        info = result.info
        return cls(tuple(result.images), tuple(float(s) for s in info["clip_scores"]), int(info["best"]))


@dataclass(frozen=True, eq=False)
class SvgRun:
    """A finished text-to-SVG run: the SVG text, its file and the PNG cairosvg rendered from it,
    the path count, the SDS loss per step (empty when SDS ran no step) and, after a baseline
    start, the candidates' CLIP scores and the best one's index."""

    svg: str
    svg_path: str
    png_path: str
    image: Image.Image
    paths: int
    style: str
    init: str
    losses: tuple[float, ...] = ()
    clip_scores: tuple[float, ...] = ()
    best: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    library_style: str | None = None     # "name (#id) × weight" of a library style used, if any

    @classmethod
    def from_result(cls, result: Result) -> SvgRun:
        info = result.info
        svg_path, png_path = _files(result)
        best = info.get("best")
        return cls(svg=info["svg"], svg_path=svg_path, png_path=png_path, image=result.images[0],
                   paths=int(info["paths"]), style=str(info["style"]), init=str(info["init"]),
                   losses=tuple(float(x) for x in info.get("losses") or ()),
                   clip_scores=tuple(float(s) for s in info.get("clip_scores") or ()),
                   best=None if best is None else int(best), details=public_info(info),
                   library_style=_style_line(info.get("library_style")))

    @property
    def sds_steps(self) -> int:
        """How many SDS steps ran (one loss each)."""
        return len(self.losses)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def _style_line(used: Any) -> str | None:
    if not used:
        return None
    ref = f"#{int(used['adapter_id'])}" if used.get("entry_id") is None else str(used["key"])
    return f"{used['name']} ({ref}) × {float(used['weight']):g}"


@dataclass(frozen=True, eq=False)
class VectorizedImage:
    """A finished image-to-SVG run: the SVG, its files, the path count, the PSNR of our
    rasterizer's rendering against the input at the working `size` (width, height)."""

    svg: str
    svg_path: str
    png_path: str
    image: Image.Image
    paths: int
    psnr: float
    size: tuple[int, int]
    init: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: Result) -> VectorizedImage:
        info = result.info
        svg_path, png_path = _files(result)
        w, h = info["size"]
        return cls(svg=info["svg"], svg_path=svg_path, png_path=png_path, image=result.images[0],
                   paths=int(info["paths"]), psnr=float(info["psnr"]), size=(int(w), int(h)),
                   init=str(info["init"]), details=public_info(info))


@dataclass(frozen=True, eq=False)
class IconSet:
    """A finished icon set: per prompt, in order, its PNG (cairosvg's rendering) and SVG text;
    `files` holds each icon's SVG then PNG file."""

    prompts: tuple[str, ...]
    images: tuple[Image.Image, ...]
    svgs: tuple[str, ...]
    files: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)
    library_style: str | None = None     # "name (key) × weight" of a library style used, if any
    aligned_to_style: bool = False       # the set's reference was the library style's image

    @classmethod
    def from_result(cls, result: Result) -> IconSet:
        info = result.info
        return cls(prompts=tuple(info["prompts"]), images=tuple(result.images), svgs=tuple(info["svgs"]),
                   files=tuple(result.files), details=public_info(info),
                   library_style=_style_line(info.get("library_style")),
                   aligned_to_style=info.get("reference") == "the library style's image")


__all__ = ["CANDIDATES", "SET", "Candidates", "IconSet", "SvgRun", "VectorizedImage", "public_info", "stage"]
