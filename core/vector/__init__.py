"""Vector graphics for the Text-to-SVG tab: a differentiable rasterizer in plain PyTorch,
safe SVG reading and clean SVG writing, and image-to-SVG vectorization (LIVE, and vtracer's
tracing refined through the rasterizer). See rasterizer.py for how coverage is computed.

    from core.vector import parse_svg, render, scene_to_svg, vectorize
"""
from .live import VectorProgress, live, psnr
from .rasterizer import render, render_rgba, to_pil
from .scene import Scene, Shape, circle_shape, polygon_shape
from .svg_io import parse_svg, read_svg, scene_to_svg, write_svg
from .vectorize import vectorize

__all__ = ["Scene", "Shape", "VectorProgress", "circle_shape", "live", "parse_svg", "polygon_shape",
           "psnr", "read_svg", "render", "render_rgba", "scene_to_svg", "to_pil", "vectorize",
           "write_svg"]
