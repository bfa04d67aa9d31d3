"""The store's exchange with other programs: importing a user's LoRA file (kohya or
diffusers/peft, checked by content) and writing download copies (kohya for A1111/ComfyUI, or
diffusers). A mixin of `Store` (core/store.py), whose adapter methods it uses."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import lora_format as lf
from .errors import UserError
from .files import atomic_path
from .store_base import Adapter, now, safe_filename
from .styledrop_adapter import FORM as GELU_FORM
from .styledrop_adapter import FORM_KEY


class ExchangeMixin:
    """`import_lora`, `export` (and the sweep of old download copies) of `Store`."""

    def import_lora(self, path: str | os.PathLike, *, owner: str, base_model: str,
                    base_modules: Mapping[str, Any], name: str | None = None, arch: str = "",
                    unet_config: Any = None, max_bytes: int = lf.DEFAULT_MAX_BYTES,
                    trigger_words: str = "", published: bool = False, method: str = "imported",
                    parts: Mapping[str, Sequence[str]] | None = None,
                    accept: Callable[[lf.StateDict], None] | None = None, role: str | None = None) -> Adapter:
        """Import a user's LoRA `.safetensors` (diffusers/peft or kohya), checked by content
        (never unpickled) and against `base_modules` (see `lora_format.module_shapes`).

        A method's own import (B-LoRA's reference files) names its `method` and `parts` (as
        `save_adapter` takes them) and may refuse what it cannot use: `accept` gets the canonical
        state dict before it is checked against `base_modules` and raises a `UserError`. `role`
        ("style"): what the file is for, kept in its extra (core.styles lists imported styles)."""
        sd, configs, fmt = lf.read_lora(path, max_bytes=max_bytes, unet_config=unet_config)
        if accept is not None:  # the method's own refusal first: it says best what the file is not
            accept(sd)
        if base_modules is not None:
            lf.check_modules(sd, base_modules)
        stem = Path(path).name
        stem = stem[: -len(".safetensors")] if stem.lower().endswith(".safetensors") else stem
        return self.save_adapter(owner=owner, name=name or stem, method=method, base_model=base_model,
                                 state_dict=sd, configs=configs, arch=arch, trigger_words=trigger_words,
                                 extra={"source_format": fmt, "original_filename": Path(path).name,
                                        **({"role": role} if role else {})},
                                 parts=parts, published=published)

    def export(self, adapter_id: int, viewer: Any, *, fmt: str = "kohya", part: str | None = None,
               te_style: str = "auto", dest_dir: str | os.PathLike | None = None) -> Path:
        """Write a download copy: "kohya" (A1111/ComfyUI) or "diffusers"; whole or one part.

        Files go to `<root>/exports/<random>/<name>.safetensors` by default (swept by `recover`).
        """
        a = self.get_adapter(adapter_id, viewer)
        if (a.extra or {}).get(FORM_KEY) == GELU_FORM:  # no LoRA layout holds x + U·GELU(D·x)
            raise UserError(f"{a.name!r} is a StyleDrop adapter in the paper's GELU form, which LoRA files cannot "
                            "hold: export it from the StyleDrop Loop tab (as its linearisation).")
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
        name = a.name + (f"-{part}" if part else "") + ("" if fmt == "kohya" else "-diffusers")
        return self.write_download(name, out, header, dest_dir=dest_dir)

    def write_download(self, name: str, tensors: Mapping[str, Any], header: Mapping[str, str], *,
                       dest_dir: str | os.PathLike | None = None) -> Path:
        """Write one download copy `<name>.safetensors` (atomically) into `dest_dir`, by default a
        fresh folder under `<root>/exports/` (swept by `recover` and after an hour)."""
        if dest_dir is None:
            self._sweep_exports()
        folder = Path(dest_dir) if dest_dir is not None else self.root / "exports" / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{safe_filename(name)}.safetensors"
        with atomic_path(final) as tmp:
            lf.write_safetensors(tmp, tensors, header)
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
