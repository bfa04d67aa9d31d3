"""The adapter library as the app uses it: one store per engine, and the named peft adapters
that live on the engine's resident UNet (and text encoders).

`get_store(engine)` is the one `Store` every tab shares (rooted at `<data_dir>/library`).
`adapters(engine)` is the engine's `ResidentAdapters`: which library adapters are loaded into
the shared UNet (as peft adapters named `lib-<id>`; an adapter with text-encoder weights also
goes into `text_encoder` / `text_encoder_2` under the same name), loading them on demand and
activating a set of them with a weight each for the length of one request:

    with adapters(engine).active({7: 1.0, 9: 0.6}):
        engine.text_to_image(ctx, ...)

Outside such a block every adapter is disabled, on the UNet and on the text encoders alike, so
other tabs see the base model exactly (peft's disabled path calls the base layer alone:
bit-identical outputs). `unload_all` removes the peft wrappers altogether and leaves the UNet's
and the text encoders' modules as they were loaded.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Iterator, Mapping

import torch

from .errors import UserError
from .lora_format import TEXT_ENCODERS
from .adapters import load_into_text_encoder, load_into_unet
from .store import Store

MAX_RESIDENT = 8  # library adapters kept loaded on the UNet (least recently used go first)


def get_store(engine) -> Store:
    """The engine's shared adapter library (`Engine.store`, opened on first use)."""
    return engine.store


def adapters(engine) -> "ResidentAdapters":
    """The engine's `ResidentAdapters` (`Engine.resident_adapters`)."""
    return engine.resident_adapters


def base_model_id(engine) -> str:
    """What adapters trained on this engine record as their base model."""
    return engine.spec.source


def arch_of(engine) -> str:
    return ("sdxl" if engine.xl else "sd15") + ("-tiny" if engine.offline else "")


def peft_names(unet) -> list[str]:
    """Named peft adapters on a model (the UNet, or a text encoder: both keep `peft_config`)."""
    return list(getattr(unet, "peft_config", {}) or {})


def text_encoders(engine_or_pipe) -> dict[str, torch.nn.Module]:
    """{"text_encoder": ..., "text_encoder_2": ...} of the resident pipeline (those it has)."""
    pipe = getattr(engine_or_pipe, "pipe", engine_or_pipe)
    return {c: m for c in TEXT_ENCODERS if (m := getattr(pipe, c, None)) is not None}


def _diffusers_model(model) -> bool:
    """A diffusers model (its own peft methods), not a transformers text encoder (peft injected
    directly: transformers' adapter methods refuse the installed peft)."""
    from diffusers.models.modeling_utils import ModelMixin

    return isinstance(model, ModelMixin)


def disable_all(unet) -> None:
    """Leave every peft adapter on `unet` (or a text encoder) disabled (base outputs), if there are any."""
    if not peft_names(unet):
        return
    if _diffusers_model(unet):  # a diffusers model
        unet.disable_adapters()
    else:  # a transformers text encoder with peft injected directly: layer by layer, as diffusers does
        from diffusers.utils.peft_utils import set_adapter_layers

        set_adapter_layers(unet, enabled=False)


def disable_everywhere(engine) -> None:
    """Every peft adapter on the UNet and on the text encoders disabled: the base model."""
    for model in (engine.pipe.unet, *text_encoders(engine).values()):
        disable_all(model)


def activate(model, names: list[str], weights: list[float]) -> None:
    """Make `names` (with a weight each) the active adapters of a text encoder, enabled; names
    the model does not hold are skipped, and with none left its adapters are disabled."""
    from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters

    have = set(peft_names(model))
    pairs = [(n, w) for n, w in zip(names, weights) if n in have]
    if not pairs:
        disable_all(model)
        return
    set_weights_and_activate_adapters(model, [n for n, _ in pairs], [w for _, w in pairs])
    set_adapter_layers(model, enabled=True)


def delete_adapter(model, name: str) -> None:
    """Take the named adapter off a model (UNet or text encoder); with none left, the peft
    wrappers go too, so the model's modules are the plain original ones."""
    if name in peft_names(model):
        if _diffusers_model(model):
            model.delete_adapters(name)
        else:
            from diffusers.utils.peft_utils import delete_adapter_layers

            delete_adapter_layers(model, name)
            model.peft_config.pop(name, None)
            if not model.peft_config:
                del model.peft_config
    if not peft_names(model):
        unload_peft(model)


def delete_everywhere(engine, name: str) -> None:
    """`delete_adapter` on the UNet and on each text encoder."""
    for model in (engine.pipe.unet, *text_encoders(engine).values()):
        delete_adapter(model, name)


class ResidentAdapters:
    """Library adapters loaded into the engine's UNet, by library id. Call from inside a job
    (which holds the engine's GPU slot), never concurrently with a generation."""

    def __init__(self, engine):
        self.engine = engine
        self._loaded: "OrderedDict[int, str]" = OrderedDict()  # library id -> peft adapter name

    @property
    def unet(self):
        return self.engine.pipe.unet

    @property
    def text_encoders(self) -> dict[str, torch.nn.Module]:
        return text_encoders(self.engine)

    def name_of(self, adapter_id: int) -> str:
        return f"lib-{int(adapter_id)}"

    def loaded(self) -> dict[int, str]:
        return dict(self._loaded)

    def adopt(self, adapter_id: int, peft_name: str) -> None:
        """Register an adapter already on the UNet (a freshly trained one, with its text-encoder
        part if it has one, under the same peft name) under a library id, so it is used as is:
        no reload, no second copy."""
        self._loaded[int(adapter_id)] = peft_name
        self._loaded.move_to_end(int(adapter_id))
        self._evict(keep={int(adapter_id)})
        disable_everywhere(self.engine)

    def ensure(self, adapter_id: int, owner: Any) -> str:
        """Load library adapter `adapter_id` into the UNet if it is not there yet."""
        adapter_id = int(adapter_id)
        store = get_store(self.engine)
        a = store.get_adapter(adapter_id, owner)  # visibility check every time
        if a.extra.get(FORM_KEY) in MODULE_FORMS:
            raise UserError(f"The adapter {a.name!r} is not a LoRA: it applies through `active` only.")
        if adapter_id in self._loaded and self._loaded[adapter_id] in peft_names(self.unet):
            self._loaded.move_to_end(adapter_id)
            return self._loaded[adapter_id]
        name = self.name_of(adapter_id)
        for model in (self.unet, *self.text_encoders.values()):
            if name in peft_names(model):
                delete_adapter(model, name)
        try:
            self._inject(store, a, owner, name)
        except BaseException:
            delete_everywhere(self.engine, name)  # no half-loaded adapter left behind
            raise
        self._loaded[adapter_id] = name
        self._evict(keep={adapter_id})
        disable_everywhere(self.engine)
        return name

    def _inject(self, store, a, owner, name: str) -> None:
        """A library adapter as peft adapter `name`: its UNet part by diffusers' own loader, its
        text-encoder parts (if any) into the resident text encoders under the same name. Like
        the UNet's, a text-encoder adapter is enabled only inside `active`."""
        from . import lora_format as lf

        sd, configs = store.load_adapter(a.id, owner)
        unet_sd = {k: v for k, v in sd.items() if k.startswith("unet.")}
        if not unet_sd:
            raise UserError(f"The adapter {a.name!r} has no UNet weights (text encoders only); it cannot be "
                            "applied here.")
        meta = lf.pack_metadata({k: v for k, v in configs.items() if k == "unet"}) or None
        load_into_unet(self.unet, unet_sd, name, meta)
        tes = self.text_encoders
        for comp in TEXT_ENCODERS:
            part = {k: v for k, v in sd.items() if k.startswith(comp + ".")}
            if not part:
                continue
            if comp not in tes:
                raise UserError(f"The adapter {a.name!r} adapts a {comp}, which this model does not have.")
            load_into_text_encoder(tes[comp], comp, part, configs, name)
            tes[comp].train(tes[comp].training)  # new LoRA modules take the encoder's (eval) mode
            tes[comp].requires_grad_(False)

    def _evict(self, keep: set[int]) -> None:
        while len(self._loaded) > MAX_RESIDENT:
            victim = next((i for i in self._loaded if i not in keep), None)
            if victim is None:
                break
            self.remove(victim)

    def remove(self, adapter_id: int) -> None:
        """Take one adapter off the UNet and the text encoders; a model left with none loses its
        peft wrappers too."""
        name = self._loaded.pop(int(adapter_id), None)
        for model in (self.unet, *self.text_encoders.values()):
            if name is not None and name in peft_names(model):
                delete_adapter(model, name)
            if not peft_names(model):
                unload_peft(model)
            else:
                disable_all(model)

    def unload_all(self) -> None:
        for i in list(self._loaded):
            self.remove(i)
        for model in (self.unet, *self.text_encoders.values()):
            unload_peft(model)

    @contextlib.contextmanager
    def active(self, weights: Mapping[int, float], owner: Any = None) -> Iterator[list[str]]:
        """Activate these library adapters with a weight each for the block; all off after."""
        weights = {int(k): float(v) for k, v in weights.items() if v is not None}
        hooked = module_form_entries(self.engine, weights, owner)
        if hooked:  # non-peft adapters: on through their own hooks for the block, the rest as below
            with MODULE_FORMS[hooked[0][0].extra[FORM_KEY]]().applied_entries(self.unet, hooked), \
                    self.active({i: w for i, w in weights.items() if i not in {a.id for a, _ in hooked}},
                                owner) as names:
                yield names
            return
        if not weights:
            disable_everywhere(self.engine)
            yield []
            return
        names = [self.ensure(i, owner) for i in weights]
        try:
            self.unet.set_adapters(names, weights=[weights[i] for i in weights])
            self.unet.enable_adapters()
            for te in self.text_encoders.values():  # the text-encoder parts of these adapters, if any
                activate(te, names, [weights[i] for i in weights])
            yield names
        finally:
            disable_everywhere(self.engine)


def peft_wrapped(unet) -> list[str]:
    """Names of the modules that are peft wrappers (`BaseTunerLayer`), with or without adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]


def unload_peft(unet) -> None:
    """Remove peft wrappers (if any) so the UNet's (or a text encoder's) modules are the plain
    original ones.

    Looks at the modules themselves, not at `peft_config`: diffusers' `delete_adapters` drops
    `peft_config` with the last adapter but leaves the (now empty) wrappers in place."""
    if not (peft_wrapped(unet) or hasattr(unet, "peft_config")
            or getattr(unet, "_hf_peft_config_loaded", None)):
        return
    if _diffusers_model(unet):
        unet.unload_lora()  # every wrapper back to its base layer, peft bookkeeping dropped
    else:  # a text encoder: diffusers' own helper, as its pipelines' `unload_lora_weights` use
        from diffusers.utils.peft_utils import recurse_remove_peft_layers

        recurse_remove_peft_layers(unet)
        if getattr(unet, "_hf_peft_config_loaded", None):
            unet._hf_peft_config_loaded = False
    for name in sorted(peft_wrapped(unet), key=len, reverse=True):  # whatever it did not reach
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent) if parent else unet, child, unet.get_submodule(name).get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config


def _keys_of(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def count_params(params) -> int:
    return sum(p.numel() for p in params)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter and buffer (for exact restores and tests)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def generate(engine, prompts, weights: Mapping[int, float], *, owner: Any, stop_key: str | None = None,
             activate: Callable[[Mapping[int, float]], Any] | None = None, info: Mapping[str, Any] | None = None,
             candidates: int = 1, ranker: Callable[[list, list[str]], tuple[list, list[dict]]] | None = None,
             **kwargs):
    """A batch with adapters of `owner`'s library (or published ones) active, a weight each,
    streamed; adapters off afterwards. `stop_key` (default: `owner`) is what a Stop reaches it by.
    `activate(weights)`: the context that puts them on (default `adapters(engine).active`; core.styles
    adds a library style this way); `info`: more for the Result's info.

    Best of N (`candidates` > 1, issue 18): N candidates of every prompt in the same pipeline
    call, candidate-major, candidate i's noise that of the ordinary run with seed + i
    (core.ranking.candidate_latents); then `ranker(images, prompts)` (inside the job) returns
    them in the order to show with one record each (info["ranking"])."""
    from .events import Result
    from .ranking import candidate_latents, check_candidates
    from .validate import prompt_list

    prompts = prompt_list(prompts)
    n = check_candidates(candidates)
    weights = {int(k): float(v) for k, v in weights.items()}
    store = get_store(engine)
    for i in weights:
        store.get_adapter(i, owner)  # not found / not yours: before the job starts
    activate = activate or (lambda w: adapters(engine).active(w, owner))

    def work(ctx):
        kw = dict(kwargs)
        if n > 1:
            w, h = engine.check_size(kw.get("width") or engine.resolution, kw.get("height") or engine.resolution)
            kw["latents"] = candidate_latents(engine, kw.get("seed", 0), n, len(prompts), w, h)
        with activate(weights):
            images = engine.text_to_image(ctx, list(prompts) * n, **kw)
        records: list[dict] = []
        if ranker is not None:
            images, records = ranker(images, list(prompts))
        more = {"candidates": n, "ranking": records} if n > 1 or ranker is not None else {}
        return Result(images=images, info={"prompts": list(prompts), "adapters": weights, **(info or {}), **more})
    return engine.run(work, stop_key=stop_key or owner, kind="generate")


def import_arguments(engine) -> dict[str, Any]:
    """What `Store.import_lora` checks an uploaded LoRA against on this engine, as its keyword
    arguments: the base model's id and architecture, the UNet's config (kohya key layouts) and
    the shapes of the modules a LoRA may adapt (UNet and text encoders)."""
    from .lora_format import module_shapes

    pipe = engine.pipe
    return dict(base_model=base_model_id(engine), arch=arch_of(engine), unet_config=pipe.unet.config,
                base_modules=module_shapes(unet=pipe.unet, text_encoder=pipe.text_encoder,
                                           text_encoder_2=getattr(pipe, "text_encoder_2", None)))


# --------------------------------------------------------------------------- non-peft adapters (a hook point)
# A library entry whose extra[FORM_KEY] names a form here is not a LoRA: `ResidentAdapters.active`
# puts it on the UNet through that module's `applied_entries(unet, [(entry, weight), ...])`
# context manager (forward hooks, removed after the block) instead of loading it into peft.

FORM_KEY = "adapter_form"


def _styledrop_adapter():
    from . import styledrop_adapter

    return styledrop_adapter


MODULE_FORMS = {"styledrop-gelu": _styledrop_adapter}


def module_form_entries(engine, weights: Mapping[int, float], owner: Any) -> list[tuple[Any, float]]:
    """[(library entry, weight)] of the adapters among `weights` that are in a non-peft form
    (visibility-checked for `owner`); one form at a time."""
    store = get_store(engine)
    out = []
    for i, w in weights.items():
        a = store.get_adapter(int(i), owner)
        if a.extra.get(FORM_KEY) in MODULE_FORMS:
            out.append((a, float(w)))
    if len({a.extra[FORM_KEY] for a, _ in out}) > 1:
        raise UserError("Adapters of different non-LoRA forms cannot be combined.")
    return out
