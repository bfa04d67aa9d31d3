"""B-LoRA files in the reference implementation's layout (issue 18, "Bring styles in").

The authors' trainer saves one B-LoRA as one diffusers LoRA file: keys prefixed `unet.`, LoRA on
the attention projections of the content block `up_blocks.0.attentions.0` and the style block
`up_blocks.0.attentions.1` only, in diffusers' pre-peft spelling

    unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight
    unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight

with no alphas (the loader takes each module's scale as 1). Its inference loads a half by reading
the file with `lora_state_dict`, keeping the keys of one block and handing them to
`load_lora_into_unet` with no network alphas. The B-LoRAs published on the Hub have this layout.

* `import_reference`: such a file (or the same in peft's `lora_A`/`lora_B` spelling; diffusers'
  converters read both) becomes a library B-LoRA with both halves, keys checked like any import
  (safetensors by content, size cap, names and shapes against the UNet, finite) and refused
  unless every weight lies in one of the two blocks and both blocks have weights.
* `export_reference`: a library B-LoRA written in that layout. Its two halves are taken by block
  (`blora.half_state_dict`); each module's peft scale (alpha/r, or alpha/sqrt(r) with rsLoRA) is
  folded into its up matrix, since the reference loader passes no alphas; the keys are
  written in the reference spelling by diffusers' `convert_state_dict_to_diffusers`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import blora, library
from . import lora_format as lf
from .errors import UserError

MAX_IMPORT_BYTES = 1 << 30  # the two blocks at rank 256 in fp32 are about 0.45 GB
REFERENCE = "reference"
FORMATS = (REFERENCE, "diffusers", "kohya")


def check_reference_blocks(state_dict: lf.StateDict) -> None:
    """Refuse a canonical state dict that is not a B-LoRA: weights outside the UNet's content and
    style blocks, or one of the two blocks without weights."""
    outside = sorted(m for m in lf.modules_in(state_dict)
                     if lf.component_of(m) != "unet" or blora.block_of(m[len("unet."):]) is None)
    if outside:
        raise UserError(
            f"This file is not a B-LoRA: {len(outside)} of its LoRA modules lie outside the two B-LoRA blocks "
            f"(content {blora.CONTENT_BLOCK}, style {blora.STYLE_BLOCK}), e.g. {lf.few(outside)}.")
    have = {blora.block_of(m[len("unet."):]) for m in lf.modules_in(state_dict)}
    for part, block in blora.BLOCKS.items():
        if part not in have:
            raise UserError(f"This file is not a whole B-LoRA: it has no {part} half (no LoRA weights in {block}).")


def import_reference(engine, path: str | os.PathLike, *, owner: str, name: str = "", trigger: str = "",
                     published: bool = False, max_bytes: int = MAX_IMPORT_BYTES):
    """Import a B-LoRA file of the reference trainer into `owner`'s library as a B-LoRA entry with
    both halves ("content": the keys under the content block, "style": those under the style
    block), usable on the B-LoRA tab like one trained here. `trigger`: the instance prompt's word
    it was trained with (e.g. "[v18]"), optional. Returns the new library entry."""
    engine.load()
    blora.check_model(engine.pipe.unet)
    trigger = blora.check_trigger(trigger) if (trigger or "").strip() else ""
    store = library.get_store(engine)
    return store.import_lora(path, owner=owner, name=(name or "").strip() or None, trigger_words=trigger,
                             method=blora.METHOD, parts=blora.PARTS, accept=check_reference_blocks,
                             max_bytes=max_bytes, published=published, **library.import_arguments(engine))


def reference_state_dict(engine, adapter_id: int, *, owner: Any) -> tuple[lf.StateDict, Any]:
    """(the reference-layout tensors of a library B-LoRA, its entry): both halves, taken by
    block, each module's scale folded into its up matrix, in diffusers' `.lora.down`/`.lora.up`
    spelling."""
    from diffusers.utils.state_dict_utils import StateDictType, convert_state_dict_to_diffusers

    merged: lf.StateDict = {}
    entry = None
    for part in blora.BLOCKS:
        sd, configs, entry = blora.half_state_dict(engine, adapter_id, part, owner)
        scales = lf.module_scales(sd, configs)
        for module, (rank, alpha) in scales.items():
            merged[f"{module}.lora_A.weight"] = sd[f"{module}.lora_A.weight"]
            up = sd[f"{module}.lora_B.weight"]
            merged[f"{module}.lora_B.weight"] = (up.double() * (alpha / rank)).to(up.dtype)
    not_attention = [m for m in lf.modules_in(merged) if not m.endswith(blora.PROJECTIONS)]
    if not_attention:
        raise UserError(f"{entry.name!r} adapts layers other than the attention projections "
                        f"({lf.few(not_attention)}), which the B-LoRA reference layout cannot hold; export it "
                        "in the diffusers format instead.")
    out = convert_state_dict_to_diffusers(merged, original_type=StateDictType.PEFT)
    spelled = [k for k in out if not k.endswith((".lora.down.weight", ".lora.up.weight"))]
    if spelled or len(out) != len(merged):
        raise RuntimeError("the reference key conversion lost or kept keys")  # a bug, not user input
    return out, entry


def export_reference(engine, adapter_id: int, *, owner: Any, dest_dir: str | os.PathLike | None = None) -> Path:
    """Write a library B-LoRA as a download copy in the reference layout (see the module
    docstring); the reference `inference.py` loads it as it loads the authors' files."""
    tensors, entry = reference_state_dict(engine, adapter_id, owner=owner)
    header = {"format": "pt", "studio.method": blora.METHOD, "studio.name": entry.name,
              "studio.trigger": entry.trigger_words or "",
              "studio.blocks": f"content={blora.CONTENT_BLOCK}; style={blora.STYLE_BLOCK}"}
    return library.get_store(engine).write_download(f"{entry.name}-blora-reference", tensors, header,
                                                   dest_dir=dest_dir)


def export(engine, adapter_id: int, *, owner: Any, fmt: str = REFERENCE) -> Path:
    """A library B-LoRA as a download copy: "reference" (the authors' layout), "diffusers" (this
    app's library format) or "kohya" (A1111/ComfyUI). Only B-LoRAs `owner` may see."""
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    a = library.get_store(engine).get_adapter(int(adapter_id), owner)
    if a.id not in {e.id for e in blora.entries(engine, owner)}:
        raise UserError(f"{a.name!r} is not a B-LoRA (it has no content and style halves).")
    if fmt == REFERENCE:
        return export_reference(engine, a.id, owner=owner)
    return library.get_store(engine).export(a.id, owner, fmt=fmt)


__all__ = ["FORMATS", "REFERENCE", "MAX_IMPORT_BYTES", "check_reference_blocks", "import_reference",
           "reference_state_dict", "export_reference", "export"]
