"""B-LoRA files in the reference layout (issue 18, "Bring styles in"): a file written here the way
the authors' trainer writes one imports as a library B-LoRA whose halves hold exactly the keys of
their blocks; our export, loaded the way the reference `inference.py` loads a B-LoRA (diffusers'
public API, written out below as the oracle), gives the UNet output our own loading gives; owners
are kept apart; hostile files are refused by name; the tab's handlers work when called directly."""
from __future__ import annotations

import gradio as gr
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core import blora, blora_exchange, identity, library
from core.errors import UserError
from tabs.blora import BLoRATab
from tests.browserkit import wait_for_text
from tests.tabkit import fake_request, make_ctx

from .conftest import screenshot
from .lora_oracle import predict, unet_inputs
from .test_blora import assert_same_state, unet_state

pytestmark = pytest.mark.usefixtures("one_thread")

# the reference's blocks, written out (not read from core.blora: a swap there must fail here)
CONTENT = "up_blocks.0.attentions.0"
STYLE = "up_blocks.0.attentions.1"
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
RANK = 4
REFERENCE_FORMAT = "B-LoRA reference (diffusers)"


def projections(unet, block: str) -> dict[str, tuple[int, int]]:
    """{module: (in, out)} of the attention projections the reference trains in `block`."""
    out = {}
    for name, mod in unet.named_modules():
        if name.startswith(block + ".transformer_blocks.") and name.endswith(PROJECTIONS) \
                and ".attn" in name and isinstance(getattr(mod, "base_layer", mod), torch.nn.Linear):
            base = getattr(mod, "base_layer", mod)
            out[name] = (base.in_features, base.out_features)
    return out


def reference_tensors(unet, blocks=(CONTENT, STYLE), seed: int = 0, spelling: str = "diffusers",
                      scale: float = 0.05) -> dict[str, dict[str, torch.Tensor]]:
    """{block: {key: tensor}} in the reference trainer's key layout: `unet.<module>.lora.down.weight`
    (diffusers' pre-peft spelling, as its trainer saves) or `.lora_A.weight` (peft's)."""
    g = torch.Generator().manual_seed(seed)
    down, up = (".lora.down.weight", ".lora.up.weight") if spelling == "diffusers" else \
        (".lora_A.weight", ".lora_B.weight")
    out = {}
    for block in blocks:
        sd = {}
        for module, (fin, fout) in projections(unet, block).items():
            sd[f"unet.{module}{down}"] = torch.randn(RANK, fin, generator=g) * scale
            sd[f"unet.{module}{up}"] = torch.randn(fout, RANK, generator=g) * scale
        out[block] = sd
    return out


def write(path, per_block: dict[str, dict[str, torch.Tensor]]) -> str:
    save_file({k: v for sd in per_block.values() for k, v in sd.items()}, str(path), metadata={"format": "pt"})
    return str(path)


def as_peft(key: str) -> str:
    return key.replace(".lora.down.weight", ".lora_A.weight").replace(".lora.up.weight", ".lora_B.weight")


def ours(engine, adapter_id, inputs, owner="local", weights=(1.0, 1.0)) -> torch.Tensor:
    """The UNet's prediction with both halves of a library B-LoRA loaded our way."""
    halves = [blora.Half(adapter_id, "content", weights[0]), blora.Half(adapter_id, "style", weights[1])]
    with blora.halves_active(engine, halves, owner):
        return predict(engine.pipe.unet, inputs)


def reference_way(engine, path, inputs) -> torch.Tensor:
    """The oracle: what the reference inference.py does with a content and a style B-LoRA file
    (here the same file for both), in diffusers' public API: `lora_state_dict` on the file, the
    keys of each block kept by substring, merged, `load_lora_into_unet` with the network alphas
    `lora_state_dict` returned; the UNet is put back as it was afterwards, even on failure."""
    from diffusers import StableDiffusionXLPipeline

    unet = engine.pipe.unet
    before = unet_state(unet)
    state_dict, network_alphas = StableDiffusionXLPipeline.lora_state_dict(str(path))
    content = {k: v for k, v in state_dict.items() if f"unet.{CONTENT}" in k}
    style = {k: v for k, v in state_dict.items() if f"unet.{STYLE}" in k}
    assert content and style and len(content) + len(style) == len(state_dict)
    try:
        StableDiffusionXLPipeline.load_lora_into_unet({**content, **style}, network_alphas, unet=unet,
                                                      adapter_name="reference-way")
        return predict(unet, inputs)
    finally:
        if "reference-way" in library.peft_names(unet):
            unet.delete_adapters("reference-way")
        if not before[2]:
            library.unload_peft(unet)
        library.disable_all(unet)
        assert_same_state(unet_state(unet), before)


@pytest.fixture(scope="module")
def inputs(engine):
    return unet_inputs(engine, "A [v18] in [v30] style")


# --------------------------------------------------------------------------- (a) import

@pytest.mark.parametrize("spelling", ["diffusers", "peft"])
def test_a_reference_file_imports_as_a_blora_with_each_half_in_its_block(engine, inputs, tmp_path, spelling):
    """Content half = exactly the keys written under up_blocks.0.attentions.0, style half = those
    under up_blocks.0.attentions.1, with the written tensors (scale 1: the reference loader's); on
    the UNet each half's LoRA sits in its own block, and the prediction is the reference way's."""
    unet = engine.pipe.unet
    written = reference_tensors(unet, spelling=spelling)
    path = write(tmp_path / "pytorch_lora_weights.safetensors", written)
    a = blora_exchange.import_reference(engine, path, owner="local", trigger="[v18]")
    try:
        assert a.method == "b-lora" and a.trigger_words == "[v18]" and a.name == "pytorch_lora_weights"
        assert a.id in {e.id for e in blora.entries(engine, "local")}
        store = library.get_store(engine)
        for part, block in (("content", CONTENT), ("style", STYLE)):
            expected = {as_peft(k): v for k, v in written[block].items()}
            stored, _ = store.load_adapter(a.id, "local", part=part)
            assert set(stored) == set(expected) and len(expected) == 2 * len(projections(unet, block))
            assert all(torch.equal(stored[k], expected[k]) for k in expected)
            half, configs, _ = blora.half_state_dict(engine, a.id, part, "local")
            assert set(half) == set(expected)
            assert configs["unet"]["lora_alpha"] == configs["unet"]["r"] == RANK  # scale 1
        with blora.halves_active(engine, [blora.Half(a.id, "content"), blora.Half(a.id, "style")], "local") as names:
            for name, block in zip(names, (CONTENT, STYLE)):
                landed = blora.adapter_modules(unet, name)
                assert set(landed) == set(projections(unet, block))
                peft_keyed = {as_peft(k): v for k, v in written[block].items()}
                for m in landed:  # the written tensors, in place in their own block
                    mod = unet.get_submodule(m)
                    assert torch.equal(mod.lora_A[name].weight.detach().cpu(), peft_keyed[f"unet.{m}.lora_A.weight"])
                    assert torch.equal(mod.lora_B[name].weight.detach().cpu(), peft_keyed[f"unet.{m}.lora_B.weight"])
        mine, theirs = ours(engine, a.id, inputs), reference_way(engine, path, inputs)
        base = predict(unet, inputs)
        tol = 1e-5 * float((base ** 2).mean().sqrt())
        assert (mine - base).abs().max() > 100 * tol  # the halves change the prediction
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tol)
    finally:
        library.get_store(engine).delete_adapter(a.id, "local")


# --------------------------------------------------------------------------- (b) export

@pytest.fixture
def our_blora(engine):
    """A library B-LoRA as training saves one (both halves recorded as parts), with alpha != rank
    (and one module of its own alpha), so an export that forgot the scale would load wrong."""
    unet = engine.pipe.unet
    tensors = {as_peft(k): v for sd in reference_tensors(unet, seed=3, spelling="peft").values()
               for k, v in sd.items()}
    odd = sorted(projections(unet, STYLE))[0]
    cfg = {"r": RANK, "lora_alpha": 2 * RANK, "alpha_pattern": {odd: RANK / 2},
           "target_modules": sorted({k.split(".lora_")[0][len("unet."):] for k in tensors})}
    a = library.get_store(engine).save_adapter(
        owner="local", name="ours", method="b-lora", base_model=library.base_model_id(engine), state_dict=tensors,
        configs={"unet": cfg}, trigger_words="[v1]",
        parts={"content": [f"unet.{CONTENT}"], "style": [f"unet.{STYLE}"]})
    yield a
    library.get_store(engine).delete_adapter(a.id, "local")


def test_our_export_loaded_the_reference_way_gives_our_unet_output(engine, inputs, our_blora, tmp_path):
    unet = engine.pipe.unet
    before = unet_state(unet)
    path = blora_exchange.export(engine, our_blora.id, owner="local", fmt="reference")
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    # the reference trainer's layout: unet keys of the two blocks only, diffusers' spelling, no alphas
    assert all(k.startswith((f"unet.{CONTENT}.", f"unet.{STYLE}.")) for k in keys)
    assert all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in keys)
    assert len(keys) == 2 * (len(projections(unet, CONTENT)) + len(projections(unet, STYLE)))
    mine = ours(engine, our_blora.id, inputs)
    theirs = reference_way(engine, path, inputs)
    base = predict(unet, inputs)
    tol = 1e-5 * float((base ** 2).mean().sqrt())
    assert (mine - base).abs().max() > 100 * tol
    torch.testing.assert_close(theirs, mine, rtol=0, atol=tol)
    assert_same_state(unet_state(unet), before)
    # and back in: the export imports as a B-LoRA that predicts the same
    back = blora_exchange.import_reference(engine, path, owner="local", trigger="[v1]")
    try:
        torch.testing.assert_close(ours(engine, back.id, inputs), mine, rtol=0, atol=tol)
    finally:
        library.get_store(engine).delete_adapter(back.id, "local")


# --------------------------------------------------------------------------- (c) owners

def test_owners_cannot_export_or_use_each_others_imports(engine, tmp_path):
    data = tmp_path / "shared"
    tab = BLoRATab(make_ctx(engine, data, shared=True, metrics=False))
    alice, bob = identity.issue(data), identity.issue(data)
    path = write(tmp_path / "alice.safetensors", reference_tensors(engine.pipe.unet, seed=5))
    tab.import_blora(file=path, name="alice's", trigger="", visitor=alice, request=fake_request("alice"))
    store = library.get_store(engine)
    owner_a = tab.caller(fake_request("alice"), alice).owner
    owner_b = tab.caller(fake_request("bob"), bob).owner
    mine = [a for a in blora.entries(engine, owner_a) if a.name == "alice's"]
    assert len(mine) == 1 and mine[0].owner == owner_a
    aid = str(mine[0].id)
    assert aid not in {str(a.id) for a in blora.entries(engine, owner_b)}
    assert tab.export_picker(entry=None, visitor=bob, request=fake_request("bob"))["choices"] == []
    for fmt in ("B-LoRA reference (diffusers)", "kohya (A1111/ComfyUI)", "diffusers (this app's library format)"):
        with pytest.raises(gr.Error, match="not found"):
            tab.export(entry=aid, fmt=fmt, visitor=bob, request=fake_request("bob"))
    with pytest.raises(UserError, match="not found"):
        blora_exchange.export_reference(engine, int(aid), owner=owner_b)
    # bob's import of the same file is his own entry; alice's is untouched and still hers alone
    tab.import_blora(file=path, name="alice's", trigger="", visitor=bob, request=fake_request("bob"))
    bobs = [a for a in blora.entries(engine, owner_b) if a.name == "alice's"]
    assert len(bobs) == 1 and bobs[0].owner == owner_b and str(bobs[0].id) != aid
    assert [a.id for a in blora.entries(engine, owner_a) if a.name == "alice's"] == [int(aid)]
    assert store.get_adapter(int(aid), owner_a).owner == owner_a
    with pytest.raises(gr.Error, match="visitor|token|sign"):
        tab.import_blora(file=path, name="", trigger="", visitor="forged", request=fake_request("x"))
    for who, a in ((owner_a, int(aid)), (owner_b, bobs[0].id)):
        store.delete_adapter(a, who)


# --------------------------------------------------------------------------- (d) hostile files

def hostile_files(unet, tmp_path):
    """(file, what the refusal must name) for files that are not a usable B-LoRA."""
    good = reference_tensors(unet, seed=7)
    wrong_blocks = {blk: {k.replace(CONTENT, "up_blocks.1.attentions.0").replace(STYLE, "up_blocks.1.attentions.1"): v
                          for k, v in sd.items()} for blk, sd in good.items()}
    nan = {blk: dict(sd) for blk, sd in good.items()}
    first = sorted(nan[STYLE])[0]
    nan[STYLE][first] = nan[STYLE][first].clone()
    nan[STYLE][first][0, 0] = float("nan")
    wide = {blk: dict(sd) for blk, sd in good.items()}
    down = sorted(k for k in wide[CONTENT] if k.endswith(".lora.down.weight"))[0]
    wide[CONTENT][down] = torch.zeros(RANK, wide[CONTENT][down].shape[1] + 3)
    not_st = tmp_path / "pickled.safetensors"
    torch.save({"unet.x.lora.down.weight": torch.zeros(2, 2)}, str(not_st))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a LoRA file at all, just text" * 4)
    return [
        (write(tmp_path / "wrong-blocks.safetensors", wrong_blocks), "outside the two B-LoRA blocks"),
        (write(tmp_path / "content-only.safetensors", {CONTENT: good[CONTENT]}), "no style half"),
        (write(tmp_path / "style-only.safetensors", {STYLE: good[STYLE]}), "no content half"),
        (write(tmp_path / "nan.safetensors", nan), "NaN"),
        (write(tmp_path / "shape.safetensors", wide), "layer sizes differ"),
        (str(not_st), "pickle"),
        (str(junk), "not a safetensors file"),
    ]


def test_an_sd15_model_takes_no_b_lora_files(tiny_sd_engine, engine, tmp_path):
    path = write(tmp_path / "b.safetensors", reference_tensors(engine.pipe.unet))
    with pytest.raises(UserError, match="needs an SDXL model"):
        blora_exchange.import_reference(tiny_sd_engine, path, owner="local")


def test_hostile_files_are_refused_naming_the_problem(engine, tmp_path):
    store = library.get_store(engine)
    before = [a.id for a in store.list_adapters("local")]
    for path, problem in hostile_files(engine.pipe.unet, tmp_path):
        with pytest.raises(UserError, match=problem) as caught:
            blora_exchange.import_reference(engine, path, owner="local")
        assert str(tmp_path) not in str(caught.value) and "/tmp/" not in str(caught.value)  # no paths
    too_big = write(tmp_path / "big.safetensors", reference_tensors(engine.pipe.unet))
    with pytest.raises(UserError, match="limit"):
        blora_exchange.import_reference(engine, too_big, owner="local", max_bytes=1024)
    with pytest.raises(UserError, match="trigger"):
        blora_exchange.import_reference(engine, too_big, owner="local", trigger="two words")
    assert [a.id for a in store.list_adapters("local")] == before  # nothing was saved


# --------------------------------------------------------------------------- (e) the tab's handlers

def test_the_tab_imports_and_exports_through_its_handlers(engine, tmp_path):
    tab = BLoRATab(make_ctx(engine, tmp_path / "tab"))
    req = fake_request("tab")
    path = write(tmp_path / "Cat.safetensors", reference_tensors(engine.pipe.unet, seed=9))
    status = tab.import_blora(file=path, name="", trigger="[v18]", request=req)
    n_c, n_s = len(projections(engine.pipe.unet, CONTENT)), len(projections(engine.pipe.unet, STYLE))
    assert "Imported **Cat**" in status and f"content {n_c} layers, style {n_s} layers" in status
    assert str(tmp_path) not in status
    owner = tab.caller(req).owner
    entry = next(a for a in blora.entries(engine, owner) if a.name == "Cat")
    picker = tab.export_picker(entry=None, request=req)
    assert (blora.label(entry), str(entry.id)) in picker["choices"] and picker["value"] is None
    _, _, content, style = tab.library(content=None, style=None, request=req)
    assert str(entry.id) in {c for _, c in content["choices"]} and content["choices"] == style["choices"]
    file, status = tab.export(entry=str(entry.id), fmt=REFERENCE_FORMAT, request=req)
    assert file.endswith(".safetensors") and "reference" in status and str(tmp_path) not in status
    with safe_open(file, framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(reference_tensors(engine.pipe.unet, seed=9)[CONTENT]) | \
        set(reference_tensors(engine.pipe.unet, seed=9)[STYLE])
    file, status = tab.export(entry=str(entry.id), fmt="kohya (A1111/ComfyUI)", request=req)
    with safe_open(file, framework="pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())
    for kwargs, field in ((dict(entry=str(entry.id), fmt="zip"), "Export format"),
                          (dict(entry="abc", fmt=REFERENCE_FORMAT), "B-LoRA to export"),
                          (dict(entry=None, fmt=REFERENCE_FORMAT), "B-LoRA to export")):
        with pytest.raises(gr.Error, match=field):
            tab.export(**kwargs, request=req)
    for kwargs, field in ((dict(file=None, name="", trigger=""), "B-LoRA file"),
                          (dict(file=path, name="x" * 101, trigger=""), "Name"),
                          (dict(file=path, name="", trigger=7), "Trigger word")):
        with pytest.raises(gr.Error, match=field):
            tab.import_blora(**kwargs, request=req)
    library.get_store(engine).delete_adapter(entry.id, owner)


# --------------------------------------------------------------------------- in a browser

@pytest.mark.browser
def test_browser_import_a_reference_file_then_export_it(live_app, page, engine, tmp_path):
    """The Import / export accordion: a reference file in, listed in the content and export
    pickers, out again in the reference layout as a download."""
    path = write(tmp_path / "Teddy.safetensors", reference_tensors(engine.pipe.unet, seed=11))
    page.goto(live_app.url)
    page.get_by_role("tab", name="B-LoRA Mix").click()
    page.get_by_text("Import / export B-LoRA files").click()
    page.locator("#bl-import-file input[type=file]").set_input_files(path)
    page.locator("#bl-import-trigger textarea, #bl-import-trigger input").first.fill("[v18]")
    page.locator("#bl-import-btn").click()
    wait_for_text(page, "#bl-exchange-status", "Imported", timeout=60_000)
    assert "content" in page.locator("#bl-exchange-status").inner_text()
    for picker in ("#bl-content", "#bl-export-entry"):
        page.locator(f"{picker} input").click()
        option = page.get_by_role("option", name="Teddy [v18]").first
        option.wait_for(timeout=15_000)
        if picker == "#bl-export-entry":
            option.click()
        else:
            page.keyboard.press("Escape")
    page.locator("#bl-export-btn").click()
    wait_for_text(page, "#bl-exchange-status", "Exported", timeout=60_000)
    assert "reference" in page.locator("#bl-exchange-status").inner_text()
    assert ".safetensors" in page.locator("#bl-export-file").inner_text()
    screenshot(page, "blora-exchange")
