"""LoRA files: the diffusers format we store, the kohya format we export, safe import.

The library keeps every adapter in diffusers' own LoRA format, the one that
`StableDiffusionXLPipeline.load_lora_weights` / `StableDiffusionPipeline.load_lora_weights`
read: peft keys prefixed by the pipeline component,

    unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight
    text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight

plus the peft `LoraConfig` of each component (rank, alpha, rank/alpha patterns) as JSON in the
safetensors header under diffusers' `lora_adapter_metadata` key, exactly as diffusers'
`save_lora_weights(..., unet_lora_adapter_metadata=...)` writes it, so the alpha survives.

Every key conversion is diffusers' or peft's own:

* taking an adapter off a model: peft's `get_peft_model_state_dict` (`peft_state_dict`);
* canonical -> kohya: diffusers' `convert_state_dict_to_kohya` (`to_kohya`);
* kohya -> canonical: the pipelines' `lora_state_dict` (kohya -> diffusers, with the SDXL sgm
  block renaming), then `convert_unet_state_dict_to_peft` / `convert_state_dict_to_peft`
  (`from_kohya`); old diffusers spellings -> peft likewise (`from_diffusers`);
* which rank/alpha pattern entry applies to a module: peft's `get_pattern_key`.

What is ours, and why:

* the alpha. `convert_state_dict_to_kohya` writes each module's rank as its `.alpha` (scale 1),
  which changes the weight of any adapter with alpha != rank; `module_scales` computes the alpha
  that keeps peft's scale (alpha/r, or alpha/sqrt(r) with rsLoRA) and `to_kohya` writes that one.
* the per-component LoraConfig of a converted file (`config_from_scales`). diffusers'
  `get_peft_kwargs` derives one too, but its `target_modules` come from a set (the header, and
  so the stored file's digest, would change from one process to the next) and it keeps module
  names as the file spells them (text encoders with the `text_model.` level that current
  transformers no longer has); ours is sorted, normalised and built from exact module names, so
  no regex from a stranger's file is stored.
* packing configs into the header (`pack_metadata`/`unpack_metadata`): the layout is diffusers'
  (`lora_adapter_metadata`, `<component>.<field>`), but its packer `_pack_dict_with_prefix` is
  private to diffusers.
* the text-encoder names with and without `text_model.` (`te_flat`, `normalize_module_name`):
  transformers 5 flattens `CLIPTextModel.text_model`, files and kohya names keep the level.
* the safety checks (`sniff_safetensors`, `validate`, `check_modules`, `_checked_header_config`):
  nothing here unpickles; a file is checked as safetensors by content and size before the Rust
  parser reads it, and against the base model's module shapes before it is stored.
"""
from __future__ import annotations

import collections
import enum
import json
import math
import os
import re
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

import torch

from .errors import UserError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# Top-level children of transformers' CLIP text model; newer transformers flatten
# `CLIPTextModel.text_model` away, older files and kohya names keep the `text_model.` level.
_CLIP_INNER = ("embeddings.", "encoder.", "final_layer_norm.")
DEFAULT_MAX_BYTES = 2 * 1024**3
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

# diffusers' name (diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY) for the header entry
# that holds the LoraConfig of each component; spelled out so importing the store stays cheap
# (a test checks it against diffusers).
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- names

def component_of(key: str) -> str:
    """The pipeline component a canonical key belongs to (`unet`, `text_encoder`, ...)."""
    head = key.split(".", 1)[0]
    if head not in COMPONENTS:
        raise ValueError(f"not a canonical LoRA key: {key}")
    return head


def module_of(key: str) -> str:
    """`unet.a.b.lora_A.weight` -> `unet.a.b` (the adapted module, with its component prefix)."""
    for tag in (".lora_A.", ".lora_B."):
        if tag in key:
            return key.split(tag, 1)[0]
    raise ValueError(f"not a LoRA weight key: {key}")


def _te_canonical(name: str) -> str:
    """Text-encoder module/key name with the `text_model.` level, as diffusers and kohya files spell it."""
    return "text_model." + name if name.startswith(_CLIP_INNER) else name


def te_flat(name: str) -> str:
    """Text-encoder module/key name without the `text_model.` level, as peft inside the app spells it."""
    return name[len("text_model."):] if name.startswith("text_model.") else name


def normalize_module_name(component: str, name: str) -> str:
    """The spelling module-name checks compare: text-encoder names without `text_model.`."""
    return te_flat(name) if component in TEXT_ENCODERS else name


def split_components(state_dict: Mapping[str, torch.Tensor]) -> dict[str, StateDict]:
    """{component: {key without the component prefix: tensor}}."""
    out: dict[str, StateDict] = {}
    for k, v in state_dict.items():
        comp = component_of(k)
        out.setdefault(comp, {})[k[len(comp) + 1:]] = v
    return out


def modules_in(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Sorted adapted modules (with component prefix) of a canonical state dict."""
    return sorted({module_of(k) for k in state_dict})


# --------------------------------------------------------------------------- configs

def config_to_dict(config: Any) -> dict:
    """A peft `LoraConfig` (or a dict of its fields) as plain JSON-able data."""
    d = dict(config.to_dict()) if hasattr(config, "to_dict") else dict(config)

    def plain(v):
        if isinstance(v, enum.Enum):
            return plain(v.value)
        if isinstance(v, (set, frozenset)):
            return sorted((plain(x) for x in v), key=str)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(a): plain(b) for a, b in v.items()}
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)

    return {k: plain(v) for k, v in d.items()}


def pack_metadata(configs: Mapping[str, Any]) -> dict:
    """Per-component LoraConfig dicts flattened with prefixes, as diffusers' `_save_lora_weights` does."""
    packed = {}
    for comp, cfg in configs.items():
        if cfg is None:
            continue
        if comp not in COMPONENTS:
            raise ValueError(f"unknown component {comp!r}")
        for k, v in config_to_dict(cfg).items():
            packed[f"{comp}.{k}"] = v
    return packed


def unpack_metadata(packed: Mapping[str, Any] | None) -> dict[str, dict]:
    configs: dict[str, dict] = {}
    for k, v in (packed or {}).items():
        comp, _, field = k.partition(".")
        if comp in COMPONENTS and field:
            configs.setdefault(comp, {})[field] = v
    return configs


def _pattern_value(patterns: Mapping[str, Any], name: str, default):
    if not patterns:
        return default
    from peft.utils.other import get_pattern_key  # peft's own rank/alpha pattern matcher

    key = get_pattern_key(list(patterns.keys()), name)
    return patterns.get(key, default)


def module_scales(state_dict: Mapping[str, torch.Tensor],
                  configs: Mapping[str, Mapping]) -> dict[str, tuple[int, float]]:
    """{module: (rank, kohya alpha)} such that kohya's alpha/rank equals peft's scaling of the module."""
    out = {}
    for key, t in state_dict.items():
        if ".lora_A." not in key:
            continue
        module = module_of(key)
        comp = component_of(module)
        cfg = configs.get(comp) or {}
        rank = int(t.shape[0])
        name = normalize_module_name(comp, module[len(comp) + 1:])
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, name, cfg.get("lora_alpha", rank))
        alpha = float(alpha if alpha is not None else rank)
        if cfg.get("use_rslora"):
            alpha = alpha * math.sqrt(rank)  # peft scales by alpha/sqrt(r); kohya by alpha/r
        out[module] = (rank, alpha)
    return out


def config_from_scales(component: str, state_dict: Mapping[str, torch.Tensor],
                       scales: Mapping[str, tuple[int, float]]) -> dict:
    """A minimal LoraConfig dict (most common rank/alpha plus patterns) for one component."""
    mods = {m: scales[m] for m in modules_in(state_dict) if component_of(m) == component}
    if not mods:
        return {}
    names = {m: normalize_module_name(component, m[len(component) + 1:]) for m in mods}
    r = collections.Counter(v[0] for v in mods.values()).most_common(1)[0][0]
    a = collections.Counter(v[1] for v in mods.values()).most_common(1)[0][0]
    rank_pattern = {names[m]: v[0] for m, v in mods.items() if v[0] != r}
    alpha_pattern = {names[m]: _num(v[1]) for m, v in mods.items() if v[1] != a}
    return {"r": r, "lora_alpha": _num(a), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
            "target_modules": sorted(names.values()), "use_dora": False, "lora_bias": False,
            "init_lora_weights": True}


def _num(x: float):
    return int(x) if float(x).is_integer() else float(x)


# --------------------------------------------------------------------------- from models

def peft_state_dict(module: torch.nn.Module, component: str, adapter_name: str = "default") -> StateDict:
    """The canonical (prefixed, peft-keyed) state dict of one named peft adapter on `module`."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(module, adapter_name=adapter_name)
    out = {}
    for k, v in sd.items():
        if component in TEXT_ENCODERS:
            k = _te_canonical(k)
        out[f"{component}.{k}"] = v.detach().to("cpu").contiguous()
    return out


def module_shapes(**models: torch.nn.Module | None) -> dict[str, dict[str, tuple[int, int]]]:
    """{component: {module name: (in, out)}} of the Linear/Conv layers a LoRA can target.

    Call as `module_shapes(unet=pipe.unet, text_encoder=pipe.text_encoder, ...)`; peft-wrapped
    layers are reported under their own name (the wrapper's `base_layer` is skipped).
    """
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for comp, model in models.items():
        if model is None:
            continue
        if comp not in COMPONENTS:
            raise ValueError(f"unknown component {comp!r}")
        names: dict[str, tuple[int, int]] = {}
        for name, mod in model.named_modules():
            if ".lora_" in f".{name}" or name.endswith(".base_layer"):
                continue
            base = getattr(mod, "base_layer", mod)
            if isinstance(base, torch.nn.Linear):
                names[normalize_module_name(comp, name)] = (base.in_features, base.out_features)
            elif isinstance(base, torch.nn.Conv2d):
                names[normalize_module_name(comp, name)] = (base.in_channels, base.out_channels)
        out[comp] = names
    return out


# --------------------------------------------------------------------------- checks

def validate(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Every key a lora_A/lora_B weight of a known component, paired, ranks agreeing, finite."""
    bad = [k for k in state_dict if not (k.split(".", 1)[0] in COMPONENTS
                                        and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")))]
    if bad:
        raise UserError("The LoRA file holds entries this app does not understand (only plain LoRA "
                        f"lora_A/lora_B weights are supported, no DoRA/LoCon/LoHa/bias): {few(bad)}")
    if not state_dict:
        raise UserError("The LoRA file holds no LoRA weights.")
    for m in modules_in(state_dict):
        a, b = state_dict.get(f"{m}.lora_A.weight"), state_dict.get(f"{m}.lora_B.weight")
        if a is None or b is None:
            raise UserError(f"The LoRA file is incomplete: module {m} lacks its "
                            f"{'lora_A (down)' if a is None else 'lora_B (up)'} weight.")
        if a.ndim not in (2, 4) or b.ndim != a.ndim or a.shape[0] != b.shape[1]:
            raise UserError(f"The LoRA file is inconsistent at {m}: down {tuple(a.shape)} and up "
                            f"{tuple(b.shape)} do not have one rank.")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise UserError(f"The LoRA file stores non-float weights at {m}.")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise UserError(f"The LoRA file has NaN or infinite weights at {m}.")


def check_modules(state_dict: Mapping[str, torch.Tensor],
                  base_modules: Mapping[str, Iterable[str] | Mapping[str, tuple[int, int]]]) -> None:
    """Raise `UserError` naming a few modules that the base model lacks (or whose sizes differ).

    `base_modules` maps a component to its module names (e.g. from `unet.named_modules()`),
    or to {name: (in, out)} as `module_shapes` gives, which also checks the sizes.
    """
    missing, wrong, absent_comp = [], [], set()
    for m in modules_in(state_dict):
        comp = component_of(m)
        if comp not in base_modules or base_modules[comp] is None:
            absent_comp.add(comp)
            continue
        known = base_modules[comp]
        known_norm = {normalize_module_name(comp, n) for n in known} if not isinstance(known, Mapping) else None
        name = normalize_module_name(comp, m[len(comp) + 1:])
        if known_norm is not None:
            if name not in known_norm:
                missing.append(m)
            continue
        shapes = {normalize_module_name(comp, n): s for n, s in known.items()}
        if name not in shapes:
            missing.append(m)
            continue
        a, b = state_dict[f"{m}.lora_A.weight"], state_dict[f"{m}.lora_B.weight"]
        fin, fout = shapes[name]
        if a.shape[1] != fin or b.shape[0] != fout:
            wrong.append(f"{m} (LoRA {a.shape[1]}->{b.shape[0]}, model {fin}->{fout})")
    if absent_comp:
        raise UserError(f"This LoRA adapts {', '.join(sorted(absent_comp))}, which the current base model "
                        "does not have: it was made for another model family.")
    if missing:
        raise UserError(f"This LoRA does not fit the current base model: {len(missing)} of its modules do not "
                        f"exist in it, e.g. {few(missing)}. It was probably trained for another base model "
                        "(SD 1.5 vs SDXL?).")
    if wrong:
        raise UserError(f"This LoRA does not fit the current base model: layer sizes differ at {few(wrong)}. "
                        "It was probably trained for another base model (SD 1.5 vs SDXL?).")


def few(items: list[str], n: int = 3) -> str:
    """The first `n` of `items` for a message, with how many more there are."""
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# --------------------------------------------------------------------------- files

def sniff_safetensors(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Check by content that `path` is a well-formed safetensors file; return its header metadata.

    Pickles and zip checkpoints (`.ckpt`, `.pt`, `.bin`) are refused whatever their extension.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise UserError("The LoRA file could not be found.") from None
    if size > max_bytes:
        raise UserError(f"The LoRA file is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB.")
    if size < 10:
        raise UserError("The LoRA file is empty or truncated.")
    with open(path, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head)
        raw = f.read(n) if 2 <= n <= _MAX_HEADER and 8 + n <= size else b""
    if not raw.startswith(b"{"):
        # not a safetensors header; say what it is when we can tell
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or head.startswith(b"\x1f\x8b"):
            raise UserError("This is a PyTorch pickle/zip checkpoint (.ckpt/.pt/.bin), which can run code "
                            "when loaded; only .safetensors LoRA files are accepted. Convert it to "
                            "safetensors first.")
        raise UserError("The file is not a safetensors file, or it is truncated (bad header); only "
                        ".safetensors LoRA files are accepted.")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError("The file is not a safetensors file (unreadable header); only .safetensors LoRA "
                        "files are accepted.") from None
    if not isinstance(header, dict):
        raise UserError("The file is not a safetensors file (bad header).")
    data_len = size - 8 - n
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if not (isinstance(v, dict) and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2
                and v["data_offsets"][1] <= data_len):
            raise UserError("The safetensors file is truncated or corrupt.")
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def read_safetensors(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[StateDict, dict]:
    """(tensors, header metadata) of a file checked by `sniff_safetensors`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = sniff_safetensors(path, max_bytes)
    try:
        return load_file(str(path), device="cpu"), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"The safetensors file could not be read (truncated or corrupt): {exc}") from None


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors to `path` (not atomic by itself; the store writes to a temp name) and fsync."""
    from safetensors.torch import save_file

    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        tensors[k] = v.clone() if (v._base is not None or not v.is_contiguous()) else v
    save_file(tensors, str(path), metadata=dict(metadata or {}))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def file_metadata(configs: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """safetensors header for a canonical file: diffusers' adapter metadata plus our own strings."""
    meta = {"format": "pt"}
    packed = pack_metadata(configs)
    if packed:
        meta[LORA_ADAPTER_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True)
    for k, v in (extra or {}).items():
        meta[str(k)] = str(v)
    return meta


def configs_from_header(meta: Mapping[str, str]) -> dict[str, dict]:
    raw = meta.get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return {}
    try:
        return unpack_metadata(json.loads(raw))
    except (json.JSONDecodeError, AttributeError):
        return {}


# --------------------------------------------------------------------------- kohya

def to_kohya(state_dict: Mapping[str, torch.Tensor], configs: Mapping[str, Mapping],
             te_style: str = "auto") -> StateDict:
    """Canonical -> kohya (`lora_unet_..._to_q.lora_down.weight`, `.lora_up.weight`, `.alpha`).

    Keys come from diffusers' `convert_state_dict_to_kohya`; its `.alpha` (always the rank, i.e.
    scale 1) is replaced by each module's real alpha so the effective weight is unchanged.
    `te_style`: "te1" (lora_te1_/lora_te2_, SDXL), "te" (lora_te_, SD 1.x) or "auto" (te when
    there is no second text encoder, as A1111 names SD 1.x files).
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    validate(state_dict)
    for cfg in configs.values():
        if cfg and (cfg.get("use_dora") or cfg.get("lora_bias")):
            raise UserError("This adapter uses DoRA or LoRA biases, which the kohya format cannot hold.")
    scales = module_scales(state_dict, configs)
    down_ids = {id(state_dict[f"{m}.lora_A.weight"]): m for m in scales}
    kohya = convert_state_dict_to_kohya(dict(state_dict))
    if te_style == "auto":
        te_style = "te1" if any(k.startswith("text_encoder_2.") for k in state_dict) else "te"
    out: StateDict = {}
    for k, v in kohya.items():
        if k.endswith(".alpha"):
            continue
        if te_style == "te" and k.startswith("lora_te1_"):
            k = "lora_te_" + k[len("lora_te1_"):]
        out[k] = v
        if k.endswith(".lora_down.weight"):
            module = down_ids[id(v)]
            out[k[: -len(".lora_down.weight")] + ".alpha"] = torch.tensor(scales[module][1], dtype=torch.float32)
    if len([k for k in out if not k.endswith(".alpha")]) != len(state_dict):
        raise RuntimeError("kohya conversion lost tensors")  # a bug, not user input
    return out


def is_kohya(state_dict: Mapping[str, Any]) -> bool:
    return bool(state_dict) and all(k.startswith(KOHYA_PREFIXES) for k in state_dict)


def from_kohya(state_dict: Mapping[str, torch.Tensor], unet_config: Any = None) -> tuple[StateDict, dict[str, dict]]:
    """kohya -> (canonical state dict, per-component LoraConfig dicts) through diffusers' converters.

    `unet_config` (the base UNet's config) lets diffusers renumber SDXL sgm block names
    (`input_blocks_4_1_...`); the default assumes two layers per block, as SD 1.x and SDXL have.
    """
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    from diffusers.utils.state_dict_utils import (StateDictType, convert_state_dict_to_peft,
                                                  convert_unet_state_dict_to_peft)

    sd = dict(state_dict)
    if any(("dora_scale" in k) or (".hada_" in k) or (".lokr_" in k) or k.endswith(".diff") for k in sd):
        raise UserError("This is a DoRA/LoHa/LoKr (LyCORIS) file; only plain LoRA files are supported.")
    alphas: dict[int, float] = {}
    for k, v in sd.items():
        if k.endswith(".lora_down.weight"):
            a = sd.get(k[: -len(".lora_down.weight")] + ".alpha")
            alphas[id(v)] = _finite_alpha(a, k) if a is not None else float(v.shape[0])
    ups = {k[: -len(".lora_up.weight")] for k in sd if k.endswith(".lora_up.weight")}
    downs = {k[: -len(".lora_down.weight")] for k in sd if k.endswith(".lora_down.weight")}
    if ups != downs:
        raise UserError(f"The kohya LoRA file is incomplete: {few(sorted(ups ^ downs))} lack a down or up weight.")
    others = [k for k in sd if not k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))]
    if others:
        raise UserError(f"The kohya LoRA file holds entries this app does not understand: {few(others)}")
    if unet_config is None:
        unet_config = SimpleNamespace(layers_per_block=2)
    try:
        converted, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(sd, unet_config=unet_config)
    except (ValueError, KeyError, IndexError) as exc:
        raise UserError(f"The kohya LoRA file could not be converted: {exc}") from None
    if len(converted) != 2 * len(downs):
        # diffusers drops sgm-named keys when a file mixes both block namings
        raise UserError("The kohya LoRA file mixes SDXL (input_blocks) and diffusers (down_blocks) module "
                        "names; it cannot be converted without losing weights.")
    out: StateDict = {}
    for comp in COMPONENTS:
        part = {k[len(comp) + 1:]: v for k, v in converted.items() if k.startswith(comp + ".")}
        if not part:
            continue
        if comp == "unet":
            part = convert_unet_state_dict_to_peft(part)
        else:
            part = convert_state_dict_to_peft(part, original_type=StateDictType.DIFFUSERS_OLD)
            part = {_te_canonical(k): v for k, v in part.items()}
        out.update({f"{comp}.{k}": v for k, v in part.items()})
    leftover = [k for k in converted if not k.startswith(tuple(c + "." for c in COMPONENTS))]
    if leftover:
        raise UserError(f"The kohya LoRA file has keys for unknown parts of the model: {few(leftover)}")
    validate(out)
    scales = {}
    for m in modules_in(out):
        a = out[f"{m}.lora_A.weight"]
        scales[m] = (int(a.shape[0]), alphas.get(id(a), float(a.shape[0])))
    configs = {c: config_from_scales(c, out, scales) for c in COMPONENTS}
    return out, {c: v for c, v in configs.items() if v}


def from_diffusers(state_dict: Mapping[str, torch.Tensor],
                   header: Mapping[str, str]) -> tuple[StateDict, dict[str, dict]]:
    """A diffusers/peft file (prefixed or bare unet keys, new or old spelling) -> canonical + configs."""
    from diffusers.utils.state_dict_utils import (StateDictType, convert_state_dict_to_peft,
                                                  convert_unet_state_dict_to_peft)

    sd = dict(state_dict)
    if any("lora_magnitude_vector" in k or "dora_scale" in k for k in sd):
        raise UserError("This is a DoRA file; only plain LoRA files are supported.")
    if not any(k.startswith(tuple(c + "." for c in COMPONENTS)) for k in sd):
        sd = {f"unet.{k}": v for k, v in sd.items()}  # a bare peft UNet adapter (adapter_model.safetensors)
    alpha_keys = {k: v for k, v in sd.items() if k.endswith(".alpha")}
    sd = {k: v for k, v in sd.items() if not k.endswith(".alpha")}
    out: StateDict = {}
    for comp in COMPONENTS:
        part = {k[len(comp) + 1:]: v for k, v in sd.items() if k.startswith(comp + ".")}
        if not part:
            continue
        if comp == "unet":
            part = convert_unet_state_dict_to_peft(part)
        elif any("lora_linear_layer" in k or "_lora." in k for k in part):
            part = convert_state_dict_to_peft(part, original_type=StateDictType.DIFFUSERS_OLD)
        if comp in TEXT_ENCODERS:
            part = {_te_canonical(k): v for k, v in part.items()}
        out.update({f"{comp}.{k}": v for k, v in part.items()})
    stray = [k for k in sd if not k.startswith(tuple(c + "." for c in COMPONENTS))]
    if stray:
        raise UserError(f"The LoRA file has keys for unknown parts of the model: {few(stray)}")
    validate(out)
    header_configs = {c: _checked_header_config(c, v) for c, v in configs_from_header(header).items()}
    scales = module_scales(out, header_configs)
    for m, (r, _) in scales.items():
        a = alpha_keys.get(f"{m}.alpha")
        if a is not None and not header_configs.get(component_of(m)):
            scales[m] = (r, _finite_alpha(a, m))
    # stored with exact module names only: no regex patterns from a stranger's file survive import
    configs = {c: config_from_scales(c, out, scales) for c in COMPONENTS}
    return out, {c: v for c, v in configs.items() if v}


_PLAIN_PATTERN = re.compile(r"^\^?[A-Za-z0-9_.]+$")


def _checked_header_config(component: str, cfg: Mapping) -> dict:
    """A LoraConfig dict read from an imported file, reduced to what we use and checked.

    Pattern keys are regular expressions to peft; only plain dotted names are accepted, so a
    hostile file cannot make us evaluate an expensive regex.
    """
    try:
        out = {"lora_alpha": float(cfg.get("lora_alpha", cfg.get("r", 8))),
               "use_rslora": bool(cfg.get("use_rslora", False))}
        if cfg.get("use_dora") or cfg.get("lora_bias"):
            raise UserError("This LoRA uses DoRA or LoRA biases, which are not supported.")
        for key in ("alpha_pattern",):
            pat = cfg.get(key) or {}
            if not isinstance(pat, dict) or not all(isinstance(k, str) and _PLAIN_PATTERN.match(k) for k in pat):
                raise UserError(f"The LoRA file's {component} settings use module patterns this app does not "
                                "accept.")
            out[key] = {k: float(v) for k, v in pat.items()}
    except UserError:
        raise
    except (TypeError, ValueError, AttributeError):
        raise UserError(f"The LoRA file's {component} settings (adapter metadata) are malformed.") from None
    if not all(math.isfinite(v) for v in [out["lora_alpha"], *out["alpha_pattern"].values()]):
        raise UserError(f"The LoRA file's {component} settings have a non-finite alpha.")
    return out


def _finite_alpha(t: torch.Tensor, module: str) -> float:
    try:
        a = float(t.reshape(-1)[0].item()) if t.numel() == 1 else float("nan")
    except (RuntimeError, ValueError):
        a = float("nan")
    if not math.isfinite(a):
        raise UserError(f"The LoRA file has an invalid alpha at {module}.")
    return a


def read_lora(path: str | os.PathLike, *, base_modules: Mapping | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES, unet_config: Any = None) -> tuple[StateDict, dict[str, dict], str]:
    """Read a LoRA file of either format -> (canonical state dict, configs, "kohya" | "diffusers").

    Refuses non-safetensors content, oversized files, unknown layouts, and (with `base_modules`)
    modules the base model does not have, each with a `UserError` that says what is wrong.
    """
    sd, header = read_safetensors(path, max_bytes)
    if is_kohya(sd):
        out, configs, fmt = *from_kohya(sd, unet_config), "kohya"
    elif any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or "lora_linear_layer" in k
             or "_lora.down." in k for k in sd):
        out, configs, fmt = *from_diffusers(sd, header), "diffusers"
    else:
        raise UserError("The file is a safetensors file but not a LoRA this app understands (expected "
                        f"diffusers/peft or kohya LoRA keys, got e.g. {few(sorted(sd))}).")
    if base_modules is not None:
        check_modules(out, base_modules)
    return out, configs, fmt
