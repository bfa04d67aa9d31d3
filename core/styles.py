"""A style from the library, used by another method (issue 18, the first cross-method uses).

A *library style* is a library adapter that carries a style: a StyleDrop adapter (either form,
the paper's GELU module or the linear LoRA: the whole adapter is the style), a B-LoRA, of which
only the **style half** (its LoRA weights in the style block, `core.blora.BLOCKS["style"]`) is
used: the content half would pull the subject of the B-LoRA's training image into every image,
or a LoRA file imported as a style (kohya/A1111 or diffusers; `IMPORTED_ROLE` in its extra), whose
trigger words are its phrase.

    found = library_styles(engine, owner=owner)        # what the owner may use, newest first
    st = get_style(engine, adapter_id, owner=owner)    # one, checked (owner, base model, kind)
    prompts = styled_prompts(prompts, st)              # "..., in <descriptor> style" / "in <v> style"
    with style_active(engine, st, weight, owner=owner):
        ...                                            # any generation on the resident UNet

`style_active` changes the shared UNet, so it runs inside a job (engine.run); afterwards the UNet
computes exactly what it computed before (the StyleDrop adapter is switched off, the B-LoRA
half deleted and its peft wrappers removed; see `library.ResidentAdapters.active` and
`blora.halves_active`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from . import blora, library, styledrop
from .errors import UserError

STYLE_METHODS = (styledrop.METHOD, blora.METHOD)
IMPORTED = "imported"      # Store.import_lora's method
IMPORTED_ROLE = "style"    # extra["role"] of a LoRA imported as a style
MAX_WEIGHT = 2.0


@dataclass(frozen=True)
class LibraryStyle:
    adapter_id: int
    name: str
    method: str           # styledrop.METHOD, blora.METHOD or IMPORTED
    phrase: str           # what a prompt gets: "in watercolor style" (StyleDrop), "in [v] style" (B-LoRA)

    @property
    def label(self) -> str:
        kind = {styledrop.METHOD: "StyleDrop", blora.METHOD: "B-LoRA style half"}.get(self.method, "imported LoRA")
        return f"{self.name} · {kind} · #{self.adapter_id}"


def is_style(a) -> bool:
    """A library entry usable as a style (see the module docstring)."""
    return a.method in STYLE_METHODS or (a.method == IMPORTED and (a.extra or {}).get("role") == IMPORTED_ROLE)


def _phrase(a) -> str:
    words = (a.trigger_words or "").strip()
    if a.method == blora.METHOD:
        return f"in {words} style" if words else ""   # B-LoRA: the trigger of its training prompt
    return words              # StyleDrop: stored as the paper's "in [descriptor] style"; imported: as given


def _as_style(a) -> LibraryStyle:
    return LibraryStyle(adapter_id=int(a.id), name=a.name, method=a.method, phrase=_phrase(a))


def library_styles(engine, *, owner: Any) -> list[LibraryStyle]:
    """The styles of this base model that `owner` may use (their own and published ones): StyleDrop
    adapters, B-LoRAs and LoRAs imported as styles, newest first."""
    store = library.get_store(engine)
    base = library.base_model_id(engine)
    return [_as_style(a) for a in store.list_adapters(owner, base_model=base) if is_style(a)]


def get_style(engine, adapter_id: int, *, owner: Any) -> LibraryStyle:
    """One library style as `owner` sees it; a UserError when it is not theirs to use, not for this
    base model, or not a style (a DreamBooth subject, an imported LoRA)."""
    a = library.get_store(engine).get_adapter(int(adapter_id), owner)
    if not is_style(a):
        raise UserError(f"{a.name!r} is not a style (StyleDrop adapters, B-LoRAs and LoRAs imported as styles are).")
    if a.base_model != library.base_model_id(engine):
        raise UserError(f"{a.name!r} was trained for another base model ({a.base_model}).")
    return _as_style(a)


def styled_prompts(prompts: Sequence[str], style: LibraryStyle | None) -> list[str]:
    """Each prompt with the style's phrase appended (unless it is there already)."""
    if style is None or not style.phrase:
        return list(prompts)
    return [p if style.phrase.lower() in p.lower() else f"{p.rstrip(' ,.')}, {style.phrase}" for p in prompts]


def check_weight(weight: float) -> float:
    w = float(weight)
    if not 0.0 <= w <= MAX_WEIGHT:
        raise UserError(f"The style's weight must be between 0 and {MAX_WEIGHT:g}.")
    return w


@contextlib.contextmanager
def style_active(engine, style: LibraryStyle | None, weight: float = 1.0, *, owner: Any,
                 adapters: Mapping[int, float] | None = None) -> Iterator[None]:
    """The style on the resident UNet with this (linear) weight for one block of code, together
    with other library adapters (`adapters`, id: weight: a DreamBooth subject); just those when
    `style` is None. Run inside a job."""
    weights = {int(k): float(v) for k, v in (adapters or {}).items()}
    if style is None or style.method != blora.METHOD:
        if style is not None:
            weights[style.adapter_id] = check_weight(weight)
        with library.adapters(engine).active(weights, owner):   # (none: every adapter off)
            yield
        return
    half = blora.Half(style.adapter_id, "style", check_weight(weight))
    with library.adapters(engine).active(weights, owner) as names:
        with blora.halves_active(engine, [half], owner, also=dict(zip(names, weights.values()))):
            yield


def generate(engine, prompts: Sequence[str], weights: Mapping[int, float], *, style: LibraryStyle | None,
             style_weight: float = 1.0, owner: Any, stop_key: str | None = None, **kwargs):
    """`library.generate` (one image per prompt, library adapters a weight each: a DreamBooth
    subject) with a library style on as well and its phrase in every prompt: subject + style in
    one generation."""
    style_weight = check_weight(style_weight)
    used = None if style is None else {"adapter_id": style.adapter_id, "name": style.name, "weight": style_weight}
    return library.generate(engine, styled_prompts(prompts, style), weights, owner=owner, stop_key=stop_key,
                            activate=lambda w: style_active(engine, style, style_weight, owner=owner, adapters=w),
                            info={"library_style": used}, **kwargs)
