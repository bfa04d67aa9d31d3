"""The store's exchange with other programs: importing a user's LoRA file (kohya or
diffusers/peft, checked by content) and writing download copies (kohya for A1111/ComfyUI, or
diffusers). A mixin of `Store` (core/store.py), whose adapter methods it uses."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

from . import lora_format as lf
from .files import atomic_path
from .store_base import Adapter, now, safe_filename


class ExchangeMixin:
    """`import_lora`, `export` (and the sweep of old download copies) of `Store`."""

    def import_lora(self, path: str | os.PathLike, *, owner: str, base_model: str,
                    base_modules: Mapping[str, Any], name: str | None = None, arch: str = "",
                    unet_config: Any = None, max_bytes: int = lf.DEFAULT_MAX_BYTES,
                    trigger_words: str = "", published: bool = False) -> Adapter:
        """Import a user's LoRA `.safetensors` (diffusers/peft or kohya), checked by content
        (never unpickled) and against `base_modules` (see `lora_format.module_shapes`)."""
        sd, configs, fmt = lf.read_lora(path, base_modules=base_modules, max_bytes=max_bytes,
                                        unet_config=unet_config)
        stem = Path(path).name
        stem = stem[: -len(".safetensors")] if stem.lower().endswith(".safetensors") else stem
        return self.save_adapter(owner=owner, name=name or stem, method="imported", base_model=base_model,
                                 state_dict=sd, configs=configs, arch=arch, trigger_words=trigger_words,
                                 extra={"source_format": fmt, "original_filename": Path(path).name},
                                 published=published)

    def export(self, adapter_id: int, viewer: Any, *, fmt: str = "kohya", part: str | None = None,
               te_style: str = "auto", dest_dir: str | os.PathLike | None = None) -> Path:
        """Write a download copy: "kohya" (A1111/ComfyUI) or "diffusers"; whole or one part.

        Files go to `<root>/exports/<random>/<name>.safetensors` by default (swept by `recover`).
        """
        a = self.get_adapter(adapter_id, viewer)
        sd, configs = self.load_adapter(adapter_id, viewer, part)
        if fmt == "kohya":
            if te_style == "auto" and a.arch.lower().startswith(("sdxl", "xl")):
                te_style = "te1"
            out = lf.to_kohya(sd, configs, te_style=te_style)
            header = {"ss_network_module": "networks.lora", "ss_output_name": a.name,
                      "ss_network_dim": str(a.rank), "ss_base_model": a.base_model}
        elif fmt == "diffusers":
            out, header = sd, lf.file_metadata(configs)
        else:
            raise ValueError(f"unknown export format {fmt!r}")
        if dest_dir is None:
            self._sweep_exports()
        folder = Path(dest_dir) if dest_dir is not None else self.root / "exports" / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        fname = safe_filename(a.name + (f"-{part}" if part else "") + ("" if fmt == "kohya" else "-diffusers"))
        final = folder / f"{fname}.safetensors"
        with atomic_path(final) as tmp:
            lf.write_safetensors(tmp, out, header)
        return final

    def _sweep_exports(self, max_age_s: float = 3600.0) -> None:
        """Remove download copies older than an hour (they are re-made on demand)."""
        cutoff = now() - max_age_s
        for d in (self.root / "exports").iterdir():
            with contextlib.suppress(OSError):
                if d.stat().st_mtime < cutoff:
                    for f in d.iterdir() if d.is_dir() else []:
                        f.unlink()
                    d.rmdir() if d.is_dir() else d.unlink()
