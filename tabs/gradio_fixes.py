"""Work-arounds for Gradio behaviour that breaks a streaming app, applied once by app.py.

`cached_images_written_once`: Gradio keeps every image a handler returns in its cache under a
folder named by the hash of the encoded bytes, and (6.31) writes the file again, truncating it
first, each time the same image is returned. A stream that repeats an image (training samples
shown again with every update, a gallery that grows) then rewrites a file while a browser is
downloading it, which fails with "Too little data for declared Content-Length". Gradio's own
copy of a *file* skips existing copies and writes atomically; this gives images the same
treatment: a content-addressed file that exists already holds these bytes and is left alone, a
new one is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import functools
from pathlib import Path

from core.files import atomic_write


def cached_images_written_once() -> bool:
    """Patch `gradio.processing_utils.save_pil_to_cache` (once); False if this Gradio has no
    such function (then there is nothing to fix, or the fix needs a new look)."""
    from gradio import processing_utils as pu

    original = getattr(pu, "save_pil_to_cache", None)
    if original is None or not hasattr(pu, "encode_pil_to_bytes") or not hasattr(pu, "hash_bytes"):
        return False
    if getattr(original, "_written_once", False):
        return True

    @functools.wraps(original)
    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = pu.encode_pil_to_bytes(img, format)
        path = (Path(cache_dir) / pu.hash_bytes(data) / f"{name}.{format}").resolve()
        if not path.is_file():
            atomic_write(path, data)
        return str(path)

    save_pil_to_cache._written_once = True
    pu.save_pil_to_cache = save_pil_to_cache
    return True
