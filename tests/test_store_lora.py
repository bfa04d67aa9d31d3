"""The adapter library's LoRA files: diffusers format, kohya export, safe import (tiny models, CPU)."""
from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core import adapters
from core import lora_format as lf
from core.errors import UserError
from core.store import ALL, Store

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,  # noqa: E402
                       UNet2DConditionModel)
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                "conv1", "conv2", "time_emb_proj", "conv_shortcut"]


def tiny_unet(cross_attention_dim: int = 32, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


def tiny_te(cls=CLIPTextModel, seed: int = 1):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=1000, bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=32)
    return cls(cfg)


def randomize_lora(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def deltas(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """The effective weight change scaling * B @ A of every LoRA layer of `adapter`."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and adapter in m.lora_A:
            a, b = m.lora_A[adapter].weight, m.lora_B[adapter].weight
            out[name] = (b.flatten(1) @ a.flatten(1)) * m.scaling[adapter]
    return out


def assert_same_deltas(got: dict, want: dict) -> None:
    assert set(got) == set(want) and want
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.fixture(scope="module")
def trained():
    """A tiny SDXL-shaped trio with LoRA adapters, alpha != rank and rank/alpha patterns."""
    unet, te1, te2 = tiny_unet(), tiny_te(CLIPTextModel), tiny_te(CLIPTextModelWithProjection)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS,
                                rank_pattern={"ff.net.2": 2}, alpha_pattern={"to_k": 3}))
    c1 = LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    c2 = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "fc2"])
    # peft directly: transformers 5's own add_adapter refuses the installed peft
    inject_adapter_in_model(c1, te1, "default")
    inject_adapter_in_model(c2, te2, "default")
    for i, m in enumerate((unet, te1, te2)):
        randomize_lora(m, i)
    return {"unet": unet, "text_encoder": te1, "text_encoder_2": te2, "configs": {"text_encoder": c1,
                                                                                 "text_encoder_2": c2}}


@pytest.fixture(scope="module")
def base_shapes():
    return lf.module_shapes(unet=tiny_unet(), text_encoder=tiny_te(CLIPTextModel),
                            text_encoder_2=tiny_te(CLIPTextModelWithProjection))


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


def save_trained(store, trained, **kw):
    return store.save_adapter(owner="alice", name=kw.pop("name", "subject"), method="dreambooth",
                              base_model="tiny", arch="sdxl",
                              models={c: trained[c] for c in lf.COMPONENTS}, configs=trained["configs"], **kw)


def tiny_sdxl_pipe():
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=tiny_te(CLIPTextModel),
                                     text_encoder_2=tiny_te(CLIPTextModelWithProjection), tokenizer=None,
                                     tokenizer_2=None, unet=tiny_unet(), scheduler=EulerDiscreteScheduler())


# --------------------------------------------------------------------------- stored format


def test_metadata_key_is_diffusers_own():
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    assert lf.LORA_ADAPTER_METADATA_KEY == LORA_ADAPTER_METADATA_KEY


def test_saved_file_is_diffusers_format_and_round_trips_exactly(store, trained):
    a = save_trained(store, trained, trigger_words=["sks"], class_name="dog", steps=400,
                     hyperparameters={"lr": 1e-4})
    assert a.rank == 4 and a.trigger_words == "sks" and a.class_name == "dog" and a.steps == 400
    raw = load_file(str(a.path))
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in raw
    assert "unet.down_blocks.0.resnets.0.conv1.lora_B.weight" in raw
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in raw
    assert "text_encoder_2.text_model.encoder.layers.1.mlp.fc2.lora_B.weight" in raw
    assert all(k.split(".")[0] in lf.COMPONENTS and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in raw)
    with safe_open(str(a.path), "pt") as f:
        meta = json.loads(f.metadata()[lf.LORA_ADAPTER_METADATA_KEY])
    assert meta["unet.lora_alpha"] == 8 and meta["unet.alpha_pattern"] == {"to_k": 3}
    assert meta["text_encoder_2.r"] == 2
    # exact tensors, against what peft itself reports for the models
    sd, configs = store.load_adapter(a.id, "alice")
    for comp in lf.COMPONENTS:
        want = lf.peft_state_dict(trained[comp], comp)
        got = {k: v for k, v in sd.items() if k.startswith(comp + ".")}
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k
    assert configs["unet"]["rank_pattern"] == {"ff.net.2": 2}


def test_pipeline_load_lora_weights_reads_the_stored_file(store, trained):
    """The stored file is what `StableDiffusionXLPipeline.load_lora_weights` reads, alpha included."""
    a = store.save_adapter(owner="alice", name="u", method="dreambooth", base_model="tiny",
                           models={"unet": trained["unet"]})
    pipe = tiny_sdxl_pipe()
    pipe.load_lora_weights(str(a.path), adapter_name="mine")
    assert_same_deltas(deltas(pipe.unet, "mine"), deltas(trained["unet"], "default"))


def test_load_into_restores_outputs_including_text_encoders(store, trained):
    a = save_trained(store, trained)
    unet, te1, te2 = tiny_unet(), tiny_te(CLIPTextModel), tiny_te(CLIPTextModelWithProjection)
    adapters.load_into(store, a.id, "alice", adapter_name="s", unet=unet, text_encoder=te1, text_encoder_2=te2)
    for comp, model in (("unet", unet), ("text_encoder", te1), ("text_encoder_2", te2)):
        assert_same_deltas(deltas(model, "s"), deltas(trained[comp], "default"))
    torch.manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert torch.allclose(unet(x, t, ctx).sample, trained["unet"](x, t, ctx).sample, atol=1e-6)
        ids = torch.tensor([[0, 5, 7, 2]])
        assert torch.allclose(te1(ids).last_hidden_state, trained["text_encoder"](ids).last_hidden_state,
                              atol=1e-6)


# --------------------------------------------------------------------------- kohya


def test_kohya_export_names_alpha_and_round_trip(store, trained, base_shapes):
    a = save_trained(store, trained)
    path = store.export(a.id, "alice", fmt="kohya")
    k = load_file(str(path))
    q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{q}.lora_down.weight", f"{q}.lora_up.weight", f"{q}.alpha"} <= set(k)
    assert k[f"{q}.alpha"].item() == 8.0
    assert k["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k.alpha"].item() == 3.0
    assert k["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"].item() == 8.0
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in k
    assert k["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha"].item() == 6.0
    assert all(key.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for key in k)
    sd, configs = store.load_adapter(a.id, "alice")
    want_scales = lf.module_scales(sd, configs)
    assert torch.equal(k[f"{q}.lora_down.weight"],
                       sd["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"])

    b = store.import_lora(path, owner="alice", base_model="tiny", base_modules=base_shapes)
    assert b.method == "imported" and b.extra["source_format"] == "kohya"
    sd2, configs2 = store.load_adapter(b.id, "alice")
    assert set(sd2) == set(sd)
    for key in sd:
        assert torch.equal(sd2[key], sd[key]), key
    assert lf.module_scales(sd2, configs2) == want_scales
    # and the re-imported adapter acts exactly like the original once loaded
    unet, te2 = tiny_unet(), tiny_te(CLIPTextModelWithProjection)
    adapters.load_into(store, b.id, "alice", adapter_name="k", unet=unet, text_encoder=tiny_te(), text_encoder_2=te2)
    assert_same_deltas(deltas(unet, "k"), deltas(trained["unet"], "default"))
    assert_same_deltas(deltas(te2, "k"), deltas(trained["text_encoder_2"], "default"))


def test_kohya_export_loads_in_diffusers_with_the_same_effect(store, tmp_path):
    """diffusers' own kohya reader (what A1111-style files go through) sees the same adapter."""
    unet = tiny_unet()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_v", "ff.net.2", "conv1"]))
    randomize_lora(unet, 5)
    a = store.save_adapter(owner="alice", name="u", method="styledrop", base_model="tiny", models={"unet": unet})
    path = store.export(a.id, "alice")
    pipe = tiny_sdxl_pipe()
    pipe.load_lora_weights(str(path), adapter_name="k")
    assert_same_deltas(deltas(pipe.unet, "k"), deltas(unet, "default"))


def test_kohya_sd15_style_text_encoder_prefix(store, trained, base_shapes):
    a = store.save_adapter(owner="alice", name="sd15", method="dreambooth", base_model="tiny", arch="sd15",
                           models={"unet": trained["unet"], "text_encoder": trained["text_encoder"]},
                           configs=trained["configs"])
    k = load_file(str(store.export(a.id, "alice")))
    assert any(x.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for x in k)
    assert not any(x.startswith(("lora_te1_", "lora_te2_")) for x in k)
    assert load_file(str(store.export(a.id, "alice", te_style="te1"))).keys() != k.keys()


def test_kohya_import_of_a_mixed_naming_file_is_refused(tmp_path, store, base_shapes):
    sd = {"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 64),
          "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 2),
          "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(2, 64),
          "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(64, 2)}
    save_file(sd, tmp_path / "mixed.safetensors")
    with pytest.raises(UserError, match="mixes"):
        store.import_lora(tmp_path / "mixed.safetensors", owner="a", base_model="tiny", base_modules=base_shapes)


# --------------------------------------------------------------------------- import checks


def test_import_refuses_pickles_by_content_without_running_them(tmp_path, store, base_shapes):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled = tmp_path / "evil.safetensors"  # the extension lies
    pickled.write_bytes(pickle.dumps({"x": Evil()}))
    zipped = tmp_path / "lora.safetensors"
    torch.save({"unet.a.lora_A.weight": torch.zeros(2, 2)}, zipped)  # torch's zip+pickle format
    for bad in (pickled, zipped):
        with pytest.raises(UserError, match="pickle"):
            store.import_lora(bad, owner="alice", base_model="tiny", base_modules=base_shapes)
    assert not marker.exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 5) + b"hello world")
    with pytest.raises(UserError, match="not a safetensors"):
        store.import_lora(junk, owner="alice", base_model="tiny", base_modules=base_shapes)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        store.import_lora(empty, owner="alice", base_model="tiny", base_modules=base_shapes)
    assert store.list_adapters(ALL) == [] and store.check() == []


def test_import_refuses_truncated_and_oversized_files(tmp_path, store, trained, base_shapes):
    a = save_trained(store, trained)
    data = a.path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated|corrupt"):
        store.import_lora(cut, owner="alice", base_model="tiny", base_modules=base_shapes)
    with pytest.raises(UserError, match="limit"):
        store.import_lora(a.path, owner="alice", base_model="tiny", base_modules=base_shapes, max_bytes=1000)


def test_import_mismatch_names_modules(tmp_path, store, trained, base_shapes):
    # a LoRA for a UNet with another layout (attention in the first block, like SD 1.5)
    other = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                 norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    other.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    save_file({f"unet.{k}": v.contiguous() for k, v in
               __import__("peft").utils.get_peft_model_state_dict(other).items()}, tmp_path / "other.safetensors")
    with pytest.raises(UserError) as err:
        store.import_lora(tmp_path / "other.safetensors", owner="alice", base_model="tiny",
                          base_modules=base_shapes)
    msg = str(err.value)
    assert "do not exist" in msg and "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in msg
    # same names, other sizes (cross-attention width 48 instead of 32)
    wide = tiny_unet(cross_attention_dim=48)
    wide.add_adapter(LoraConfig(r=2, target_modules=["to_k"]))
    a = store.save_adapter(owner="alice", name="wide", method="dreambooth", base_model="other",
                           models={"unet": wide})
    with pytest.raises(UserError, match="sizes differ.*attn2.to_k"):
        store.import_lora(a.path, owner="alice", base_model="tiny", base_modules=base_shapes)
    # names only (a plain list of module names, as from named_modules()) works too
    names = {"unet": [n for n, _ in tiny_unet().named_modules()]}
    with pytest.raises(UserError, match="do not exist"):
        store.import_lora(tmp_path / "other.safetensors", owner="alice", base_model="tiny", base_modules=names)
    # a text-encoder LoRA for a model without that component
    b = save_trained(store, trained, name="full")
    with pytest.raises(UserError, match="text_encoder_2"):
        store.import_lora(b.path, owner="alice", base_model="sd15", base_modules={
            "unet": base_shapes["unet"], "text_encoder": base_shapes["text_encoder"]})


def test_import_accepts_diffusers_files_and_bare_peft_unet_files(tmp_path, store, trained, base_shapes):
    a = save_trained(store, trained)
    b = store.import_lora(a.path, owner="bob", base_model="tiny", base_modules=base_shapes, name="copy")
    sd_a, cfg_a = store.load_adapter(a.id, ALL)
    sd_b, cfg_b = store.load_adapter(b.id, ALL)
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert lf.module_scales(sd_a, cfg_a) == lf.module_scales(sd_b, cfg_b)
    bare = {k[len("unet."):]: v for k, v in sd_a.items() if k.startswith("unet.")}
    save_file(bare, tmp_path / "adapter_model.safetensors")
    c = store.import_lora(tmp_path / "adapter_model.safetensors", owner="bob", base_model="tiny",
                          base_modules=base_shapes)
    sd_c, _ = store.load_adapter(c.id, ALL)
    assert sd_c.keys() == {k for k in sd_a if k.startswith("unet.")}


def test_import_distrusts_settings_inside_the_file(tmp_path, store, trained, base_shapes):
    a = save_trained(store, trained)
    sd, _ = store.load_adapter(a.id, ALL)
    unet_sd = {k: v for k, v in sd.items() if k.startswith("unet.")}
    evil = {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"(a+)+$": 1}}
    save_file(unet_sd, tmp_path / "evil.safetensors",
              metadata={"format": "pt", lf.LORA_ADAPTER_METADATA_KEY: json.dumps(evil)})
    with pytest.raises(UserError, match="patterns"):
        store.import_lora(tmp_path / "evil.safetensors", owner="bob", base_model="tiny", base_modules=base_shapes)
    kohya = load_file(str(store.export(a.id, ALL)))
    kohya[next(k for k in kohya if k.endswith(".alpha"))] = torch.tensor(float("nan"))
    save_file(kohya, tmp_path / "nan.safetensors")
    with pytest.raises(UserError, match="alpha"):
        store.import_lora(tmp_path / "nan.safetensors", owner="bob", base_model="tiny", base_modules=base_shapes)
    sd_nan = dict(unet_sd)
    k0 = next(iter(sd_nan))
    sd_nan[k0] = sd_nan[k0].clone().fill_(float("inf"))
    save_file(sd_nan, tmp_path / "inf.safetensors")
    with pytest.raises(UserError, match="NaN or infinite"):
        store.import_lora(tmp_path / "inf.safetensors", owner="bob", base_model="tiny", base_modules=base_shapes)
    assert [x.id for x in store.list_adapters(ALL)] == [a.id]


# --------------------------------------------------------------------------- B-LoRA parts


def test_parts_keep_content_and_style_halves_in_one_entry(store, tmp_path):
    unet = tiny_unet()
    blocks = ["up_blocks.0.attentions.0", "up_blocks.0.attentions.1"]  # B-LoRA's content and style blocks
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=[
        f"{b}.{m}" for b in blocks for m in ("transformer_blocks.0.attn1.to_q", "proj_in")]))
    randomize_lora(unet, 9)
    a = store.save_adapter(owner="alice", name="blora", method="blora", base_model="tiny", models={"unet": unet},
                           parts={"content": ["unet.up_blocks.0.attentions.0"],
                                  "style": ["unet.up_blocks.0.attentions.1"]})
    assert set(a.parts) == {"content", "style"}
    assert all(".attentions.0." in k for k in a.parts["content"]) and len(a.parts["content"]) == 4
    content, _ = store.load_adapter(a.id, "alice", part="content")
    assert set(content) == set(a.parts["content"])
    target = tiny_unet()
    adapters.load_into(store, a.id, "alice", adapter_name="c", unet=target, part="content")
    got = deltas(target, "c")
    assert set(got) == {"up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.0.attentions.0.proj_in"}
    want = deltas(unet, "default")
    assert_same_deltas(got, {k: want[k] for k in got})
    style_file = load_file(str(store.export(a.id, "alice", part="style")))
    assert all("up_blocks_0_attentions_1" in k for k in style_file)
    with pytest.raises(UserError, match="no part"):
        store.load_adapter(a.id, "alice", part="subject")
