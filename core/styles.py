"""A style from the library, used by another method (issue 18).

A *library style* is one of two things:

- a **style entry** (`Store.save_style`, saved from any tab with "Save as style"): source images,
  a text descriptor, and whichever forms exist: a library adapter that carries the style, a
  Style-Aligned reference image with the prompt that describes it (its DDIM inversion cached with
  the entry, `inversion_cache`). Its key is "s<id>".
- a **library adapter** that carries a style, listed as it is: a StyleDrop adapter (either form,
  the paper's GELU module or the linear LoRA: the whole adapter is the style), a B-LoRA, of which
  only the **style half** (its LoRA weights in the style block, `core.blora.BLOCKS["style"]`) is
  used: the content half would pull the subject of the B-LoRA's training image into every image,
  or a LoRA file imported as a style (kohya/A1111 or diffusers; `IMPORTED_ROLE` in its extra),
  whose trigger words are its phrase. Its key is the adapter id.

Each method uses the forms it can: the adapter goes on the resident UNet (`style_active`), the
reference image becomes a Style-Aligned reference (`reference_of`: Style-Aligned sets, icon sets,
VectorFusion's samples, and a Personalize subject in a style that has no adapter,
`style_aligned.aligned_generate`), the source images AdaIN's style images (`images_of`).

    found = library_styles(engine, owner=owner)        # what the owner may use, newest first
    st = get_style(engine, key, owner=owner)           # one, checked (owner, base model, kind)
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
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import blora, library, store_styles, styledrop
from .errors import UserError

STYLE_METHODS = (styledrop.METHOD, blora.METHOD)
IMPORTED = "imported"      # Store.import_lora's method
IMPORTED_ROLE = "style"    # extra["role"] of a LoRA imported as a style
MAX_WEIGHT = 2.0
MAX_NAME = store_styles.MAX_NAME
MAX_IMAGES = store_styles.MAX_STYLE_IMAGES


ENTRY_PREFIX = "s"          # a style entry's key: "s<id>"; an adapter's: "<id>"


@dataclass(frozen=True)
class LibraryStyle:
    adapter_id: int | None  # the adapter that carries the style (None: an entry without one)
    name: str
    method: str             # the adapter's: styledrop.METHOD, blora.METHOD or IMPORTED ("" without one)
    phrase: str             # what a prompt gets: "in watercolor style" (StyleDrop), "in [v] style" (B-LoRA)
    entry_id: int | None = None             # a style entry (None: a library adapter listed as it is)
    descriptor: str = ""
    images: tuple[Path, ...] = ()           # an entry's source images
    reference: Path | None = None           # an entry's Style-Aligned reference image
    reference_prompt: str = ""

    @property
    def key(self) -> str:
        return f"{ENTRY_PREFIX}{self.entry_id}" if self.entry_id is not None else str(self.adapter_id)

    @property
    def shown(self) -> str:
        """How messages name it: "#<adapter id>" or "s<entry id>"."""
        return self.key if self.entry_id is not None else f"#{self.adapter_id}"

    @property
    def label(self) -> str:
        kind = {styledrop.METHOD: "StyleDrop", blora.METHOD: "B-LoRA style half"}.get(self.method, "imported LoRA")
        if self.entry_id is None:
            return f"{self.name} · {kind} · #{self.adapter_id}"
        forms = [f"{len(self.images)} image(s)"] + (["reference"] if self.reference else []) + \
                ([kind] if self.adapter_id is not None else [])
        return f"{self.name} · style: {', '.join(forms)} · {self.key}"

    def as_info(self, weight: float) -> dict:
        return {"key": self.key, "entry_id": self.entry_id, "adapter_id": self.adapter_id, "name": self.name,
                "weight": weight}


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


def _entry_style(store, e, owner: Any) -> LibraryStyle:
    """A style entry as `owner` may use it: its adapter form only when that adapter is theirs to use."""
    adapter = None
    if e.adapter_id is not None:
        with contextlib.suppress(UserError):
            found = store.get_adapter(e.adapter_id, owner)
            adapter = found if is_style(found) else None
    phrase = _phrase(adapter) if adapter is not None else (f"in {e.descriptor} style" if e.descriptor else "")
    return LibraryStyle(adapter_id=None if adapter is None else int(adapter.id), name=e.name,
                        method="" if adapter is None else adapter.method, phrase=phrase, entry_id=int(e.id),
                        descriptor=e.descriptor, images=e.images, reference=e.reference,
                        reference_prompt=e.reference_prompt)


def library_styles(engine, *, owner: Any) -> list[LibraryStyle]:
    """The styles of this base model that `owner` may use (their own and published ones), newest
    first: style entries, then StyleDrop adapters, B-LoRAs and LoRAs imported as styles that no
    listed entry carries."""
    store = library.get_store(engine)
    base = library.base_model_id(engine)
    entries = [_entry_style(store, e, owner) for e in store.list_styles(owner, base_model=base)]
    carried = {e.adapter_id for e in entries}
    return entries + [_as_style(a) for a in store.list_adapters(owner, base_model=base)
                      if is_style(a) and a.id not in carried]


def get_style(engine, key: int | str, *, owner: Any) -> LibraryStyle:
    """One library style as `owner` sees it, by key ("s<id>" for an entry, an adapter id); a
    UserError when it is not theirs to use, not for this base model, or not a style (a DreamBooth
    subject, an imported LoRA)."""
    store = library.get_store(engine)
    if isinstance(key, str) and key.startswith(ENTRY_PREFIX):
        e = store.get_style(int(key[len(ENTRY_PREFIX):]), owner)
        if e.base_model != library.base_model_id(engine):
            raise UserError(f"The style {e.name!r} was made with another base model ({e.base_model}).")
        return _entry_style(store, e, owner)
    a = store.get_adapter(int(key), owner)
    if not is_style(a):
        raise UserError(f"{a.name!r} is not a style (StyleDrop adapters, B-LoRAs and LoRAs imported as styles are).")
    if a.base_model != library.base_model_id(engine):
        raise UserError(f"{a.name!r} was trained for another base model ({a.base_model}).")
    return _as_style(a)


def reference_of(style: LibraryStyle | None) -> tuple[Path, str] | None:
    """(image, prompt) a Style-Aligned set can take as its reference: an entry's reference image,
    else its first source image, described by its reference prompt or its descriptor; None for a
    library adapter listed as it is."""
    if style is None or style.entry_id is None or not (style.reference or style.images):
        return None
    image = style.reference or style.images[0]
    prompt = style.reference_prompt or (f"an image in {style.descriptor} style" if style.descriptor
                                        else "an image in this style")
    return image, prompt


class InversionCache:
    """A style entry's cached DDIM inversions (`Store.style_cache_get/put`): the trajectory of its
    reference for one setting of everything the inversion depends on."""

    def __init__(self, engine, style: LibraryStyle, owner: Any):
        self.store, self.entry_id, self.owner = library.get_store(engine), style.entry_id, owner
        self.base = library.base_model_id(engine)

    def key(self, **setting: Any) -> str:
        text = json.dumps({"base": self.base, **setting}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str):
        found = self.store.style_cache_get(self.entry_id, key, self.owner)
        return None if found is None else [found[f"z{i}"] for i in range(len(found))]

    def put(self, key: str, trajectory) -> None:
        self.store.style_cache_put(self.entry_id, key, {f"z{i}": z for i, z in enumerate(trajectory)}, self.owner)


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
    if style is not None and style.adapter_id is None:
        style = None                      # an entry without an adapter: nothing goes on the UNet
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
    one generation. A saved style without an adapter has only its words here (Personalize's
    `best_of.generate` makes a Style-Aligned set to its image instead)."""
    style_weight = check_weight(style_weight)
    used = None if style is None else style.as_info(style_weight)
    return library.generate(engine, styled_prompts(prompts, style), weights, owner=owner, stop_key=stop_key,
                            activate=lambda w: style_active(engine, style, style_weight, owner=owner, adapters=w),
                            info={"library_style": used}, **kwargs)


# --------------------------------------------------------------------------- "save as style"

def save_style(engine, *, owner: Any, name: str, images: Sequence[Any], source: str, descriptor: str = "",
               adapter_id: int | None = None, reference: Any = None, reference_prompt: str = "") -> LibraryStyle:
    """A new style entry of `owner` (see the module docstring), made with this engine's base model;
    `adapter_id`, when given, must be a style adapter `owner` may use. Returns it as a LibraryStyle."""
    store = library.get_store(engine)
    if adapter_id is not None:
        a = store.get_adapter(int(adapter_id), owner)
        if not is_style(a):
            raise UserError(f"{a.name!r} does not carry a style (StyleDrop adapters, B-LoRAs and LoRAs "
                            "imported as styles do).")
    e = store.save_style(owner=owner, name=name, images=images, descriptor=" ".join(str(descriptor).split()),
                         base_model=library.base_model_id(engine), source=source, adapter_id=adapter_id,
                         reference=reference, reference_prompt=reference_prompt)
    return _entry_style(store, e, owner)


def _descriptor_of(phrase: str) -> str:
    """"in watercolor painting style" -> "watercolor painting" (StyleDrop's stored phrase)."""
    words = " ".join(phrase.split())
    if words.lower().startswith("in ") and words.lower().endswith(" style"):
        words = words[3:-6].strip()
    return words


def save_styledrop_round(engine, round_id: int, *, owner: Any, name: str = "") -> LibraryStyle:
    """A StyleDrop round as a style: its adapter, the loop's style image(s) and descriptor (the
    loop's owner only)."""
    store = library.get_store(engine)
    rnd = store.get_round(int(round_id), owner)
    loop = store.get_loop(rnd.loop_id, owner)
    if loop.owner != owner:
        raise UserError("Only the loop's owner can save its style.")
    if rnd.adapter_id is None:
        raise UserError("This round has no trained adapter (it did not finish).")
    images = styledrop.style_images(store, loop, owner)[:store_styles.MAX_STYLE_IMAGES]
    return save_style(engine, owner=owner, name=name or f"{loop.name} round {rnd.number}", images=images,
                      source="styledrop", descriptor=_descriptor_of(loop.style_descriptor), adapter_id=rnd.adapter_id)


def save_blora(engine, adapter_id: int, *, owner: Any, name: str = "") -> LibraryStyle:
    """A B-LoRA as a style: its style half (by the adapter) and the image it learned."""
    store = library.get_store(engine)
    a = store.get_adapter(int(adapter_id), owner)
    if a.method != blora.METHOD:
        raise UserError(f"{a.name!r} is not a B-LoRA.")
    image = blora.thumbnail_image(a, max_side=store_styles.IMAGE_SIDE)
    if image is None:
        raise UserError(f"{a.name!r} keeps no image of what it learned; save a style from a B-LoRA trained here.")
    return save_style(engine, owner=owner, name=name or a.name, images=[image], source="blora",
                      descriptor=(a.trigger_words or "").strip(), adapter_id=a.id)


def styledrop_start(engine, style: LibraryStyle, *, owner: Any) -> tuple[list, str, str]:
    """What a new StyleDrop loop takes from a library style: (its images, the first
    `styledrop.MAX_STYLE_IMAGES`; a content description: its reference's description up to the
    first comma, "a house" of "a house, in pastel style", else "an image"; its style words: the
    descriptor, else its phrase without "in ... style", else its name; a B-LoRA's name, since its
    words are a trigger such as "[v18]" that means nothing to a new loop)."""
    images = images_of(engine, style, owner=owner)
    if not images:
        raise UserError("This library style keeps no images to train a StyleDrop loop on; upload a style image.")
    content = (style.reference_prompt or "").split(",")[0].strip() or "an image"
    if style.method == blora.METHOD:
        words = style.name                 # its descriptor and phrase hold the trigger: "[v18]"
    else:
        words = style.descriptor or _descriptor_of(style.phrase) or style.name
    return images[:styledrop.MAX_STYLE_IMAGES], content, words


def images_of(engine, style: LibraryStyle, *, owner: Any) -> list:
    """The images a style was made from (for AdaIN's style images): an entry's source images; a
    B-LoRA's learned image; a StyleDrop adapter's loop style image(s); [] for an imported LoRA."""
    if style.entry_id is not None:
        return list(style.images)
    store = library.get_store(engine)
    a = store.get_adapter(style.adapter_id, owner)
    if a.method == blora.METHOD:
        image = blora.thumbnail_image(a, max_side=store_styles.IMAGE_SIDE)
        return [] if image is None else [image]
    loop_id = (a.extra or {}).get("loop_id")
    if a.method == styledrop.METHOD and loop_id is not None:
        with contextlib.suppress(UserError):
            return styledrop.style_images(store, store.get_loop(int(loop_id), owner), owner)
    return []
