"""Model families built in-process from config: no file, no network.

* `tiny` / `tiny-sd`: the real pipeline classes (SDXL and SD 1.5) with tiny random weights,
  so the whole app runs offline on a CPU in seconds. Tests use them.
* `sdxl-arch`: the real SDXL shapes with random weights, for speed and memory benchmarks on
  a GPU where real weights can't be fetched.

The tokenizer is a real CLIP BPE tokenizer built from the vocabulary that open_clip_torch
ships, so prompts are tokenized (and truncated at 77 tokens) exactly as in real use.
"""
from __future__ import annotations

import functools
import gzip

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                          CLIPTokenizer)

# SD and SDXL share this noise schedule; DDIM is deterministic, which inversion needs.
SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                        steps_offset=1, timestep_spacing="leading")


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of OpenAI's CLIP BPE, built from open_clip's bundled vocabulary file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token,
                         model_max_length=77)


def _text_config(hidden: int, layers: int, heads: int, ffn: int, projection: int,
                 act: str = "quick_gelu") -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=ffn,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=77, projection_dim=projection,
                          hidden_act=act, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407)


def _tiny_vae() -> AutoencoderKL:
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=64)
    # The real models' factor is chosen so that latents of images have unit variance (SD's
    # 0.18215); fit it the same way for these random weights (SD's value would leave them at
    # std 0.07, where the noise of every timestep drowns the image)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        ramp = torch.linspace(-1, 1, 64)
        images = torch.stack([torch.stack([ramp[None, :].expand(64, 64), ramp[:, None].expand(64, 64),
                                           -ramp[None, :].expand(64, 64)]),
                              torch.rand(3, 64, 64) * 2 - 1,
                              (torch.rand(3, 1, 1) * 2 - 1).expand(3, 64, 64) + 0.2 * torch.randn(3, 64, 64)])
        std = float(vae.encode(images.clamp(-1, 1)).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 3))
    return vae


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL classes, tiny sizes. up_blocks.0 holds two transformer blocks (attentions.0 and
    attentions.1), as B-LoRA needs; 64x64 images, 16x16 latents."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), cross_attention_dim=64, norm_num_groups=8,
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    te1 = CLIPTextModel(_text_config(32, 2, 4, 37, 32))
    te2 = CLIPTextModelWithProjection(_text_config(32, 2, 4, 37, 32, act="gelu"))
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), force_zeros_for_empty_prompt=True)


def tiny_sd(seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5 classes, tiny sizes; 64x64 images, 16x16 latents."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4,
        cross_attention_dim=32, norm_num_groups=8)
    te = CLIPTextModel(_text_config(32, 2, 4, 37, 32))
    return StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=te, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def sdxl_architecture(dtype: torch.dtype = torch.float16, device: str | torch.device = "cpu",
                      seed: int = 0) -> StableDiffusionXLPipeline:
    """The SDXL base 1.0 architecture (2.6B UNet, CLIP ViT-L and OpenCLIP bigG text encoders,
    the 4-level VAE) with random weights, for benchmarks only."""
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, sample_size=1024, scaling_factor=0.13025,
                            force_upcast=True)
        te1 = CLIPTextModel(_text_config(768, 12, 12, 3072, 768))
        te2 = CLIPTextModelWithProjection(_text_config(1280, 32, 20, 5120, 1280, act="gelu"))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), force_zeros_for_empty_prompt=True)
    return pipe.to(dtype=dtype)
